from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from privacy import compute_epsilon
from secure_fl import load_config, run

PLAIN = Path(__file__).resolve().parents[1] / "plain.toml"


def _run(*overrides: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(load_config(PLAIN, ["train.lr=0.1", *overrides]), write=False, progress=False)


def test_running_epsilon_matches_an_independent_computation() -> None:
    z = 2.0
    res = _run("protocol=ckks", "dp.mechanism=gaussian", f"dp.noise_multiplier={z}", "rounds=4",
               "clients.num=6", "dp.clip=5.0")
    for m in res.metrics:
        expected = compute_epsilon(mechanism="gaussian", noise_multiplier=z, sample_rate=1.0,
                                   steps=m["version"], delta=1e-5)
        assert m["epsilon"] == pytest.approx(expected, rel=1e-9)
    s = res.summary
    assert s["accountant"] == "rdp" and s["delta"] == 1e-5 and "client" in s["unit_of_privacy"]
    # The released model sees all 6 shares (5 of them honest against the server).
    released = compute_epsilon(mechanism="gaussian", noise_multiplier=z * (6 / 5) ** 0.5,
                               sample_rate=1.0, steps=4, delta=1e-5)
    assert s["epsilon_released_model"] == pytest.approx(released, rel=1e-9)


def test_released_model_epsilon_amplified_only_for_central_noise_and_poisson_cohorts() -> None:
    base = ["dp.mechanism=gaussian", "dp.noise_multiplier=2.0", "rounds=3", "clients.num=10",
            "clients.per_round=5"]
    poisson = _run(*base, "clients.sampling=poisson").summary
    expected = compute_epsilon(mechanism="gaussian", noise_multiplier=2.0, sample_rate=0.5,
                               steps=3, delta=1e-5)
    assert poisson["epsilon_released_model"] == pytest.approx(expected, rel=1e-9)
    assert "Mironov, Talwar, Zhang" in poisson["epsilon_released_model_analysis"]
    fixed = _run(*base).summary
    assert fixed["epsilon_released_model"] > poisson["epsilon_released_model"]
    assert "no amplification" in fixed["epsilon_released_model_analysis"]


def test_site_with_smaller_cap_stops_joining_at_the_right_aggregation() -> None:
    z, cap = 3.0, 2.5
    steps_ok = max(k for k in range(1, 20) if compute_epsilon(
        mechanism="gaussian", noise_multiplier=z, sample_rate=1.0, steps=k, delta=1e-5) <= cap)
    res = _run("dp.mechanism=gaussian", f"dp.noise_multiplier={z}", "rounds=8",
               "clients.num=5", f"dp.site_caps={{2 = {cap}}}")
    joined = [m["version"] for m in res.metrics if 2 in m["survivors"]]
    assert joined == list(range(1, steps_ok + 1))
    refused_at = [m["version"] for m in res.metrics if "2" in m["budget_refusals"]]
    assert refused_at and refused_at[0] == steps_ok + 1
    # plain: no guarantee against the server; the caps bound the released-model figure
    assert res.summary["epsilon_per_client"] == {}
    assert res.summary["epsilon_released_model_per_client"]["2"] <= cap
    others = [m for m in res.metrics if 0 in m["survivors"]]
    assert len(others) == 8


def test_training_stops_when_every_budget_is_spent() -> None:
    res = _run("dp.mechanism=gaussian", "dp.noise_multiplier=3.0", "rounds=10", "clients.num=4",
               "dp.budget_cap=2.5")
    assert res.summary["aggregations_completed"] < 10
    assert res.metrics[-1]["aborted"] and "budget" in res.metrics[-1]["aborted"]


@pytest.mark.parametrize("protocol", ["plain", "ckks"])
def test_target_epsilon_is_met_within_two_percent(protocol: str) -> None:
    res = _run(f"protocol={protocol}", "dp.mechanism=gaussian", "dp.target_epsilon=3.0", "rounds=5",
               "clients.num=6", "dp.provisioned_survivors=6", "dp.clip=5.0")
    key = "epsilon_released_model" if protocol == "plain" else "epsilon_against_server"
    eps = res.summary[key]
    assert 0.98 * 3.0 <= eps <= 3.0


def test_more_dropouts_than_provisioned_raise_epsilon_and_warn() -> None:
    base = ["protocol=ckks", "dp.mechanism=gaussian", "dp.noise_multiplier=2.0", "rounds=3",
            "clients.num=10", "dp.provisioned_survivors=10", "dp.clip=5.0"]
    full = _run(*base)
    with pytest.warns(UserWarning, match="fewer clients survived"):
        dropped = run(load_config(PLAIN, ["train.lr=0.1", *base, "simulation.dropout=0.4"]),
                      write=False, progress=False)
    assert dropped.summary["privacy_warnings"]
    assert dropped.summary["epsilon"] > full.summary["epsilon"]
    # The recorded noise is what the honest shares summed, with c = 1 colluder:
    # z * sqrt((survivors - 1) / (provisioned - 1)) per aggregation.
    from privacy import GaussianEvent, RdpAccountant

    acc = RdpAccountant()
    for m in dropped.metrics:
        acc.compose(GaussianEvent(noise_multiplier=2.0 * ((len(m["survivors"]) - 1) / 9) ** 0.5))
    worst = max(dropped.summary["epsilon_per_client"].values())
    assert worst <= acc.epsilon(1e-5) + 1e-9


def test_record_level_dp_sgd_reports_each_sites_example_level_epsilon() -> None:
    res = _run("dp.record_level=true", "dp.record_noise_multiplier=1.0", "dp.record_clip=1.0",
               "protocol=secagg", "dp.mechanism=discrete_gaussian", "dp.noise_multiplier=1.0",
               "data.dataset=breast_cancer", "clients.num=4", "model.kind=logreg", "rounds=2")
    s = res.summary
    per_site = s["epsilon_record_level_per_site"]
    assert set(per_site) == {"0", "1", "2", "3"}
    # Independent check: each site ran `rounds` local trainings of ceil(n / batch) steps
    # of the Poisson-subsampled Gaussian (q = batch / n, Opacus's sample rate 1/len(loader)).
    from secure_fl.data import load_federated_data

    data = load_federated_data(load_config(PLAIN, ["data.dataset=breast_cancer", "clients.num=4"]))
    for cid, eps in per_site.items():
        n = data.clients[int(cid)].num_train
        steps_per_round = -(-n // 32)
        expected = compute_epsilon(mechanism="gaussian", noise_multiplier=1.0,
                                   sample_rate=1 / steps_per_round, steps=2 * steps_per_round, delta=1e-5)
        assert eps == pytest.approx(expected, rel=1e-6)
    assert s["epsilon"] > 0 and "record" in s["unit_of_privacy_record_level"]
