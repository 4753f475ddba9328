"""Frozen descriptions of differentially private releases (after Google's dp_accounting).

Every aggregation emits one event describing *exactly* the mechanism that ran, with the
noise actually present (after dropouts), never the planned noise. Accountants first
check that they support the whole event, then update their state; otherwise they raise
:class:`privacy.errors.AccountingError` naming the unsupported part.

All sensitivities and noise scales are in the units in which the noise was added:
for the continuous Gaussian, ``noise_multiplier = sigma / l2_sensitivity``; for the
integer-domain mechanisms, the sensitivities are those of the scaled, rotated and
rounded integer vector (the "inflated" bound of Kairouz et al. 2021, Thm. 2), and
``sigma`` / ``mu`` are per-client noise parameters in that integer domain.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ComposedEvent",
    "DPEvent",
    "DiscreteGaussianSumEvent",
    "GaussianEvent",
    "NoOpEvent",
    "NonPrivateEvent",
    "PoissonSampledEvent",
    "SelfComposedEvent",
    "SkellamSumEvent",
]


@dataclass(frozen=True)
class NoOpEvent:
    """A release that reveals nothing about the protected unit (epsilon 0)."""


@dataclass(frozen=True)
class NonPrivateEvent:
    """A release with no differential privacy (epsilon infinite)."""


@dataclass(frozen=True)
class GaussianEvent:
    """The Gaussian mechanism: noise N(0, (noise_multiplier * Delta_2)^2) per coordinate."""

    noise_multiplier: float


@dataclass(frozen=True)
class DiscreteGaussianSumEvent:
    """Sum of ``num_clients`` independent discrete Gaussian shares N_Z(0, sigma^2).

    Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
    Learning with Secure Aggregation", ICML 2021. ``l1_sensitivity`` and
    ``l2_sensitivity`` bound the change of the integer sum when one client's vector is
    replaced by zero while its noise share stays (the zero-out relation of
    :mod:`privacy.relations`; ``num_clients`` counts the shares assumed present).

    ``dimension`` is the number of coordinates d of the summed vector. The privacy
    bound of the sum of discrete Gaussians (their Theorem 1 / Proposition 14) grows
    with d, so accountants refuse an event whose dimension is unknown (``None``).
    """

    sigma: float
    num_clients: int
    l2_sensitivity: float
    l1_sensitivity: float
    dimension: int | None = None


@dataclass(frozen=True)
class SkellamSumEvent:
    """Sum of ``num_clients`` independent symmetric Skellam shares Sk(mu/2, mu/2).

    Each share has variance ``mu``; their sum is Sk(n mu / 2, n mu / 2). Agarwal, Kairouz,
    Liu, "The Skellam Mechanism for Differentially Private Federated Learning",
    NeurIPS 2021.
    """

    mu: float
    num_clients: int
    l2_sensitivity: float
    l1_sensitivity: float


@dataclass(frozen=True)
class PoissonSampledEvent:
    """``event`` applied to a Poisson sample that includes each unit w.p. ``sample_rate``."""

    sample_rate: float
    event: DPEvent


@dataclass(frozen=True)
class SelfComposedEvent:
    """``event`` composed with itself ``count`` times."""

    event: DPEvent
    count: int


@dataclass(frozen=True)
class ComposedEvent:
    """Sequential composition of ``events``."""

    events: tuple[DPEvent, ...]


DPEvent = (
    NoOpEvent
    | NonPrivateEvent
    | GaussianEvent
    | DiscreteGaussianSumEvent
    | SkellamSumEvent
    | PoissonSampledEvent
    | SelfComposedEvent
    | ComposedEvent
)
