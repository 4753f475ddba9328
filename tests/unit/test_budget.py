"""Per-client budgets (caps, refusals, composition over joined rounds) and calibration."""

from __future__ import annotations

import math

import pytest

from privacy import (
    AccountingError,
    BudgetExhaustedError,
    ClientBudgets,
    DiscreteGaussianSumEvent,
    GaussianEvent,
    PrivacyError,
    RdpAccountant,
    SelfComposedEvent,
    SkellamSumEvent,
    calibrate_noise_multiplier,
    compute_epsilon,
)

DELTA = 1e-5
Z = 4.0  # noise multiplier of every aggregation in these tests


def _eps_after(k: int) -> float:
    """Independent of ClientBudgets: epsilon of k unsampled Gaussian releases."""
    if k == 0:
        return 0.0
    return compute_epsilon(
        mechanism="gaussian", noise_multiplier=Z, sample_rate=1.0, steps=k, delta=DELTA
    )


def test_small_cap_stops_joining_at_the_right_aggregation() -> None:
    cap = 3.0
    expected_last = max(k for k in range(1, 200) if _eps_after(k) <= cap)  # 1-based count
    budgets = ClientBudgets(delta=DELTA, caps={"hospital": cap})
    joined = {"hospital": [], "bank": []}  # type: dict[str, list[int]]
    for version in range(expected_last + 5):
        for client in ("hospital", "bank"):
            if budgets.join(client, GaussianEvent(Z), aggregation=version):
                joined[client].append(version)
    assert joined["hospital"] == list(range(expected_last))
    assert joined["bank"] == list(range(expected_last + 5))  # no cap: never refuses
    assert budgets.epsilon("hospital") == pytest.approx(_eps_after(expected_last), rel=1e-9)
    assert budgets.epsilon("hospital") <= cap < _eps_after(expected_last + 1)
    refusals = budgets.refusals
    assert [r.aggregation for r in refusals] == list(range(expected_last, expected_last + 5))
    assert all(r.client == "hospital" and r.cap == cap for r in refusals)
    assert refusals[0].epsilon_after == pytest.approx(_eps_after(expected_last + 1), rel=1e-9)
    assert budgets.max_epsilon() == pytest.approx(_eps_after(expected_last + 5), rel=1e-9)


def test_epsilon_composes_only_over_joined_aggregations() -> None:
    budgets = ClientBudgets(delta=DELTA)
    schedule = {0: ["a", "b"], 1: ["b"], 2: ["b"], 3: ["a", "b"], 4: [], 5: ["a"]}
    for version, cohort in schedule.items():
        assert budgets.admit(cohort, GaussianEvent(Z), aggregation=version) == cohort
    assert budgets.aggregations_joined("a") == 3
    assert budgets.aggregations_joined("b") == 4
    assert budgets.epsilon("a") == pytest.approx(_eps_after(3), rel=1e-9)
    assert budgets.epsilon("b") == pytest.approx(_eps_after(4), rel=1e-9)
    assert budgets.epsilon("never-joined") == 0.0
    assert budgets.max_epsilon() == budgets.epsilon("b")


def test_would_exceed_changes_nothing() -> None:
    budgets = ClientBudgets(delta=DELTA, default_cap=1.0)
    assert not budgets.would_exceed(7, GaussianEvent(8.0))
    assert budgets.would_exceed(7, GaussianEvent(0.5))
    assert budgets.epsilon(7) == 0.0 and budgets.refusals == ()
    assert budgets.aggregations_joined(7) == 0
    budgets.set_cap(7, math.inf)
    assert not budgets.would_exceed(7, GaussianEvent(0.5))


def test_charge_records_then_raises_when_over_cap() -> None:
    budgets = ClientBudgets(delta=DELTA, default_cap=1.0)
    with pytest.raises(BudgetExhaustedError, match="cap"):
        budgets.charge("site", GaussianEvent(1.0))
    assert budgets.epsilon("site") == pytest.approx(_eps_after_z(1.0), rel=1e-9)


def _eps_after_z(z: float) -> float:
    return compute_epsilon(
        mechanism="gaussian", noise_multiplier=z, sample_rate=1.0, steps=1, delta=DELTA
    )


def test_unsupported_event_is_refused_without_counting_the_join() -> None:
    budgets = ClientBudgets(delta=DELTA, accountant="prv")
    ddg = DiscreteGaussianSumEvent(2.0, 10, 5.0, 50.0, 100)
    with pytest.raises(AccountingError, match="DiscreteGaussianSumEvent"):
        budgets.join("c", ddg)
    assert budgets.aggregations_joined("c") == 0 and budgets.refusals == ()


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(PrivacyError):
        ClientBudgets(delta=0.0)
    with pytest.raises(AccountingError):
        ClientBudgets(delta=DELTA, accountant="nope")
    with pytest.raises(PrivacyError):
        ClientBudgets(delta=DELTA, caps={"x": -1.0})


# -- calibration --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "q", "steps", "accountant"),
    [
        (2.0, 0.01, 1000, "rdp"),
        (1.0, 0.1, 100, "rdp"),
        (5.0, 1.0, 10, "rdp"),
        (0.5, 1.0, 1, "rdp"),
        (3.0, 0.02, 300, "prv"),
    ],
)
def test_calibrated_gaussian_hits_target_from_below(
    target: float, q: float, steps: int, accountant: str
) -> None:
    z = calibrate_noise_multiplier(
        target_epsilon=target, delta=DELTA, steps=steps, sample_rate=q, accountant=accountant
    )
    eps = compute_epsilon(
        mechanism="gaussian",
        noise_multiplier=z,
        sample_rate=q,
        steps=steps,
        delta=DELTA,
        accountant=accountant,
    )
    assert 0.99 * target <= eps <= target


def test_calibrated_discrete_mechanisms_hit_target_from_below() -> None:
    n, l2, l1, d, steps, target = 20, 100.0, 3000.0, 1000, 50, 4.0
    z = calibrate_noise_multiplier(
        target_epsilon=target,
        delta=DELTA,
        steps=steps,
        mechanism="skellam",
        num_clients=n,
        l2_sensitivity=l2,
        l1_sensitivity=l1,
    )
    acc = RdpAccountant()
    acc.compose(SelfComposedEvent(SkellamSumEvent((z * l2) ** 2 / n, n, l2, l1), steps))
    assert 0.99 * target <= acc.epsilon(DELTA) <= target

    z = calibrate_noise_multiplier(
        target_epsilon=target,
        delta=DELTA,
        steps=steps,
        mechanism="discrete_gaussian",
        num_clients=n,
        l2_sensitivity=l2,
        l1_sensitivity=l1,
        dimension=d,
    )
    acc = RdpAccountant()
    sigma = z * l2 / math.sqrt(n)
    acc.compose(SelfComposedEvent(DiscreteGaussianSumEvent(sigma, n, l2, l1, d), steps))
    assert 0.99 * target <= acc.epsilon(DELTA) <= target


def test_calibration_refuses_what_it_cannot_do() -> None:
    with pytest.raises(AccountingError, match="mechanism"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=DELTA, steps=10, mechanism="laplace")
    with pytest.raises(AccountingError, match="dimension"):
        calibrate_noise_multiplier(
            target_epsilon=1.0,
            delta=DELTA,
            steps=10,
            mechanism="discrete_gaussian",
            num_clients=5,
            l1_sensitivity=10.0,
        )
    with pytest.raises(AccountingError, match="DiscreteGaussianSumEvent"):
        calibrate_noise_multiplier(
            target_epsilon=1.0,
            delta=DELTA,
            steps=10,
            mechanism="discrete_gaussian",
            num_clients=5,
            l1_sensitivity=10.0,
            dimension=10,
            accountant="prv",
        )
