"""The federated engine (secure_fl/engine) over the in-process transport.

* a client whose engine is rebuilt for every message (as a Flower SuperNode runs a
  fresh ClientApp per message, replaying its SecAgg state from the store) gives
  bit-identical aggregates, metrics and ledger DP events to one that keeps its live
  protocol objects: the state between messages is complete;
* a drop plan silences exactly the named clients from exactly their stage;
* a site refuses a set-up that misplaces its key or lies about its staleness;
* the CKKS key holder is its own party and counts receipts against its own roster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import secure_fl.runner as runner
from secure_fl import load_config, run
from secure_fl.engine.client import ClientEngine, DictState, MemoryBudget, Site, SiteData, SiteRules
from secure_fl.engine.transport import HELLO, SETUP, Envelope
from secure_fl.models import build_model, get_flat

COMMON = ["rounds=3", "clients.num=8", "clients.per_round=6", "simulation.reproducible_noise=true",
          "simulation.workers=1"]


def _bodies(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in (path / "ledger.jsonl").read_text(encoding="utf-8").splitlines():
        body = json.loads(line)["body"]
        body.pop("wall_time_s", None)
        out.append(body)
    return out


class _FreshEachMessage:
    """A site whose engine is rebuilt for every message (no live objects survive)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.built = 0

    def handle(self, kind: str, env: Envelope, state: Any) -> Envelope:
        self.built += 1
        return ClientEngine(self.site).handle(kind, env, state)


@pytest.mark.parametrize(
    "extra",
    [
        ["protocol=secagg", "dp.mechanism=discrete_gaussian", "simulation.dropout=0.2"],
        ["protocol=secagg", "dp.mechanism=skellam", "aggregation.mode=async", "aggregation.buffer_size=3",
         "sparsity.kind=random_k", "sparsity.density=0.5", "model.batch_norm=true"],
    ],
    ids=["sync-ddg-dropout", "async-skellam-random_k-fedbn"],
)
def test_replayed_site_state_gives_bit_identical_aggregates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    cfg = load_config(None, [*COMMON, *extra])
    live = run(cfg, out_dir=tmp_path / "live", progress=False)
    monkeypatch.setattr(runner, "ClientEngine", _FreshEachMessage)
    fresh = run(cfg, out_dir=tmp_path / "fresh", progress=False)
    np.testing.assert_array_equal(live.weights, fresh.weights)
    strip = [[{k: v for k, v in m.items() if k != "wall_time_s"} for m in r.metrics] for r in (live, fresh)]
    assert strip[0] == strip[1]
    a, b = _bodies(tmp_path / "live"), _bodies(tmp_path / "fresh")
    assert [x["dp_event"] for x in a] == [x["dp_event"] for x in b]
    assert [x["dp_event_released"] for x in a] == [x["dp_event_released"] for x in b]
    assert [x["transcript_records_sha256"] for x in a] == [x["transcript_records_sha256"] for x in b]
    assert all(not m["aborted"] for m in live.metrics)


def test_a_drop_plan_silences_exactly_the_named_clients_from_their_stage() -> None:
    cfg = load_config(None, ["rounds=2", "clients.num=8", "clients.per_round=8", "protocol=secagg",
                             "dp.mechanism=discrete_gaussian", "simulation.workers=1"])
    plan = {1: {"2": "masked_input", "4": "advertise"}, 2: {"1": "unmask", "6": "train"}}
    res = run(cfg, write=False, progress=False, drop_plan=plan)
    first, second = res.metrics
    assert first["dropped"] == {"advertise": [4], "masked_input": [2]}
    assert first["survivors"] == [0, 1, 3, 5, 6, 7]
    # a client silent at unmask already delivered its masked input: it is in the sum
    assert second["dropped"] == {"unmask": [1], "train": [6]}
    assert second["survivors"] == [0, 1, 2, 3, 4, 5, 7]
    with pytest.raises(Exception, match="not a stage"):
        run(cfg, write=False, progress=False, drop_plan={1: {"2": "upload"}})


def _site(name: str) -> Site:
    from crypto.prg import Csprng
    from crypto.signatures import generate_identity

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    cfg = load_config(None, ["model.kind=logreg"])
    return Site(name, generate_identity(Csprng(name.encode().ljust(32, b"\0"))), SiteData(x, y, x[:4], y[:4]),
                SiteRules(), MemoryBudget(cap=float("inf"), delta=1e-5, name=name),
                build_model(cfg.model, (4,), 2))


def _setups(site: Site, keys: list[bytes], *, index: int, staleness: int = 0) -> tuple[Envelope, Envelope]:
    from secure_fl.config import to_toml

    cfg = load_config(None, ["model.kind=logreg", "protocol=plain", "dp.mechanism=none"])
    w = get_flat(site.model)
    common = {"version": 3, "config_toml": to_toml(cfg), "protocol": "plain", "run": "t", "clip": 0.0, "kappa": 0.0}
    train = Envelope(fields={**common, "train": True, "aggregate": False, "base_version": 2},
                     arrays={"weights": w, "support": np.arange(w.size)})
    agg = Envelope(fields={**common, "train": False, "aggregate": True, "model_version": 2 + staleness,
                           "identity_keys": keys, "members": ["a", "b"], "n": 2, "provisioned": 2,
                           "session_id": bytes(32), "round_seed": bytes(32), "index": index, "weight": 1.0,
                           "staleness": 0}, arrays={"support": np.arange(w.size)})
    return train, agg


def test_a_site_refuses_a_setup_that_misplaces_its_key_or_lies_about_staleness() -> None:
    site, other = _site("a"), _site("b")
    engine, state = ClientEngine(site), DictState()
    hello = engine.handle(HELLO, Envelope(fields={"challenge": bytes(32)}), state)
    assert hello.fields["site"] == "a" and hello.fields["identity_key"] == site.public_key
    train, agg = _setups(site, [other.public_key, site.public_key], index=0)
    assert engine.handle(SETUP, train, state).fields["ready"] is True
    refused = engine.handle(SETUP, agg, state)
    assert refused.fields["refusal"] == "rules" and "own key" in str(refused.fields["refused"])
    # the server says the update is fresh (tau = 0) but the model moved on by 3 versions
    train, agg = _setups(site, [site.public_key, other.public_key], index=0, staleness=3)
    engine.handle(SETUP, train, state)
    lied = engine.handle(SETUP, agg, state)
    assert lied.fields["refusal"] == "error" and "staleness" in str(lied.fields["refused"])
    train, agg = _setups(site, [site.public_key, other.public_key], index=0)
    engine.handle(SETUP, train, state)
    ok = engine.handle(SETUP, agg, state)
    assert "refused" not in ok.fields and ok.arrays["update"].dtype == np.float32


def test_the_ckks_key_holder_counts_receipts_against_its_own_roster(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(None, ["rounds=1", "clients.num=6", "clients.per_round=4", "protocol=ckks",
                             "dp.mechanism=gaussian", "dp.noise_multiplier=0.5", "simulation.workers=1"])
    ok = run(cfg, write=False, progress=False)
    assert not ok.metrics[0]["aborted"] and len(ok.metrics[0]["survivors"]) == 4
    real = runner.KeyHolderEngine

    def stranger_roster(**kwargs: Any) -> Any:  # a key holder that knows none of these clients
        return real(**{**kwargs, "members": []})

    monkeypatch.setattr(runner, "KeyHolderEngine", stranger_roster)
    res = run(cfg, write=False, progress=False)
    assert res.metrics[0]["aborted"] and "key holder" in res.metrics[0]["aborted"]


def _engine_run(cfg: Any, resume: dict[str, Any] | None, snaps: list[dict[str, Any]], *,
                transport_cls: Any = None) -> tuple[Any, Any]:
    """One run of a fresh ServerEngine over fresh simulated parties (a new server process:
    nothing of an earlier one survives but ``resume``); (result, engine)."""
    import torch

    from crypto.prg import Csprng
    from secure_fl.data import load_federated_data
    from secure_fl.engine import public
    from secure_fl.engine.server import ServerEngine
    from secure_fl.engine.transport import drive
    from secure_fl.identities import ClientIdentities
    from secure_fl.transport.inprocess import InProcessTransport

    data = load_federated_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.feature_shape, data.num_classes)
    keys = ClientIdentities.generate(range(cfg.clients.num), rng=Csprng(public.public_seed(cfg, "identities")))
    parties, _ = runner.build_parties(cfg, data, model, keys)  # each site keeps its key across the restart
    engine = ServerEngine(cfg, model, num_classes=data.num_classes, resume=resume, on_aggregation_complete=snaps.append)
    transport = (transport_cls or InProcessTransport)(parties, protocol=cfg.protocol, seed=cfg.seed)
    return drive(engine.run(transport.reachable()), transport), engine


def test_a_server_engine_resumed_from_a_snapshot_continues_the_same_run() -> None:
    """The resume hook: the snapshot after aggregation 2, given to a new ServerEngine (new
    parties, new transport: the old server process is gone), continues to the same
    weights and metrics as the uninterrupted run."""
    cfg = load_config(None, ["rounds=4", "clients.num=6", "clients.per_round=4", "protocol=secagg",
                             "dp.mechanism=discrete_gaussian", "dp.noise_multiplier=1.0",
                             "sparsity.kind=prune", "sparsity.density=0.5", "server.optimizer=adam",
                             "simulation.reproducible_noise=true", "simulation.workers=1"])
    snaps: list[dict[str, Any]] = []
    whole, _ = _engine_run(cfg, None, snaps)
    assert [s["version"] for s in snaps] == [1, 2, 3, 4] and snaps[1]["metrics_count"] == 2
    resumed, _ = _engine_run(cfg, snaps[1], [])
    np.testing.assert_array_equal(whole.weights, resumed.weights)
    assert [m["survivors"] for m in whole.metrics] == [m["survivors"] for m in resumed.metrics]
    assert [m["epsilon"] for m in whole.metrics] == [m["epsilon"] for m in resumed.metrics]


# -- the memory-budget probe is an engine phase (issue 12) ----------------------------------------
PROBE_RUN = ["rounds=1", "clients.num=4", "clients.per_round=4", "data.dataset=breast_cancer", "model.kind=mlp",
             "model.hidden=[4]", "train.batch_size=16", "sparsity.kind=memory_budget", "sparsity.density=0.5",
             "protocol=plain", "dp.mechanism=none", "simulation.workers=1"]


class _ProbeSite:
    """A site that fails (``"raise"``) or whose rules refuse (``"refuse"``) the probe."""

    def __init__(self, site: Site, behaviour: dict[str, str]) -> None:
        from dataclasses import replace

        self.mode = behaviour.get(site.name)
        if self.mode == "refuse":
            site = replace(site, rules=replace(site.rules, allow_unnoised_metrics=False))
        self.engine = ClientEngine(site)

    def handle(self, kind: str, env: Envelope, state: Any) -> Envelope:
        from secure_fl.engine.transport import PROBE

        if kind == PROBE and self.mode == "raise":
            raise RuntimeError("the probe crashed at this site")
        return self.engine.handle(kind, env, state)


def _probe_run(monkeypatch: pytest.MonkeyPatch, behaviour: dict[str, str]) -> Any:
    monkeypatch.setattr(runner, "ClientEngine", lambda site: _ProbeSite(site, behaviour))
    return run(load_config(None, PROBE_RUN), write=False, progress=False)


def test_a_probe_client_that_fails_or_refuses_is_left_out_of_the_memory_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = _probe_run(monkeypatch, {}).summary
    report = whole["memory_budget"]
    assert report["probe_clients"] == [0, 1, 2, 3] and len(report["candidates"]) == 2
    assert report["selection"].startswith("probe accuracy")
    partial = _probe_run(monkeypatch, {"1": "raise", "2": "refuse"})
    got = partial.summary["memory_budget"]
    assert got["probe_clients"] == [0, 3]
    assert set(got["probe_excluded"]) == {"1", "2"}
    assert "crashed" in got["probe_excluded"]["1"] and "unnoised" in got["probe_excluded"]["2"]
    assert got["selection"].startswith("probe accuracy")
    assert all(not m["aborted"] for m in partial.metrics)
    # nobody answers: the choice without client data (most trained parameters), said so
    none = _probe_run(monkeypatch, dict.fromkeys("0123", "refuse")).summary["memory_budget"]
    assert none["probe_clients"] == [] and set(none["probe_excluded"]) == set("0123")
    assert "most trained parameters" in none["selection"] and "no probe client answered" in none["selection"]
    assert all("trained_parameters" in c for c in none["candidates"])


def test_a_site_answers_a_probe_only_when_the_run_and_its_own_rules_allow_unnoised_metrics() -> None:
    from dataclasses import replace

    from secure_fl.config import to_toml
    from secure_fl.engine.transport import PROBE

    site = _site("a")  # logreg on 4 features: tensors 1.weight (8) and 1.bias (2)
    w = get_flat(site.model)

    def probe(cfg: list[str], rules: SiteRules) -> Envelope:
        env = Envelope(fields={"config_toml": to_toml(load_config(None, ["model.kind=logreg", *cfg])), "run": "t",
                               "index": 0, "tensor_names": ["1.weight", "1.bias"]},
                       arrays={"weights": w, "candidates": np.array([[1, 0], [0, 1]], dtype=np.uint8)})
        return ClientEngine(replace(site, rules=rules)).handle(PROBE, env, DictState())

    allowed = SiteRules(allow_unnoised_metrics=True)
    ok = probe(["dp.mechanism=none"], allowed)
    accs = ok.fields["probe_accuracy"]
    assert isinstance(accs, list) and len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
    assert set(ok.fields) == {"site", "probe_accuracy"}  # one scalar per candidate leaves the site
    own = probe(["dp.mechanism=none"], SiteRules(allow_unnoised_metrics=False))
    assert own.fields["refusal"] == "rules" and "allow_unnoised_metrics" in str(own.fields["refused"])
    under_dp = probe([], allowed)  # distributed DP (the default) and the run did not opt in
    assert under_dp.fields["refusal"] == "rules" and "allow_unnoised_site_metrics" in str(under_dp.fields["refused"])
    assert "probe_accuracy" in probe(["dp.allow_unnoised_site_metrics=true"], allowed).fields
    wrong = ClientEngine(replace(site, rules=allowed)).handle(PROBE, Envelope(
        fields={"config_toml": to_toml(load_config(None, ["model.kind=logreg", "dp.mechanism=none"])), "run": "t",
                "index": 0, "tensor_names": ["fc.weight", "fc.bias"]},
        arrays={"weights": w, "candidates": np.array([[1, 0]], dtype=np.uint8)}), DictState())
    assert wrong.fields["refusal"] == "error" and "tensor" in str(wrong.fields["refused"])


def test_a_resumed_memory_budget_run_keeps_its_subset_and_does_not_probe_again() -> None:
    """The chosen subset is in the snapshot (through the checkpoint's tree encoding): a
    resumed engine sends no probe and continues to the uninterrupted run's weights."""
    from secure_fl.engine.checkpoint import decode_tree, encode_tree, engine_state
    from secure_fl.engine.transport import PROBE
    from secure_fl.errors import CheckpointError
    from secure_fl.transport.inprocess import InProcessTransport

    cfg = load_config(None, [*PROBE_RUN, "rounds=3"])
    probes: list[int] = []

    class Counting(InProcessTransport):
        def exchange(self, command: Any) -> Any:
            probes.extend(a for a, (kind, _env) in command.messages.items() if kind == PROBE)
            return super().exchange(command)

    snaps: list[dict[str, Any]] = []
    whole, first = _engine_run(cfg, None, snaps, transport_cls=Counting)
    assert sorted(probes) == [0, 1, 2, 3] and first.memory is not None
    probes.clear()
    stored = decode_tree(encode_tree(engine_state(snaps[0])))
    resumed, second = _engine_run(cfg, stored, [], transport_cls=Counting)
    assert probes == []
    assert second.memory is not None and second.memory.report == first.memory.report
    np.testing.assert_array_equal(second.memory.frozen, first.memory.frozen)
    np.testing.assert_array_equal(whole.weights, resumed.weights)
    assert [m["client_memory_bytes"] for m in whole.metrics] == [m["client_memory_bytes"] for m in resumed.metrics]
    with pytest.raises(CheckpointError, match="lacks its chosen subset"):  # never re-probed mid-run
        _engine_run(cfg, {**stored, "memory": None}, [])
