"""Issue 15 (privacy claims that say what they mean) and issue 16 section 3 (reports
that describe the run). One test per finding; each failed on the code before the fix."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from crypto.prg import Csprng
from privacy import RdpAccountant, SelfComposedEvent
from privacy.events import DiscreteGaussianSumEvent, NonPrivateEvent
from secure_fl import load_config, run
from secure_fl.aggregation import ClientUpdate

PLAIN = Path(__file__).resolve().parents[1] / "plain.toml"


def _run(*overrides: str, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(load_config(PLAIN, ["train.lr=0.1", *overrides]), write=False, progress=False, **kw)


# -- finding 1: plain has no guarantee against the server -------------------------------
def test_plain_run_reports_no_epsilon_against_the_server() -> None:
    s = _run("dp.mechanism=gaussian", "dp.noise_multiplier=2.0", "rounds=2").summary
    assert s["epsilon_against_server"] is None and s["epsilon"] is None
    assert "plain" in s["epsilon_against_server_reason"]
    assert s["epsilon_against_server_replace_one"] is None
    assert s["epsilon_released_model"] is not None and s["epsilon_released_model"] > 0
    from secure_fl.accounting import final_line

    assert "NO protection against the server" in final_line(s, None)


# -- finding 2: colluders subtract their shares; noise is provisioned for the honest ----
def _secagg(c: int, n: int = 10, dim: int = 20):
    from secure_fl.protocols import SecAggAggregator

    cfg = load_config(PLAIN, ["protocol=secagg", "dp.mechanism=discrete_gaussian",
                              "dp.noise_multiplier=1.0", f"clients.num={n}",
                              f"threat.max_colluders={c}"])
    agg = SecAggAggregator(cfg, dim=dim, rng=Csprng(bytes(32)))
    rng = np.random.default_rng(0)
    ups = [ClientUpdate(i, (0.01 * rng.standard_normal(dim)).astype(np.float32), 1.0) for i in range(n)]
    return agg, ups


@pytest.mark.parametrize("c", [0, 1, 4])
def test_event_counts_only_shares_assumed_honest_and_they_reach_the_target(c: int) -> None:
    agg, ups = _secagg(c)
    out = agg.aggregate(ups, round_index=1)
    ev = out.dp_event
    assert isinstance(ev, DiscreteGaussianSumEvent) and ev.num_clients == 10 - c
    released = out.dp_event_released
    assert isinstance(released, DiscreteGaussianSumEvent) and released.num_clients == 10
    # The honest shares alone carry the planned total variance (z C gamma)^2 for z = 1:
    # effective multiplier sqrt(h sigma^2) / Delta_2 is z up to rounding inflation.
    z_eff = math.sqrt(ev.num_clients * ev.sigma**2) / ev.l2_sensitivity
    assert 0.99 < z_eff <= 1.0 + 1e-6


def test_all_colluders_leave_no_guarantee_against_the_server() -> None:
    # Ten clients, one assumed colluder, one drop: nine survivors, of whose shares only
    # 9 - c = 8 count as honest. (With three sites and c = 1 the SecAgg+ cohort quorum
    # floor((n + c) / 2) + 1 is 3: a drop aborts the round instead of releasing a sum.)
    agg, ups = _secagg(1, n=10)
    dropped = [*ups[:9], ClientUpdate(9, ups[9].delta, 1.0, "advertise")]
    out = agg.aggregate(dropped, round_index=1)
    assert out.mean is not None and len(out.survivors) == 9
    assert isinstance(out.dp_event, DiscreteGaussianSumEvent) and out.dp_event.num_clients == 8
    agg3, ups3 = _secagg(1, n=3)
    aborted = agg3.aggregate([*ups3[:2], ClientUpdate(2, ups3[2].delta, 1.0, "advertise")], round_index=1)
    assert aborted.mean is None and aborted.survivors == ()
    from secure_fl.config import RunConfig
    from secure_fl.errors import ConfigError
    from secure_fl.protocols import check_colluder_provisioning

    # Under SecAgg+ the sizing already refuses c = n at validation; under CKKS the
    # provisioning check refuses a cohort whose shares could all be the colluders'.
    with pytest.raises(ConfigError, match="threat.max_colluders"):
        load_config(PLAIN, ["protocol=secagg", "dp.mechanism=discrete_gaussian",
                            "clients.num=3", "threat.max_colluders=3"])
    cfg = load_config(PLAIN, ["protocol=ckks", "dp.mechanism=gaussian", "dp.noise_multiplier=1.0",
                              "clients.num=3", "threat.max_colluders=3"])
    assert isinstance(cfg, RunConfig)
    with pytest.raises(ConfigError, match="threat.max_colluders"):
        check_colluder_provisioning(cfg)


def test_target_epsilon_holds_with_colluders_and_summary_says_so() -> None:
    s = _run("protocol=secagg", "dp.mechanism=discrete_gaussian", "dp.target_epsilon=6.0",
             "rounds=2", "clients.num=6", "threat.max_colluders=2", "model.kind=logreg").summary
    assert s["colluding_clients_assumed"] == 2
    assert s["epsilon_against_server"] <= 6.0 * 1.02
    assert not s["epsilon_exceeds_target"]
    assert s["epsilon_released_model"] < s["epsilon_against_server"]  # all 6 shares


# -- finding 3: the relation is named; replace-one beside it -----------------------------
def test_summary_names_the_relation_and_reports_replace_one() -> None:
    s = _run("protocol=ckks", "dp.mechanism=gaussian", "dp.noise_multiplier=2.0", "rounds=2",
             "clients.num=5", "dp.clip=5.0").summary
    assert s["neighbouring_relation"] == "zero-out"
    # replace-one doubles the sensitivity: GaussianEvent(z / 2) per aggregation (z = 2 with
    # 5 survivors, 4 honest shares provisioned -> z_eff = 2 sqrt(4/4) = 2)
    acc = RdpAccountant()
    acc.compose(SelfComposedEvent(__import__("privacy").GaussianEvent(1.0), 2))
    assert s["epsilon_against_server_replace_one"] == pytest.approx(acc.epsilon(1e-5), rel=1e-9)
    assert s["epsilon_against_server_replace_one"] > s["epsilon_against_server"]


# -- finding 4: unnoised data-dependent values stay out unless opted in ----------------
def test_unnoised_site_metrics_are_withheld_under_dp_unless_opted_in() -> None:
    base = ["dp.mechanism=gaussian", "dp.noise_multiplier=1.0", "rounds=2",
            "sparsity.kind=memory_budget", "sparsity.density=0.6"]
    off = _run(*base)
    assert all(m["personalized_accuracy"] is None for m in off.metrics)
    assert off.summary["memory_budget"]["probe_clients"] == []
    assert off.summary["hazards"] == []
    on = _run(*base, "dp.allow_unnoised_site_metrics=true")
    assert on.metrics[-1]["personalized_accuracy"] is not None
    assert on.summary["memory_budget"]["probe_clients"]
    hazards = " ".join(on.summary["hazards"])
    assert "memory-budget probe" in hazards and "personalized_accuracy" in hazards


# -- finding 5: sampling as configured, released-model figure for it -------------------
def test_poisson_cohorts_vary_in_size_and_async_has_no_released_figure() -> None:
    res = _run("dp.mechanism=gaussian", "dp.noise_multiplier=2.0", "rounds=12",
               "clients.per_round=5", "clients.sampling=poisson", "model.kind=logreg")
    sizes = {len(m["cohort"]) for m in res.metrics}
    assert len(sizes) > 1 and res.summary["cohort_sampling"] == "poisson"
    a = _run("protocol=secagg", "dp.mechanism=discrete_gaussian", "dp.noise_multiplier=1.0",
             "aggregation.mode=async", "clients.per_round=6", "aggregation.buffer_size=4",
             "rounds=2", "model.kind=logreg").summary
    assert a["cohort_sampling"] == "async-buffer"
    assert a["epsilon_released_model"] is None and "first K" in a["epsilon_released_model_reason"]


def test_poisson_draw_has_the_exact_rate() -> None:
    from secure_fl.sampling import poisson_cohort

    rng = Csprng(bytes(range(32)))
    draws = [len(poisson_cohort(40, 10, rng=rng)) for _ in range(2000)]
    mean = float(np.mean(draws))
    assert abs(mean - 10.0) < 5 * math.sqrt(40 * 0.25 * 0.75 / 2000)


# -- finding 7: admission uses the event planned for THIS aggregation -------------------
def test_planned_event_is_this_aggregations() -> None:
    agg, ups = _secagg(1, n=10, dim=20)
    agg.aggregate(ups, round_index=1)  # a previous aggregation of 10 clients, d = 20
    planned = agg.planned_event(num_clients=6, dim=8)
    out = agg.aggregate([ClientUpdate(u.client_id, u.delta[:8], 1.0) for u in ups[:6]], round_index=2)
    assert planned == out.dp_event


def test_empty_poisson_batch_adds_noise_and_counts_the_step() -> None:
    import torch

    from secure_fl.config import TrainConfig
    from secure_fl.training import train_local_dp

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    y = np.array([0, 1])
    cfg = TrainConfig(local_epochs=20, lr=0.1, batch_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps, event = train_local_dp(model, x, y, cfg, noise_multiplier=1.0, max_grad_norm=1.0,
                                      rng=Csprng(bytes(32)))
    assert steps == 40  # 2 batches per epoch (q = 1/2), empty ones included
    acc = RdpAccountant()
    acc.compose(event)
    assert acc.epsilon(1e-5) > 0


def test_prv_refuses_a_history_whose_grid_would_exhaust_memory() -> None:
    from privacy import AccountingError, GaussianEvent, PrvAccountant

    acc = PrvAccountant()
    acc.compose(SelfComposedEvent(GaussianEvent(0.5), 10**4))
    with pytest.raises(AccountingError, match="rdp"):
        acc.epsilon(1e-5)


# -- issue 16 section 3: every unit, on the last line and in the summary -----------------
def test_record_level_only_run_reports_record_level_everywhere() -> None:
    from secure_fl.accounting import final_line

    s = _run("dp.record_level=true", "protocol=secagg", "data.dataset=breast_cancer",
             "clients.num=4", "model.kind=logreg", "rounds=1").summary
    assert s["epsilon_record_level_max"] > 0
    assert "no differential privacy" not in s["privacy_note"]
    assert s["unit_of_privacy"].startswith("record")
    line = final_line(s, None)
    assert "record-level epsilon" in line and "none (no DP)" not in line


def test_last_line_says_when_fewer_survivors_push_epsilon_past_the_target() -> None:
    from secure_fl.accounting import final_line

    s = _run("protocol=ckks", "dp.mechanism=gaussian", "dp.target_epsilon=4.0", "rounds=3",
             "clients.num=8", "dp.provisioned_survivors=8", "simulation.dropout=0.4",
             "dp.clip=5.0").summary
    assert s["epsilon_against_server"] > 4.0 and s["epsilon_exceeds_target"]
    assert "fewer clients survived" in s["epsilon_exceeds_target_reason"]
    assert "EXCEEDS the target 4" in final_line(s, None)


def test_nonprivate_event_when_no_honest_share_survives() -> None:
    from secure_fl.protocols import CkksAggregator

    cfg = load_config(PLAIN, ["protocol=ckks", "dp.mechanism=gaussian", "dp.noise_multiplier=1.0",
                              "clients.num=3", "threat.max_colluders=2"])
    agg = CkksAggregator(cfg, dim=4, rng=Csprng(bytes(32)))
    ups = [ClientUpdate(0, np.zeros(4, np.float32), 1.0), ClientUpdate(1, np.zeros(4, np.float32), 1.0),
           ClientUpdate(2, np.zeros(4, np.float32), 1.0, "upload")]
    out = agg.aggregate(ups, round_index=1)
    assert out.mean is not None and len(out.survivors) == 2
    assert isinstance(out.dp_event, NonPrivateEvent)  # both survivors may be the colluders


# -- issue 16 section 3: report.html describes the run that happened ---------------------
def test_report_of_a_record_level_run_without_client_dp(tmp_path: Path) -> None:
    import json

    from audits.audit import audit_run

    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(load_config(PLAIN, ["dp.record_level=true", "protocol=secagg", "data.dataset=breast_cancer",
                                "clients.num=4", "model.kind=logreg", "rounds=1"]),
            out_dir=out, progress=False)
    result = audit_run(out, empirical=False)
    doc = json.loads((out / "audit.json").read_text())
    html = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert "record-level" in result.verdict and "no differential privacy" not in result.verdict
    assert "Record-level epsilon" in html
    assert f"{summary['epsilon_record_level_max']:.4g}" in html
    trust = doc["nist"]["Trust model (keys, thresholds, collusion)"]
    assert "discrete Gaussian" not in trust and "No DP noise" in trust
    assert "record" in doc["nist"]["Unit of privacy"]
    assert all(v is not None and "None" not in str(v) for v in doc["parameters"].values())
    assert not any("epsilon is infinite" in h["text"] for h in doc["hazards"])


def test_report_of_a_plain_central_dp_run_says_no_guarantee_against_the_server(tmp_path: Path) -> None:
    import json

    from audits.audit import audit_run

    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(load_config(PLAIN, ["dp.mechanism=gaussian", "dp.noise_multiplier=2.0", "rounds=2",
                                "model.kind=logreg"]), out_dir=out, progress=False)
    result = audit_run(out, empirical=False)
    assert result.ok, result.failures
    doc = json.loads((out / "audit.json").read_text())
    text = doc["nist"]["Epsilon and delta"]
    assert "against the server: none" in text and "released model" in text
    assert "no protection against the server" in result.verdict
