"""Continuous Gaussian mechanisms: the central baseline and per-client shares for CKKS.

Both add ``N(0, sigma^2)`` noise drawn with :meth:`crypto.prg.Csprng.standard_normal`
(Box-Muller on 53-bit CSPRNG uniforms). They are *floating-point* mechanisms: the
attacks of Mironov (CCS 2012) and Jin et al. (IEEE S&P 2022) show that the low-order
bits of a floating-point noisy value can reveal the un-noised value, so these
mechanisms are used only where that is acceptable: the ``plain`` baseline (the server
sees the sum anyway) and the CKKS path, whose approximate arithmetic adds its own
floating-point error (and which has its own decryption-leakage caveat, Li and
Micciancio, Eurocrypt 2021, addressed in :mod:`crypto.ckks`, not here). The
secure-aggregation path uses the exact integer mechanisms of
:mod:`privacy.mechanisms.distributed`.

Gaussian mechanism (Dwork, Roth, "The Algorithmic Foundations of Differential
Privacy", 2014; RDP analysis Mironov, CSF 2017): releasing ``sum_i clip(x_i) +
N(0, (z C)^2 I)`` has noise multiplier ``z`` with respect to the L2 sensitivity ``C``
of zeroing out (or adding / removing) one client's clipped update.

Distributed shares (CKKS). Each client adds ``N(0, (z C)^2 / t)``; any ``s`` survivors
together carry variance ``s (z C)^2 / t``, i.e. effective multiplier ``z sqrt(s / t)``,
which is ``>= z`` when at least ``t`` (the threshold) clients survive. The event
records the noise actually present, never the planned noise; the aggregator passes
``s`` = the shares assumed honest (survivors minus ``threat.max_colluders``) for the
event against the server. Relation: zero-out (the target's share stays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from crypto.prg import Csprng
from privacy.clipping import clip_l2
from privacy.errors import PrivacyError
from privacy.events import GaussianEvent, NonPrivateEvent

__all__ = ["CentralGaussian", "GaussianShare"]

FloatArray = npt.NDArray[np.float64]


def _check_common(clip: float, noise_multiplier: float) -> None:
    if not (math.isfinite(clip) and clip > 0):
        raise PrivacyError(f"clip must be finite and > 0, got {clip}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")


@dataclass(frozen=True)
class CentralGaussian:
    """Central Gaussian mechanism: ``total + N(0, (z C)^2)`` per coordinate.

    >>> from crypto.prg import Csprng
    >>> mech = CentralGaussian(clip=1.0, noise_multiplier=0.0)
    >>> mech.add_noise(np.array([1.0, 2.0]), rng=Csprng(bytes(32))).tolist()
    [1.0, 2.0]
    """

    clip: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        _check_common(self.clip, self.noise_multiplier)

    @property
    def std(self) -> float:
        """The noise standard deviation ``z C`` in the units of the update."""
        return self.noise_multiplier * self.clip

    def add_noise(self, total: npt.ArrayLike, *, rng: Csprng) -> FloatArray:
        """``total + N(0, (z C)^2 I)``; ``total`` is the sum of updates clipped to ``C``."""
        arr = np.asarray(total, dtype=np.float64)
        if self.noise_multiplier == 0:
            return arr.copy()
        return arr + self.std * rng.standard_normal(arr.size).reshape(arr.shape)

    def event(self) -> GaussianEvent | NonPrivateEvent:
        """``GaussianEvent(z)``, or ``NonPrivateEvent`` when ``z = 0``."""
        if self.noise_multiplier == 0:
            return NonPrivateEvent()
        return GaussianEvent(noise_multiplier=self.noise_multiplier)


@dataclass(frozen=True)
class GaussianShare:
    """Per-client Gaussian noise shares, provisioned so ``threshold`` shares carry ``(z C)^2``."""

    clip: float
    noise_multiplier: float
    threshold: int

    def __post_init__(self) -> None:
        _check_common(self.clip, self.noise_multiplier)
        if isinstance(self.threshold, bool) or self.threshold < 1:
            raise PrivacyError(f"threshold must be an int >= 1, got {self.threshold!r}")

    @property
    def local_std(self) -> float:
        """Standard deviation of one share: ``z C / sqrt(t)``."""
        return self.noise_multiplier * self.clip / math.sqrt(self.threshold)

    def client_encode(self, x: npt.ArrayLike, *, rng: Csprng) -> FloatArray:
        """``clip_l2(x, C) + N(0, (z C)^2 / t)``: what a client encrypts under CKKS."""
        clipped, _ = clip_l2(x, max_norm=self.clip)
        if self.noise_multiplier == 0:
            return clipped
        noise = rng.standard_normal(clipped.size).reshape(clipped.shape)
        return clipped + self.local_std * noise

    def effective_noise_multiplier(self, *, num_survivors: int) -> float:
        """``z sqrt(s / t)``: the multiplier of the noise present with ``s`` shares."""
        if num_survivors < 1:
            raise PrivacyError(f"num_survivors must be >= 1, got {num_survivors}")
        return self.noise_multiplier * math.sqrt(num_survivors / self.threshold)

    def event(self, *, num_survivors: int) -> GaussianEvent | NonPrivateEvent:
        """``GaussianEvent(z sqrt(s / t))`` for ``s`` surviving shares (``NonPrivateEvent`` if z=0)."""
        z_eff = self.effective_noise_multiplier(num_survivors=num_survivors)
        if z_eff == 0:
            return NonPrivateEvent()
        return GaussianEvent(noise_multiplier=z_eff)
