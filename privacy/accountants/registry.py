"""Accountants by name, and the one public entry point :func:`compute_epsilon`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from types import MappingProxyType

from privacy.accountants.base import Accountant, check_delta, is_real
from privacy.accountants.prv import PrvAccountant
from privacy.accountants.rdp import RdpAccountant
from privacy.errors import AccountingError
from privacy.events import DPEvent, GaussianEvent, PoissonSampledEvent, SelfComposedEvent

__all__ = ["ACCOUNTANTS", "compute_epsilon", "create_accountant", "gaussian_training_event"]

ACCOUNTANTS: Mapping[str, Callable[[], Accountant]] = MappingProxyType(
    {"rdp": RdpAccountant, "prv": PrvAccountant}
)
"""Registry: name -> factory of a fresh accountant."""


def create_accountant(name: str) -> Accountant:
    """A fresh accountant registered under ``name`` (``"rdp"`` or ``"prv"``)."""
    try:
        factory = ACCOUNTANTS[name]
    except (KeyError, TypeError):
        raise AccountingError(
            f"unknown accountant {name!r}; choose one of {sorted(ACCOUNTANTS)}"
        ) from None
    return factory()


def gaussian_training_event(*, noise_multiplier: float, sample_rate: float, steps: int) -> DPEvent:
    """``steps`` compositions of the Gaussian mechanism on Poisson samples of rate ``q``."""
    if not is_real(noise_multiplier) or noise_multiplier < 0:
        raise AccountingError(f"noise_multiplier must be a number >= 0, got {noise_multiplier!r}")
    if not is_real(sample_rate) or not 0.0 <= sample_rate <= 1.0:
        raise AccountingError(f"sample_rate must be in [0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise AccountingError(f"steps must be an integer >= 0, got {steps!r}")
    step: DPEvent = GaussianEvent(float(noise_multiplier))
    if sample_rate < 1.0:
        step = PoissonSampledEvent(float(sample_rate), step)
    return SelfComposedEvent(step, int(steps))


def compute_epsilon(
    *,
    mechanism: str,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon at ``delta`` of ``steps`` Poisson-subsampled Gaussian releases.

    ``mechanism`` must be ``"gaussian"`` (the discrete mechanisms have no single noise
    multiplier; account for their :class:`~privacy.events.DiscreteGaussianSumEvent` /
    :class:`~privacy.events.SkellamSumEvent` with an accountant). ``noise_multiplier``
    is sigma / l2-sensitivity, ``sample_rate`` the Poisson inclusion probability (1 for
    no sampling), ``accountant`` one of ``"rdp"`` (Mironov et al. 2019 + Balle et al.
    2020 conversion) or ``"prv"`` (Gopi et al. 2021). Returns ``inf`` when
    ``noise_multiplier == 0``.

    >>> round(compute_epsilon(mechanism="gaussian", noise_multiplier=1.0,
    ...                       sample_rate=0.01, steps=1000, delta=1e-5), 2)
    2.1
    """
    if mechanism != "gaussian":
        raise AccountingError(
            f"compute_epsilon supports mechanism 'gaussian' only, got {mechanism!r}; "
            "use an accountant with the mechanism's DP event"
        )
    acc = create_accountant(accountant)
    delta = check_delta(delta)
    acc.compose(
        gaussian_training_event(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
    )
    eps = acc.epsilon(delta)
    return math.inf if math.isinf(eps) else eps
