"""L2 clipping of client updates, fixed and adaptive (quantile-tracking).

Clipping bounds every client's contribution to the aggregate, which is what gives the
noise added later a meaning: the Gaussian mechanism with noise ``N(0, (z C)^2)`` per
coordinate protects a client only because one client moves the sum by at most ``C``
in L2 norm (user-level DP; McMahan, Ramage, Talwar, Zhang, "Learning Differentially
Private Recurrent Language Models", ICLR 2018).

Adaptive clipping follows Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private
Learning with Adaptive Clipping", NeurIPS 2021. Each round, client ``i`` reports the
centred indicator ``b_i - 1/2`` with ``b_i = [||Delta_i||_2 <= C]``; the server releases

    b_tilde = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2      (m = expected clients)

and moves the clip geometrically toward the target quantile ``gamma``:

    C <- C * exp(-eta_C * (b_tilde - gamma)).

If more than a ``gamma`` fraction of clients is already under ``C`` the clip shrinks,
otherwise it grows; the geometric step makes the rate independent of the scale of the
norms. The centred indicator has sensitivity 1/2, so the count release is a Gaussian
mechanism with noise multiplier ``2 sigma_b``. To keep the *total* privacy cost of a
round equal to that of a Gaussian mechanism with multiplier ``z``, the update's noise
multiplier is reduced to (paper, Sec. 3.1)

    z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2),

because the Renyi divergences of the two Gaussian releases add:
``alpha / (2 z_Delta^2) + alpha / (2 (2 sigma_b)^2) = alpha / (2 z^2)``. In secure-fl
the count travels inside the same noised vector as the update
(:mod:`secure_fl.clip_control`), so the ledger records **one** event per aggregation:
the mechanism with multiplier ``z`` on the joint sensitivity ``C'``, which equals the
composition of :func:`count_event` and ``GaussianEvent(z_Delta)``. The paper's defaults are ``gamma = 0.5``,
``eta_C = 0.2`` and ``sigma_b = m / 20``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from crypto.prg import Csprng
from privacy.errors import PrivacyError
from privacy.events import GaussianEvent

__all__ = [
    "AdaptiveClipState",
    "adaptive_clip_step",
    "clip_indicator",
    "clip_l2",
    "count_event",
    "noised_fraction",
    "update_noise_multiplier",
]

FloatArray = npt.NDArray[np.float64]


def clip_l2(x: npt.ArrayLike, *, max_norm: float) -> tuple[FloatArray, float]:
    """``(x * min(1, C / ||x||_2), ||x||_2)``: project ``x`` onto the L2 ball of radius ``C``.

    The returned vector's norm is guaranteed ``<= max_norm`` in floating point (the scale
    factor is nudged down by one ulp if rounding pushed the norm above the bound).
    Non-finite input raises :class:`PrivacyError`: a NaN would otherwise pass through
    clipping and destroy the sensitivity bound.
    """
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise PrivacyError(f"max_norm must be finite and > 0, got {max_norm}")
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise PrivacyError("cannot clip a vector with NaN or infinite entries")
    norm = float(np.linalg.norm(arr.ravel()))
    if norm <= max_norm:
        return arr.copy(), norm
    factor = max_norm / norm
    out = arr * factor
    while float(np.linalg.norm(out.ravel())) > max_norm:
        factor = math.nextafter(factor, 0.0)
        out = arr * factor
    return out, norm


def clip_indicator(norm: float, *, clip: float) -> float:
    """The centred indicator ``[norm <= clip] - 1/2`` a client contributes (sensitivity 1/2)."""
    return 0.5 if norm <= clip else -0.5


@dataclass(frozen=True)
class AdaptiveClipState:
    """State of quantile-tracking adaptive clipping (Andrew et al. 2021).

    ``clip`` is the current ``C``; ``target_quantile`` is ``gamma`` in (0, 1);
    ``learning_rate`` is ``eta_C``; ``count_noise_std`` is ``sigma_b`` (0 disables the
    noise and the privacy of the count); ``expected_clients`` is ``m``.
    """

    clip: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float = 0.0
    expected_clients: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise PrivacyError(f"clip must be finite and > 0, got {self.clip}")
        if not 0.0 < self.target_quantile < 1.0:
            raise PrivacyError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise PrivacyError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not (math.isfinite(self.count_noise_std) and self.count_noise_std >= 0):
            raise PrivacyError(f"count_noise_std must be >= 0, got {self.count_noise_std}")
        if self.expected_clients < 1:
            raise PrivacyError(f"expected_clients must be >= 1, got {self.expected_clients}")


def noised_fraction(indicator_sum: float, *, state: AdaptiveClipState, rng: Csprng) -> float:
    """``b_tilde = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2`` (central noise).

    ``indicator_sum`` is the sum of :func:`clip_indicator` values (for example recovered
    from secure aggregation). Under distributed noise, add the noise client-side instead
    and call :func:`adaptive_clip_step` with the resulting fraction directly.
    """
    noise = 0.0
    if state.count_noise_std > 0:
        noise = float(rng.standard_normal(1)[0]) * state.count_noise_std
    return (indicator_sum + noise) / state.expected_clients + 0.5


def adaptive_clip_step(state: AdaptiveClipState, *, fraction: float) -> AdaptiveClipState:
    """``C <- C exp(-eta_C (b_tilde - gamma))`` with ``b_tilde = fraction`` (pure)."""
    if not math.isfinite(fraction):
        raise PrivacyError(f"fraction must be finite, got {fraction}")
    new_clip = state.clip * math.exp(-state.learning_rate * (fraction - state.target_quantile))
    return replace(state, clip=new_clip)


def update_noise_multiplier(noise_multiplier: float, *, count_noise_std: float) -> float:
    """``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``: the update's share of the budget.

    Raises :class:`PrivacyError` when ``2 sigma_b <= z`` (the count alone would spend
    the whole budget). With ``sigma_b = 0`` (non-private count) returns ``z`` unchanged;
    the count is then reported as non-private by :func:`count_event`'s caller.
    """
    z = noise_multiplier
    if not (math.isfinite(z) and z > 0):
        raise PrivacyError(f"noise_multiplier must be > 0, got {z}")
    if count_noise_std == 0:
        return z
    two_sb = 2.0 * count_noise_std
    if two_sb <= z:
        raise PrivacyError(
            f"count noise too small: need 2 * sigma_b > z, got 2 * {count_noise_std} <= {z}"
        )
    return float((z**-2 - two_sb**-2) ** -0.5)


def count_event(state: AdaptiveClipState) -> GaussianEvent:
    """The DP event of one count release: ``GaussianEvent(2 sigma_b)`` (sensitivity 1/2)."""
    if state.count_noise_std <= 0:
        raise PrivacyError("the clipped-fraction count has no noise: it is not private")
    return GaussianEvent(noise_multiplier=2.0 * state.count_noise_std)
