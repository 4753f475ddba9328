from __future__ import annotations

from pathlib import Path

import numpy as np

from secure_fl import load_config, run

PLAIN = Path(__file__).resolve().parents[1] / "plain.toml"


def _run(*overrides: str):
    return run(load_config(PLAIN, ["train.lr=0.1", *overrides]), write=False, progress=False)


def test_async_buffers_record_staleness_and_are_deterministic() -> None:
    args = ("aggregation.mode=async", "clients.num=12", "clients.per_round=8",
            "aggregation.buffer_size=3", "simulation.stragglers=0.3", "rounds=12")
    a, b = _run(*args), _run(*args)
    assert [m["test_accuracy"] for m in a.metrics] == [m["test_accuracy"] for m in b.metrics]
    assert len(a.metrics) == 12
    assert all(sum(m["staleness_histogram"].values()) == 3 for m in a.metrics)
    assert any(k != "0" for m in a.metrics for k in m["staleness_histogram"]), "no stale update at all"
    times = [m["virtual_time_s"] for m in a.metrics]
    assert all(t2 >= t1 for t1, t2 in zip(times, times[1:], strict=False))
    assert a.metrics[-1]["test_accuracy"] > 0.6


def test_stale_updates_beyond_the_bound_are_rejected_with_a_reason() -> None:
    res = _run("aggregation.mode=async", "clients.num=10", "clients.per_round=10",
               "aggregation.buffer_size=2", "simulation.stragglers=0.3",
               "simulation.straggler_slowdown=50", "staleness.max_staleness=1", "rounds=15")
    rejected = {k: v for m in res.metrics for k, v in m["rejected_stale"].items()}
    assert rejected and all("exceeds the bound 1" in v for v in rejected.values())


def test_a_stale_update_is_rejected_on_arrival_and_never_takes_a_buffer_slot() -> None:
    # Every buffer aggregates K fresh updates: a straggler past the bound is turned away
    # when it reports, and it is sent the current model at once (it trains again).
    res = _run("aggregation.mode=async", "clients.num=10", "clients.per_round=10",
               "aggregation.buffer_size=4", "simulation.stragglers=0.3",
               "simulation.straggler_slowdown=10", "staleness.max_staleness=1", "rounds=40")
    assert sum(len(m["rejected_stale"]) for m in res.metrics) > 0
    for m in res.metrics:
        assert len(m["survivors"]) == 4, m
        assert not set(m["rejected_stale"]) & set(m["survivors"])
        assert all(int(t) <= 1 for t in m["staleness_histogram"])
    # each straggler is turned away more than once: it was handed the current model again
    rejections: dict[str, int] = {}
    for m in res.metrics:
        for k in m["rejected_stale"]:
            rejections[k] = rejections.get(k, 0) + 1
    assert max(rejections.values()) >= 2


def test_the_default_staleness_bound_follows_concurrency_over_buffer_size() -> None:
    cfg = load_config(PLAIN, ["aggregation.mode=async", "clients.num=100", "aggregation.buffer_size=50"])
    assert cfg.staleness.max_staleness is None and cfg.max_staleness == 2
    assert load_config(PLAIN, ["aggregation.mode=async", "clients.num=15", "aggregation.buffer_size=5"]).max_staleness == 3
    assert load_config(PLAIN, ["aggregation.mode=async", "clients.num=100", "aggregation.buffer_size=67"]).max_staleness == 1
    assert load_config(PLAIN, ["staleness.max_staleness=7"]).max_staleness == 7


def test_sync_deadline_drops_late_clients() -> None:
    res = _run("clients.num=10", "simulation.stragglers=0.3", "aggregation.timeout_s=0.2", "rounds=3")
    for m in res.metrics:
        assert len(m["survivors"]) < len(m["cohort"])
        assert m["virtual_time_s"] <= 0.2 * m["version"] + 1.0


def test_dropouts_are_recorded_and_training_continues() -> None:
    res = _run("clients.num=10", "simulation.dropout=0.3", "rounds=5")
    dropped = sum(len(v) for m in res.metrics for v in m["dropped"].values())
    assert dropped > 0
    assert all(len(m["survivors"]) + sum(len(v) for v in m["dropped"].values()) == len(m["cohort"])
               for m in res.metrics)


def test_pruned_model_stays_sparse_and_uploads_shrink() -> None:
    res = _run("sparsity.kind=prune", "sparsity.density=0.1", "rounds=10")
    assert np.mean(res.weights != 0) < 0.15
    assert res.metrics[-1]["upload_bytes_per_client"] < 0.2 * res.metrics[0]["upload_bytes_per_client"]


def test_memory_budget_trains_and_sends_only_the_chosen_subset() -> None:
    res = _run("sparsity.kind=memory_budget", "sparsity.density=0.6", "rounds=4")
    report = res.summary["memory_budget"]
    assert report["chosen_memory_bytes"] <= 0.6 * report["full_training_memory_bytes"]
    assert res.metrics[-1]["client_memory_bytes"] == report["chosen_memory_bytes"]
    trained = report["trained_parameters"]
    assert res.metrics[-1]["client_trained_parameters"] == trained < res.summary["num_parameters"]
    # Only the subset is sent (float32 in plain): 4 bytes per trained parameter.
    assert res.metrics[-1]["upload_bytes_per_client"] == 4 * trained


def test_batch_norm_layers_stay_local_to_each_client() -> None:
    res = _run("model.batch_norm=true", "rounds=3", "data.partition=dirichlet", "data.alpha=0.3")
    from secure_fl.models import build_model
    from secure_fl.personalization import LocalLayers

    model = res.model
    local = LocalLayers(model)
    assert local.enabled and local.mask.sum() == 2 * 64  # BatchNorm1d(64): weight and bias
    fresh = build_model(load_config(PLAIN, ["model.batch_norm=true"]).model, (1, 8, 8), 10)
    init = LocalLayers(fresh)
    # The server's copy of the local layers never moves: it was never aggregated...
    np.testing.assert_array_equal(res.weights[local.mask], np.concatenate(
        [p.detach().numpy().ravel() for n, p in fresh.named_parameters() if n.startswith(tuple(
            f"{m}." for m in init.module_names))]))
    # ...and nothing about them was sent: the support excludes them.
    last = res.metrics[-1]
    assert last["client_trained_parameters"] == res.summary["num_parameters"] - 128
    assert last["upload_bytes_per_client"] == 4 * (res.summary["num_parameters"] - 128)
    assert last["personalized_accuracy"] is not None
