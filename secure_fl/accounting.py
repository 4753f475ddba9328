"""Privacy accounting of a run: per-client budgets, every reported epsilon, the last line.

What each reported figure means (docs/threat-model.md; docs/choosing-epsilon.md):

* **Unit**: client level, one client's whole (clipped) update to one aggregation; with
  ``dp.record_level`` also record level, one training example of a site (Opacus
  DP-SGD inside the client, add/remove one example, Poisson-sampled batches).
* **Neighbouring relation** of the client-level figures: ``"zero-out"``
  (:mod:`privacy.relations`): the target's update is replaced by zero while its noise
  share stays. ``epsilon_against_server_replace_one`` states the same run for the
  replace-one relation (every sensitivity doubled).
* **Against the server** (``epsilon_against_server``): the server knows who took part,
  so there is no amplification by sampling. Up to ``c = threat.max_colluders`` cohort
  members collude with it and subtract their noise shares; each client composes the
  events of exactly the aggregations its update entered, counting only the
  ``survivors - c`` shares assumed honest (``privacy.ClientBudgets``); the run reports
  the maximum over clients. ``protocol = "plain"``: the server sees every update in the
  clear, so there is **no** guarantee against it (``null``, with the reason).
* **Released model** (``epsilon_released_model``): the adversary sees the models only,
  not who took part, and colludes with no client, so every surviving share counts.
  - central noise (``plain`` + ``gaussian``) with ``clients.sampling = "poisson"``:
    amplification by Poisson sampling at rate ``q = per_round / num``, the sampled
    Gaussian of Mironov, Talwar, Zhang (arXiv:1908.10530, 2019) composed over the
    aggregations. Under zero-out with central noise the non-sampled output equals the
    zeroed one, which is exactly that analysis' pair ``((1-q) P + q P_x, P)``.
  - clients' own noise shares (secagg, ckks), or fixed-size cohorts: no amplification
    is claimed. With own shares the noise depends on who was sampled, which the
    amplification theorems (Balle, Barthe, Gaboardi, NeurIPS 2018; Zhu, Wang, ICML
    2019) do not cover; for fixed-size cohorts we do not use the Wang, Balle,
    Kasiviswanathan (AISTATS 2019) bound. The figure composes, per client, the events
    of the aggregations its update entered with every share present (sound for any
    cohort choice independent of the clients' data), maximum over clients.
  - asynchronous buffers (the first K clients to finish, biased toward fast devices):
    ``null``; no sampling analysis applies.

Before joining an aggregation a site checks the event planned for *this* aggregation
(noise provisioned for the honest shares, the clip now in force) against its cap and
refuses when it would exceed it; after the aggregation every survivor is charged the
event with the noise actually present.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from privacy import (
    BudgetExhaustedError,
    ClientBudgets,
    PoissonSampledEvent,
    RdpAccountant,
    calibrate_noise_multiplier,
)
from privacy.events import DPEvent, GaussianEvent, NonPrivateEvent
from privacy.relations import REPLACE_ONE, ZERO_OUT, replace_one_event
from secure_fl.aggregation import AggregateOutcome, Aggregator
from secure_fl.config import RunConfig
from secure_fl.sampling import cohort_sampling

__all__ = [
    "RECORD_LEVEL_UNIT",
    "RunPrivacy",
    "calibrate_config",
    "final_line",
    "unnoised_statistics_allowed",
]

CLIENT_LEVEL_UNIT = "client (user-level: one client's whole update per aggregation)"
RECORD_LEVEL_UNIT = "record (one training example of a site, via DP-SGD)"
RECORD_LEVEL_RELATION = "add/remove one training example (Poisson-sampled DP-SGD batches)"

PLAIN_REASON = (
    "protocol = 'plain': the server receives every client update in the clear, so no "
    "differential-privacy guarantee holds against it (any noise is added after it saw them)"
)
NO_DP_REASON = "dp.mechanism = 'none': no client-level noise, epsilon is undefined (infinite)"
ASYNC_REASON = (
    "asynchronous buffers are the first K clients to finish (biased toward fast devices), "
    "not a random sample: no sampling analysis covers them, so no released-model figure is given"
)


def calibrate_config(config: RunConfig) -> RunConfig:
    """Resolve ``dp.target_epsilon`` into ``dp.noise_multiplier`` for the planned rounds.

    Worst case against the server: a client joins all :attr:`RunConfig.aggregations`
    aggregations (in async mode a fast client can be in every buffer) with the
    noise provisioned for the honest shares (``threat.max_colluders`` taken out by the
    aggregators, which size each share for the honest ones). Gaussian-family mechanisms
    calibrate on the continuous Gaussian.
    """
    dp = config.dp
    if dp.target_epsilon is None or dp.mechanism == "none":
        return config
    z = calibrate_noise_multiplier(
        target_epsilon=dp.target_epsilon, delta=dp.delta, steps=config.aggregations, mechanism="gaussian"
    )
    return config.model_copy(update={"dp": dp.model_copy(update={"noise_multiplier": float(z)})})


def dp_enabled(config: RunConfig) -> bool:
    """Whether the run adds any DP noise: client-level (``dp.mechanism``) or record-level
    DP-SGD inside the sites (``dp.record_level``)."""
    return config.dp.mechanism != "none" or config.dp.record_level


def unnoised_statistics_allowed(config: RunConfig) -> bool:
    """Whether data-dependent statistics without noise (the memory-budget probe's
    validation accuracies, ``personalized_accuracy``) may reach the server.

    Always in a run without DP (there is no guarantee to break); under DP only when
    the user opts in with ``dp.allow_unnoised_site_metrics`` (then listed as hazards).
    """
    return not dp_enabled(config) or config.dp.allow_unnoised_site_metrics


def _new_budgets(config: RunConfig, *, capped: bool) -> ClientBudgets:
    dp = config.dp
    caps: dict[Hashable, float] = {int(k): float(v) for k, v in dp.site_caps.items()} if capped else {}
    return ClientBudgets(
        delta=dp.delta,
        accountant="rdp",
        default_cap=dp.budget_cap if (capped and dp.budget_cap) else math.inf,
        caps=caps,
    )


class RunPrivacy:
    """Per-client budgets (against the server, replace-one, released model) of one run."""

    def __init__(self, config: RunConfig, aggregator: Aggregator) -> None:
        dp = config.dp
        self.config = config
        self.enabled = dp.mechanism != "none"
        self.delta = dp.delta
        self.aggregator = aggregator
        self.protocol = config.protocol
        self.colluders = config.threat.max_colluders
        self.sampling = cohort_sampling(config)
        #: Against the server: no guarantee for plain (it sees every update).
        self.server_guarantee = self.enabled and self.protocol != "plain"
        # Site caps bound the figure that holds: against the server, or for plain runs
        # the released-model composition (the only guarantee a plain run has).
        self.budgets = _new_budgets(config, capped=self.server_guarantee)
        self.replace_one = _new_budgets(config, capped=False)
        self.released_budgets = _new_budgets(config, capped=not self.server_guarantee)
        self.sample_rate = config.cohort_size / config.clients.num
        #: Amplified released-model accountant (central noise with Poisson cohorts only).
        self.amplified = self.protocol == "plain" and self.sampling == "poisson"
        self.released = RdpAccountant()
        self.warnings: list[str] = []
        self.hazards: list[str] = []
        self.refusals = 0
        self.shortfall = False
        #: Record-level (example-level) accountants, one per site: DP-SGD inside clients.
        self.record_level = dp.record_level
        self.record_accountants: dict[int, RdpAccountant] = {}

    @property
    def _cap_budgets(self) -> ClientBudgets:
        return self.budgets if self.server_guarantee else self.released_budgets

    def admit(
        self, clients: Sequence[int], *, version: int, planned: DPEvent | None = None
    ) -> tuple[list[int], dict[int, str]]:
        """Clients whose cap allows ``planned``, the event planned for *this*
        aggregation (default: the aggregator's plan at the configured cohort size)."""
        if not self.enabled:
            return list(clients), {}
        event = planned if planned is not None else self.aggregator.planned_event()
        budgets = self._cap_budgets
        admitted, refused = [], {}
        for c in clients:
            if budgets.would_exceed(c, event):
                after = budgets.epsilon_after(c, event)
                self.refusals += 1
                refused[c] = f"budget cap {budgets.cap(c):.4g} would be exceeded (epsilon -> {after:.4g})"
            else:
                admitted.append(c)
        return admitted, refused

    def record(
        self, outcome: AggregateOutcome, *, version: int, planned: DPEvent | None = None
    ) -> float | None:
        """Charge every survivor the events actually present; return the running
        epsilon against the server (``None`` where no guarantee holds against it)."""
        if not self.enabled:
            return None
        if outcome.mean is None:
            return self.epsilon()
        event: DPEvent = outcome.dp_event
        released: DPEvent = outcome.dp_event_released or event
        plan = planned if planned is not None else self.aggregator.planned_event()
        if self.server_guarantee and _weaker(event, plan):
            self.shortfall = True
            msg = (
                f"aggregation {version}: fewer clients survived than the noise was provisioned for "
                f"({len(outcome.survivors)} survivors, {self.colluders} assumed colluding); noise "
                f"present {_describe(event)} < planned {_describe(plan)}, epsilon rises accordingly"
            )
            self.warnings.append(msg)
            warnings.warn(msg, stacklevel=2)
        for c in outcome.survivors:
            for budgets, ev in (
                (self.budgets, event),
                (self.replace_one, replace_one_event(event)),
                (self.released_budgets, released),
            ):
                try:  # the noise is already in the sum: charge it, even past a cap
                    budgets.charge(c, ev)
                except BudgetExhaustedError as err:
                    if budgets is self._cap_budgets:
                        self.warnings.append(f"aggregation {version}: {err}")
        if self.amplified:
            self.released.compose(PoissonSampledEvent(sample_rate=self.sample_rate, event=released))
        return self.epsilon()

    def record_training(self, client: int, event: DPEvent) -> None:
        """Compose the DP-SGD event of one local training into the site's record-level
        accountant (the site's own records; independent of the client-level budget)."""
        self.record_accountants.setdefault(client, RdpAccountant()).compose(event)

    def record_epsilons(self) -> dict[str, float]:
        return {str(c): acc.epsilon(self.delta) for c, acc in sorted(self.record_accountants.items())}

    def epsilon(self) -> float | None:
        """Maximum client-level epsilon against the server so far (``None``: no guarantee)."""
        if not self.server_guarantee:
            return None
        return float(self.budgets.max_epsilon()) if self.budgets.clients else 0.0

    def epsilon_per_client(self) -> dict[str, float]:
        """Each client's figure against the server (empty where none holds)."""
        if not self.server_guarantee:
            return {}
        return {str(c): self.budgets.epsilon(c) for c in self.budgets.clients}

    def add_hazard(self, text: str) -> None:
        """A release outside the accounting (listed in the summary and the audit)."""
        if text not in self.hazards:
            self.hazards.append(text)

    # -- summary -------------------------------------------------------------------------
    def released_model(self) -> tuple[float | None, str]:
        """(released-model epsilon or ``None``, its analysis or the reason for ``None``)."""
        if not self.enabled:
            return None, NO_DP_REASON
        if self.sampling == "async-buffer":
            return None, ASYNC_REASON
        if self.amplified:
            return self.released.epsilon(self.delta), (
                f"central Gaussian noise with Poisson cohorts of rate q = {self.sample_rate:.4g} "
                "(CSPRNG draw): amplification by sampling, sampled Gaussian RDP of Mironov, Talwar, "
                "Zhang 2019, composed over the aggregations; zero-out relation"
            )
        eps = self.released_budgets.max_epsilon() if self.released_budgets.clients else 0.0
        why = (
            "clients add their own noise shares, so the noise depends on who was sampled"
            if self.protocol != "plain"
            else "fixed-size cohorts"
        )
        return float(eps), (
            f"no amplification by sampling is claimed ({why}); each client composes the "
            "aggregations its update entered with every noise share present (an observer of "
            "the models colludes with no client); maximum over clients; zero-out relation"
        )

    def summary(self) -> dict[str, Any]:
        out = self._client_summary()
        units = [CLIENT_LEVEL_UNIT] if self.enabled else []
        if self.record_level:
            per_site = self.record_epsilons()
            out["epsilon_record_level_per_site"] = per_site
            out["epsilon_record_level_max"] = max(per_site.values()) if per_site else 0.0
            out["unit_of_privacy_record_level"] = RECORD_LEVEL_UNIT
            out["neighbouring_relation_record_level"] = RECORD_LEVEL_RELATION
            out["epsilon_record_level_note"] = (
                "record-level DP-SGD noise is inside each client's update, so it holds against "
                "the server and for the released model alike, for every protocol"
            )
            units.append(RECORD_LEVEL_UNIT)
            if not self.enabled:
                out["unit_of_privacy"] = RECORD_LEVEL_UNIT
                out["delta"] = self.delta
                out["accountant"] = "rdp"
                out["privacy_note"] = (
                    "record-level differential privacy only (DP-SGD inside each client): "
                    "no client-level guarantee (dp.mechanism = 'none')"
                )
        out["units_of_privacy"] = units
        out["hazards"] = list(self.hazards)
        return out

    def _client_summary(self) -> dict[str, Any]:
        c = self.colluders
        common: dict[str, Any] = {
            "neighbouring_relation": ZERO_OUT if self.enabled else None,
            "colluding_clients_assumed": c,
            "cohort_sampling": self.sampling,
        }
        if not self.enabled:
            return {
                **common,
                "epsilon": None,
                "epsilon_against_server": None,
                "epsilon_against_server_reason": NO_DP_REASON
                + ("; " + PLAIN_REASON if self.protocol == "plain" else ""),
                "epsilon_against_server_replace_one": None,
                "epsilon_against_server_replace_one_reason": NO_DP_REASON,
                "epsilon_released_model": None,
                "epsilon_released_model_reason": NO_DP_REASON,
                "delta": None,
                "accountant": None,
                "unit_of_privacy": None,
                "privacy_note": "no differential privacy: epsilon is undefined (infinite)"
                + (" and the server sees every update in the clear" if self.protocol == "plain" else ""),
            }
        released, analysis = self.released_model()
        out: dict[str, Any] = {**common}
        if self.server_guarantee:
            eps = self.epsilon()
            out.update(
                {
                    "epsilon": eps,
                    "epsilon_against_server": eps,
                    "epsilon_against_server_relation": (
                        f"{ZERO_OUT}; the server and up to {c} colluding cohort member(s) "
                        "(their noise shares subtracted); no amplification by sampling"
                    ),
                    "epsilon_against_server_replace_one": float(self.replace_one.max_epsilon())
                    if self.replace_one.clients
                    else 0.0,
                    "epsilon_against_server_replace_one_relation": REPLACE_ONE,
                    "epsilon_per_client": self.epsilon_per_client(),
                }
            )
        else:
            out.update(
                {
                    "epsilon": None,
                    "epsilon_against_server": None,
                    "epsilon_against_server_reason": PLAIN_REASON,
                    "epsilon_against_server_replace_one": None,
                    "epsilon_against_server_replace_one_reason": PLAIN_REASON,
                    "epsilon_per_client": {},
                }
            )
        out["epsilon_released_model"] = released
        out["epsilon_released_model_" + ("analysis" if released is not None else "reason")] = analysis
        if released is not None:
            out["epsilon_released_model_per_client"] = (
                {str(k): self.released_budgets.epsilon(k) for k in self.released_budgets.clients}
                if not self.amplified
                else {}
            )
        target = self.config.dp.target_epsilon
        eps_now = out["epsilon"]
        exceeded = target is not None and eps_now is not None and eps_now > target * (1 + 1e-9)
        out.update(
            {
                "target_epsilon": target,
                "epsilon_exceeds_target": exceeded,
                "delta": self.delta,
                "accountant": "rdp",
                "unit_of_privacy": CLIENT_LEVEL_UNIT,
                "budget_refusals": self.refusals,
                "privacy_warnings": self.warnings,
            }
        )
        if exceeded:
            out["epsilon_exceeds_target_reason"] = (
                "fewer clients survived than the noise was provisioned for"
                if self.shortfall
                else "the configured noise does not reach the target"
            )
        return out


def _fmt(x: float | None) -> str:
    if x is None:
        return "none"
    if isinstance(x, float) and math.isinf(x):
        return "infinite"
    return f"{x:.3g}"


def final_line(summary: Mapping[str, Any], out_dir: str | Path | None) -> str:
    """The run's last line (printed by ``secure-fl run``): accuracy, every unit of
    privacy the run has with its relation, adversary and colluders, and plain words when
    there is no protection against the server or the target was exceeded."""
    s = summary
    parts = [f"done: final accuracy {s['final_accuracy']:.4f}, best {s['best_accuracy']:.4f}"]
    privacy: list[str] = []
    delta = s.get("delta")
    if s.get("neighbouring_relation") is not None:  # client-level DP
        c = s.get("colluding_clients_assumed", 0)
        if s.get("epsilon_against_server") is not None:
            privacy.append(
                f"client-level epsilon {_fmt(s['epsilon_against_server'])} against the server "
                f"({s['neighbouring_relation']}, {c} colluding client{'s' if c != 1 else ''} assumed, "
                f"delta={delta:g}; replace-one {_fmt(s.get('epsilon_against_server_replace_one'))})"
            )
        else:
            privacy.append("NO protection against the server (protocol = plain: it sees every update)")
        rel = s.get("epsilon_released_model")
        privacy.append(
            f"released model {_fmt(rel)}"
            + (f" ({s.get('cohort_sampling')} cohorts)" if rel is not None else " (no sound bound for "
               f"{s.get('cohort_sampling')} cohorts)")
        )
        if s.get("epsilon_exceeds_target"):
            privacy.append(
                f"epsilon EXCEEDS the target {s.get('target_epsilon'):g}: "
                f"{s.get('epsilon_exceeds_target_reason', '')}"
            )
    else:
        privacy.append("no client-level DP")
        if s.get("protocol") == "plain":
            privacy.append("NO protection against the server (protocol = plain: it sees every update)")
    if s.get("epsilon_record_level_max") is not None:
        privacy.append(
            f"record-level epsilon {_fmt(s['epsilon_record_level_max'])} (max over sites, "
            f"add/remove one example, delta={s.get('delta') or 0:g})"
        )
    hazards = s.get("hazards") or []
    if hazards:
        privacy.append(f"{len(hazards)} unaccounted release(s), see summary.json hazards")
    parts.append("; ".join(privacy))
    parts.append(
        f"upload/client {s['upload_bytes_per_client_mean']:.0f} B, wall {s['wall_time_s']:.1f}s -> {out_dir}"
    )
    return "; ".join(parts)


def _strength(event: DPEvent) -> float:
    """A monotone proxy for noise strength, used only to decide whether to warn."""
    if isinstance(event, GaussianEvent):
        return event.noise_multiplier
    for name in ("sigma", "mu"):
        if hasattr(event, name):
            value = float(getattr(event, name))
            return (value if name == "mu" else value**2) * float(getattr(event, "num_clients", 1))
    if isinstance(event, NonPrivateEvent):
        return 0.0
    return math.inf


def _weaker(event: DPEvent, planned: DPEvent) -> bool:
    return _strength(event) < _strength(planned) * (1 - 1e-9)


def _describe(event: DPEvent) -> str:
    return type(event).__name__ + "(" + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in vars(event).items()) + ")"
