"""The audit's independent epsilon recomputation agrees with the accountants and flags
every claim that does not match the ledger's DP events (located)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from audits.epsilon_check import check_epsilon, epsilon_from_rdp, event_curve, rerun_epsilon
from audits.events_codec import encode_event
from audits.ledger import (
    LEDGER_FILENAME,
    PUBLIC_KEY_FILENAME,
    LedgerWriter,
    generate_server_key,
    save_public_key,
)
from privacy import ClientBudgets, RdpAccountant, compute_epsilon
from privacy.events import (
    DiscreteGaussianSumEvent,
    DPEvent,
    GaussianEvent,
    NonPrivateEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    SkellamSumEvent,
)

DELTA = 1e-5


def _reference(event: DPEvent, count: int = 1) -> float:
    acc = RdpAccountant()
    acc.compose(SelfComposedEvent(event, count))
    return acc.epsilon(DELTA)


@pytest.mark.parametrize("z,steps", [(0.8, 1), (1.0, 10), (3.0, 30), (10.0, 5)])
def test_gaussian_matches_accountant(z: float, steps: int) -> None:
    mine = rerun_epsilon([GaussianEvent(z)] * steps, delta=DELTA)
    ref = compute_epsilon(mechanism="gaussian", noise_multiplier=z, sample_rate=1.0, steps=steps, delta=DELTA)
    assert mine == pytest.approx(ref, rel=0.01)


@pytest.mark.parametrize(
    "event",
    [
        DiscreteGaussianSumEvent(sigma=0.6, num_clients=5, l2_sensitivity=3.0, l1_sensitivity=9.0, dimension=64),
        DiscreteGaussianSumEvent(sigma=30.0, num_clients=100, l2_sensitivity=200.0, l1_sensitivity=4000.0, dimension=8192),
        SkellamSumEvent(mu=4.0, num_clients=10, l2_sensitivity=5.0, l1_sensitivity=20.0),
        SkellamSumEvent(mu=1e4, num_clients=50, l2_sensitivity=900.0, l1_sensitivity=9e4),
    ],
)
def test_discrete_mechanisms_match_accountant(event: DPEvent) -> None:
    mine = rerun_epsilon([event] * 3, delta=DELTA)
    assert mine == pytest.approx(_reference(event, 3), rel=0.02)


def test_large_sigma_ddg_tends_to_gaussian() -> None:
    # Equal up to the integer orders at which the discrete bound is evaluated.
    n, sigma, l2 = 20, 1e4, 3e4
    ddg = DiscreteGaussianSumEvent(sigma=sigma, num_clients=n, l2_sensitivity=l2, l1_sensitivity=l2 * 50, dimension=4096)
    gauss = GaussianEvent(math.sqrt(n) * sigma / l2)
    assert rerun_epsilon([ddg], delta=DELTA) == pytest.approx(rerun_epsilon([gauss], delta=DELTA), rel=0.01)


def test_sampled_gaussian_close_to_accountant() -> None:
    mine = rerun_epsilon([PoissonSampledEvent(0.1, GaussianEvent(1.2))] * 50, delta=DELTA)
    ref = compute_epsilon(mechanism="gaussian", noise_multiplier=1.2, sample_rate=0.1, steps=50, delta=DELTA)
    assert mine == pytest.approx(ref, rel=0.05)


def test_non_private_is_infinite_and_noop_zero() -> None:
    assert math.isinf(rerun_epsilon([GaussianEvent(1.0), NonPrivateEvent()], delta=DELTA))
    assert epsilon_from_rdp(event_curve(SelfComposedEvent(GaussianEvent(1.0), 0)), delta=DELTA) == 0.0


# --------------------------------------------------------------------- synthetic runs


def _write_run(root: Path, events: Sequence[DPEvent], survivors: list[list[int]], *, claim_scale: float = 1.0,
               forge_event: DPEvent | None = None) -> None:
    """A run directory whose claims are computed by the production accountants."""
    root.mkdir(parents=True, exist_ok=True)
    key = generate_server_key()
    save_public_key(key, root / PUBLIC_KEY_FILENAME)
    writer = LedgerWriter.create(root / LEDGER_FILENAME, key)
    budgets = ClientBudgets(delta=DELTA)
    metrics = []
    for version, (event, surv) in enumerate(zip(events, survivors, strict=True), start=1):
        for c in surv:
            budgets.charge(c, event)
        eps_max = budgets.max_epsilon() * claim_scale
        body: dict[str, Any] = {
            "version": version,
            "dp_event": encode_event(forge_event or event),
            "dp_mechanism": "gaussian",
            "survivors": surv,
            "cohort": surv,
            "aborted": None,
            "epsilon_per_client": {str(c): budgets.epsilon(c) * claim_scale for c in surv},
            "epsilon_max": eps_max,
            "delta": DELTA,
        }
        writer.append(body)
        metrics.append({"version": version, "epsilon": eps_max, "test_accuracy": 0.5})
    summary = {
        "epsilon": budgets.max_epsilon() * claim_scale,
        "epsilon_per_client": {str(c): budgets.epsilon(c) * claim_scale for c in budgets.clients},
        "delta": DELTA,
        "ledger_entries": writer.next_index,
        "ledger_head": writer.head,
    }
    (root / "summary.json").write_text(json.dumps(summary))
    (root / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def test_honest_run_agrees_per_client(tmp_path: Path) -> None:
    # Clients join different aggregations: each composes only its own.
    events = [GaussianEvent(1.5), GaussianEvent(2.0), GaussianEvent(1.0), GaussianEvent(1.5)]
    survivors = [[0, 1, 2], [1, 2], [0, 2, 3], [3]]
    _write_run(tmp_path, events, survivors)
    result = check_epsilon(tmp_path)
    assert result.status == "agree", result.mismatches
    assert result.checked_claims > 10
    assert result.per_client["3"] == pytest.approx(rerun_epsilon([GaussianEvent(1.0), GaussianEvent(1.5)], delta=DELTA), rel=1e-3)
    assert result.per_client["2"] > result.per_client["0"] > 0


def test_under_claim_is_flagged_and_located(tmp_path: Path) -> None:
    _write_run(tmp_path, [GaussianEvent(1.0)] * 3, [[0, 1]] * 3, claim_scale=0.9)
    result = check_epsilon(tmp_path)
    assert result.status == "disagree"
    locations = [m.location for m in result.mismatches]
    assert any("ledger line 1" in loc and "epsilon_per_client['0']" in loc for loc in locations)
    assert any(loc.startswith("summary.json epsilon") for loc in locations)
    assert any(loc.startswith("metrics.jsonl line 3") for loc in locations)


def test_epsilon_claimed_but_event_non_private(tmp_path: Path) -> None:
    # Claims computed for a Gaussian, but the ledger says no noise was added.
    _write_run(tmp_path, [GaussianEvent(2.0)] * 2, [[0]] * 2, forge_event=NonPrivateEvent())
    result = check_epsilon(tmp_path)
    assert result.status == "disagree"
    assert result.recomputed_epsilon is not None and math.isinf(result.recomputed_epsilon)
    first = result.mismatches[0]
    assert first.location.startswith("ledger line 1") and math.isinf(first.recomputed)


def test_undecodable_event_is_unverifiable(tmp_path: Path) -> None:
    _write_run(tmp_path, [GaussianEvent(2.0)], [[0]])
    lines = (tmp_path / LEDGER_FILENAME).read_text().splitlines()
    obj = json.loads(lines[0])
    obj["body"]["dp_event"] = {"type": "laplace", "b": 1.0}
    (tmp_path / LEDGER_FILENAME).write_text(json.dumps(obj) + "\n")
    result = check_epsilon(tmp_path)
    assert result.status in ("unverifiable", "disagree")
    assert any("ledger line 1" in n and "dp_event" in n for n in result.notes)


# ------------------------------------------------ issue 15 finding 6: independent, one-sided


def _small_run(tmp_path: Path, *overrides: str) -> Path:
    import warnings

    from secure_fl import load_config, run

    plain = Path(__file__).resolve().parents[1] / "plain.toml"
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(load_config(plain, ["rounds=2", "clients.num=5", "model.kind=logreg", *overrides]),
            out_dir=out, progress=False)
    return out


def _edit_summary(root: Path, **changes: Any) -> None:
    doc = json.loads((root / "summary.json").read_text())
    doc.update(changes)
    (root / "summary.json").write_text(json.dumps(doc))


def test_small_under_claim_of_a_discrete_run_fails_naming_the_field(tmp_path: Path) -> None:
    root = _small_run(tmp_path, "protocol=secagg", "dp.mechanism=discrete_gaussian",
                      "dp.noise_multiplier=1.0")
    honest = check_epsilon(root)
    assert honest.status == "agree", honest.mismatches
    s = json.loads((root / "summary.json").read_text())
    _edit_summary(root, epsilon_against_server=s["epsilon_against_server"] * 0.985,
                  epsilon_released_model=s["epsilon_released_model"] * 0.985)
    forged = check_epsilon(root)
    assert forged.status == "disagree"
    where = {m.location for m in forged.mismatches}
    assert "summary.json epsilon_against_server" in where
    assert "summary.json epsilon_released_model" in where


def test_plain_run_claiming_an_epsilon_against_the_server_fails(tmp_path: Path) -> None:
    root = _small_run(tmp_path, "dp.mechanism=gaussian", "dp.noise_multiplier=2.0")
    assert check_epsilon(root).status == "agree"
    _edit_summary(root, epsilon_against_server=3.0)
    forged = check_epsilon(root)
    assert forged.status == "disagree"
    assert any("plain" in m.message for m in forged.mismatches)


@pytest.mark.parametrize("scale,status", [(1.0, "agree"), (0.5, "disagree")])
def test_sampled_discrete_events_are_checked(tmp_path: Path, scale: float, status: str) -> None:
    ev = PoissonSampledEvent(0.2, DiscreteGaussianSumEvent(
        sigma=5.0, num_clients=10, l2_sensitivity=15.0, l1_sensitivity=50.0, dimension=16))
    _write_run(tmp_path, [ev] * 3, [[0, 1]] * 3, claim_scale=scale)
    assert check_epsilon(tmp_path).status == status


def test_reference_shares_no_code_with_the_project_accountants() -> None:
    import audits.epsilon_check as check
    import audits.reference_epsilon as reference

    for module in (check, reference):
        source = Path(module.__file__ or "").read_text()
        assert "privacy.analysis" not in source and "privacy.accountants" not in source
        assert "from privacy import" not in source


def test_a_run_whose_every_aggregation_aborted_released_nothing(tmp_path: Path) -> None:
    """Every aggregation aborted (a three-site pilot losing a site before masking): no sum
    was released, so epsilon 0 is the truth, not an under-claim of an infinite reference
    (the audit used to FAIL such a run with "released a sum without honest noise")."""
    key = generate_server_key()
    save_public_key(key, tmp_path / PUBLIC_KEY_FILENAME)
    writer = LedgerWriter.create(tmp_path / LEDGER_FILENAME, key)
    for version in (1, 2):
        writer.append({
            "version": version, "dp_event": encode_event(NonPrivateEvent()),
            "dp_event_released": encode_event(NonPrivateEvent()), "dp_mechanism": "discrete_gaussian",
            "survivors": [], "cohort": ["site-a", "site-b", "site-c"], "aborted": "round aborted",
            "epsilon_per_client": {}, "epsilon_max": 0.0, "delta": DELTA,
        })
    summary = {"epsilon": 0.0, "epsilon_against_server": 0.0, "epsilon_released_model": 0.0,
               "epsilon_per_client": {}, "delta": DELTA, "ledger_entries": writer.next_index,
               "ledger_head": writer.head}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"version": v, "epsilon": 0.0, "aborted": "round aborted"}) + "\n" for v in (1, 2))
    )
    result = check_epsilon(tmp_path)
    assert result.status == "agree", result.mismatches
    assert result.recomputed_epsilon == 0.0
    # a claim above zero for a run that released nothing is conservative, never flagged
    summary["epsilon"] = 1.0
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert check_epsilon(tmp_path).status == "agree"
