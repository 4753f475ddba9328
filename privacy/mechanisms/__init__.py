"""Differential-privacy mechanisms: continuous Gaussian and exact distributed integer noise.

* :class:`CentralGaussian` -- central baseline (``plain`` protocol).
* :class:`GaussianShare` -- per-client continuous shares for the CKKS path.
* :class:`DistributedDiscreteGaussian` / :class:`DistributedSkellam` -- the SecAgg path:
  rotation, scaling, conditional rounding, exact integer noise shares, modular clipping.

Every mechanism reports the DP event of a release (``event(...)``) with the noise
actually present, for the accountants in :mod:`privacy.accountants`.
"""

from __future__ import annotations

from privacy.mechanisms.distributed import (
    DistributedDiscreteGaussian,
    DistributedSkellam,
    conditional_round,
    rounded_norm_bound_sq,
)
from privacy.mechanisms.gaussian import CentralGaussian, GaussianShare

__all__ = [
    "CentralGaussian",
    "DistributedDiscreteGaussian",
    "DistributedSkellam",
    "GaussianShare",
    "conditional_round",
    "rounded_norm_bound_sq",
]
