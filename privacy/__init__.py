"""Differential privacy for secure-fl: DP events, accountants, budgets, DP-SGD.

One entry point for the Gaussian family::

    >>> from privacy import compute_epsilon
    >>> round(compute_epsilon(mechanism="gaussian", noise_multiplier=1.0,
    ...                       sample_rate=0.01, steps=1000, delta=1e-5), 2)
    2.1

Every aggregation emits a frozen DP event (:mod:`privacy.events`); accountants
(:mod:`privacy.accountants`: ``"rdp"`` for everything including the discrete
mechanisms, ``"prv"`` for the Gaussian family) consume events and refuse what they
cannot account for; :class:`ClientBudgets` keeps user-level epsilon per client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from privacy.accountants import (
    ACCOUNTANTS,
    Accountant,
    PrvAccountant,
    RdpAccountant,
    compute_epsilon,
    create_accountant,
)
from privacy.budget import (
    ClientBudgets,
    Refusal,
    calibrate_noise,
    calibrate_noise_multiplier,
)
from privacy.errors import AccountingError, BudgetExhaustedError, PrivacyError

if TYPE_CHECKING:
    from privacy.dpsgd import PrivateTraining, make_private
from privacy.events import (
    ComposedEvent,
    DiscreteGaussianSumEvent,
    DPEvent,
    GaussianEvent,
    NonPrivateEvent,
    NoOpEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    SkellamSumEvent,
)

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "AccountingError",
    "BudgetExhaustedError",
    "ClientBudgets",
    "ComposedEvent",
    "DPEvent",
    "DiscreteGaussianSumEvent",
    "GaussianEvent",
    "NoOpEvent",
    "NonPrivateEvent",
    "PoissonSampledEvent",
    "PrivacyError",
    "PrivateTraining",
    "PrvAccountant",
    "RdpAccountant",
    "Refusal",
    "SelfComposedEvent",
    "SkellamSumEvent",
    "calibrate_noise",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "create_accountant",
    "make_private",
]


def __getattr__(name: str) -> Any:
    # DP-SGD pulls in Opacus's training stack; import it only when asked for (PEP 562).
    if name in ("PrivateTraining", "make_private"):
        from privacy import dpsgd

        return getattr(dpsgd, name)
    raise AttributeError(f"module 'privacy' has no attribute {name!r}")
