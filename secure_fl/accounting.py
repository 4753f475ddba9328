"""Privacy accounting of a run: per-client budgets, both epsilons, target calibration.

Two honest epsilons are reported (DESIGN.md section 4):

* **against the server** (user level): the server knows who took part, so there is no
  amplification by sampling; each client composes the DP events of exactly the
  aggregations its input entered (``privacy.ClientBudgets``); the run reports the
  maximum over clients and each client's own figure.
* **for the released model**: amplification by sampling with rate
  ``q = clients.per_round / clients.num``, composing ``PoissonSampledEvent(q, event)``
  over all aggregations. This holds only under the *assumption* that cohorts are drawn
  by Poisson sampling the server cannot bias; the summary states it.

Before joining an aggregation a site checks the *planned* event (noise provisioned for
the threshold) against its cap and refuses when it would exceed it; after the
aggregation every survivor is charged the event with the noise actually present.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

from privacy import (
    BudgetExhaustedError,
    ClientBudgets,
    PoissonSampledEvent,
    RdpAccountant,
    calibrate_noise_multiplier,
)
from privacy.events import DPEvent, GaussianEvent, NonPrivateEvent
from secure_fl.aggregation import AggregateOutcome, Aggregator
from secure_fl.config import RunConfig

__all__ = ["RunPrivacy", "calibrate_config"]

ASSUMPTION = (
    "released-model epsilon assumes each aggregation's cohort is a Poisson sample of rate "
    "q = clients.per_round / clients.num that the server cannot bias; the simulator draws "
    "fixed-size cohorts uniformly, which matches q in expectation only"
)


def calibrate_config(config: RunConfig) -> RunConfig:
    """Resolve ``dp.target_epsilon`` into ``dp.noise_multiplier`` for the planned rounds.

    Worst case against the server: a client joins all ``rounds`` aggregations with the
    provisioned noise. Gaussian-family mechanisms calibrate on the continuous Gaussian;
    the discrete mechanisms refine on their own events (see the runner).
    """
    dp = config.dp
    if dp.target_epsilon is None or dp.mechanism == "none":
        return config
    z = calibrate_noise_multiplier(
        target_epsilon=dp.target_epsilon, delta=dp.delta, steps=config.rounds, mechanism="gaussian"
    )
    return config.model_copy(update={"dp": dp.model_copy(update={"noise_multiplier": float(z)})})


class RunPrivacy:
    """Per-client budgets and the released-model accountant of one run."""

    def __init__(self, config: RunConfig, aggregator: Aggregator) -> None:
        dp = config.dp
        self.enabled = dp.mechanism != "none"
        self.delta = dp.delta
        self.aggregator = aggregator
        caps: dict[Hashable, float] = {int(k): float(v) for k, v in dp.site_caps.items()}
        self.budgets = ClientBudgets(
            delta=dp.delta,
            accountant="rdp",
            default_cap=dp.budget_cap if dp.budget_cap else math.inf,
            caps=caps,
        )
        self.sample_rate = config.cohort_size / config.clients.num
        self.released = RdpAccountant()
        self.warnings: list[str] = []
        self.refusals = 0
        #: Record-level (example-level) accountants, one per site: DP-SGD inside clients.
        self.record_level = dp.record_level
        self.record_accountants: dict[int, RdpAccountant] = {}

    def admit(self, clients: Sequence[int], *, version: int) -> tuple[list[int], dict[int, str]]:
        """Clients whose cap allows the planned event; refusals with their reason."""
        if not self.enabled:
            return list(clients), {}
        planned = self.aggregator.planned_event()
        admitted, refused = [], {}
        for c in clients:
            if self.budgets.would_exceed(c, planned):
                after = self.budgets.epsilon_after(c, planned)
                self.refusals += 1
                refused[c] = f"budget cap {self.budgets.cap(c):.4g} would be exceeded (epsilon -> {after:.4g})"
            else:
                admitted.append(c)
        return admitted, refused

    def record(self, outcome: AggregateOutcome, *, version: int) -> float | None:
        """Charge every survivor the event actually present; return the running epsilon."""
        if not self.enabled:
            return None
        if outcome.mean is None:
            return self.epsilon()
        event: DPEvent = outcome.dp_event
        planned = self.aggregator.planned_event()
        if _weaker(event, planned):
            msg = (
                f"aggregation {version}: fewer clients survived than the noise was provisioned for; "
                f"noise present {_describe(event)} < planned {_describe(planned)}, epsilon rises accordingly"
            )
            self.warnings.append(msg)
            warnings.warn(msg, stacklevel=2)
        for c in outcome.survivors:
            try:  # the noise is already in the sum: charge it, even past a cap
                self.budgets.charge(c, event)
            except BudgetExhaustedError as err:
                self.warnings.append(f"aggregation {version}: {err}")
        self.released.compose(PoissonSampledEvent(sample_rate=self.sample_rate, event=event))
        return self.epsilon()

    def record_training(self, client: int, event: DPEvent) -> None:
        """Compose the DP-SGD event of one local training into the site's record-level
        accountant (the site's own records; independent of the client-level budget)."""
        self.record_accountants.setdefault(client, RdpAccountant()).compose(event)

    def record_epsilons(self) -> dict[str, float]:
        return {str(c): acc.epsilon(self.delta) for c, acc in sorted(self.record_accountants.items())}

    def epsilon(self) -> float:
        """Maximum user-level epsilon against the server over all clients so far."""
        eps = self.budgets.max_epsilon() if self.budgets.clients else 0.0
        return float(eps)

    def summary(self) -> dict[str, Any]:
        out = self._client_summary()
        if self.record_level:
            per_site = self.record_epsilons()
            out["epsilon_record_level_per_site"] = per_site
            out["epsilon_record_level_max"] = max(per_site.values()) if per_site else 0.0
            out["unit_of_privacy_record_level"] = "record (one training example of a site, via DP-SGD)"
        return out

    def _client_summary(self) -> dict[str, Any]:
        if not self.enabled:
            return {
                "epsilon": None,
                "delta": None,
                "accountant": None,
                "unit_of_privacy": None,
                "privacy_note": "no differential privacy: epsilon is undefined (infinite)",
            }
        released = self.released.epsilon(self.delta)
        return {
            "epsilon": self.epsilon(),
            "epsilon_against_server": self.epsilon(),
            "epsilon_released_model": released,
            "epsilon_per_client": {str(c): self.budgets.epsilon(c) for c in self.budgets.clients},
            "delta": self.delta,
            "accountant": "rdp",
            "unit_of_privacy": "client (user-level: one client's whole update per aggregation)",
            "released_model_assumption": ASSUMPTION,
            "budget_refusals": self.refusals,
            "privacy_warnings": self.warnings,
        }


def _strength(event: DPEvent) -> float:
    """A monotone proxy for noise strength, used only to decide whether to warn."""
    if isinstance(event, GaussianEvent):
        return event.noise_multiplier
    for name in ("sigma", "mu"):
        if hasattr(event, name):
            return float(getattr(event, name)) * float(getattr(event, "num_clients", 1))
    if isinstance(event, NonPrivateEvent):
        return 0.0
    return math.inf


def _weaker(event: DPEvent, planned: DPEvent) -> bool:
    return _strength(event) < _strength(planned) * (1 - 1e-9)


def _describe(event: DPEvent) -> str:
    return type(event).__name__ + "(" + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in vars(event).items()) + ")"
