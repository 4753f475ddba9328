"""Rényi differential privacy (RDP) of the Gaussian family and RDP -> (epsilon, delta).

Definitions (Mironov, "Rényi Differential Privacy", CSF 2017). A mechanism M is
(alpha, r)-RDP if ``D_alpha(M(D) || M(D')) <= r`` for all neighbouring D, D', where
``D_alpha(P || Q) = log E_Q[(P/Q)^alpha] / (alpha - 1)``. RDP composes by addition at
every order, which is why an accountant keeps one vector of RDP values over a fixed
grid of orders :data:`DEFAULT_ORDERS`.

Functions here are pure and vectorised over orders:

* :func:`gaussian_rdp` -- the (Poisson-subsampled) Gaussian mechanism, computed with
  Opacus's implementation of Mironov, Talwar, Zhang, "Rényi Differential Privacy of
  the Sampled Gaussian Mechanism" (2019), Section 3.3: for sampling rate ``q`` and
  noise multiplier ``z``,
  ``r(alpha) = log A_alpha / (alpha - 1)`` with
  ``A_alpha = E_{x ~ N(0, z^2)} [((1 - q) + q * exp((2x - 1) / (2 z^2)))^alpha]``,
  and ``r(alpha) = alpha / (2 z^2)`` when ``q = 1``.
* :func:`poisson_subsampled_rdp_upper_bound` -- the general bound of Zhu & Wang,
  "Poisson Subsampled Rényi Differential Privacy", ICML 2019, Theorem 6 (used for
  the discrete mechanisms, whose subsampled RDP has no closed form).
* :func:`rdp_to_epsilon` -- the conversion of Balle, Barthe, Gaboardi, Hsu, Sato,
  "Hypothesis Testing Interpretations and Rényi Differential Privacy", AISTATS 2020,
  Theorem 21 (the conversion Opacus's ``get_privacy_spent`` uses):
  ``eps = r(alpha) + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1)``,
  minimised over the orders. It is never worse than Mironov's classical
  ``r(alpha) + log(1/delta) / (alpha - 1)``.

Neighbouring relation: add/remove one unit (the relation under which Poisson
subsampling amplifies privacy), as in Opacus and dp_accounting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_ORDERS",
    "RdpCurve",
    "gaussian_rdp",
    "poisson_subsampled_rdp_upper_bound",
    "rdp_to_epsilon",
]

RdpCurve = npt.NDArray[np.float64]
"""RDP values (nats) over a grid of orders; ``inf`` where the order gives no bound."""

DEFAULT_ORDERS: tuple[float, ...] = (
    tuple(1.0 + x / 10.0 for x in range(1, 100))
    + tuple(float(a) for a in range(11, 64))
    + (64.0, 80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 1024.0)
)
"""Opacus's default grid (1.1 ... 10.9 in steps of 0.1, then 11 ... 63), extended with
large orders so that very small epsilons (large noise) do not end at the grid's edge."""


def _as_orders(orders: Sequence[float] | npt.NDArray[np.float64]) -> RdpCurve:
    arr = np.asarray(orders, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(arr > 1.0) or not np.all(np.isfinite(arr)):
        raise ValueError("RDP orders must be a non-empty 1-D sequence of finite numbers > 1")
    return arr


def gaussian_rdp(
    *,
    noise_multiplier: float,
    sample_rate: float = 1.0,
    orders: Sequence[float] | npt.NDArray[np.float64] = DEFAULT_ORDERS,
) -> RdpCurve:
    """RDP of one step of the Poisson-subsampled Gaussian mechanism at each order.

    ``noise_multiplier`` is ``z = sigma / Delta_2``; ``sample_rate`` is the probability
    ``q`` with which each unit is included. ``q = 1`` gives the plain Gaussian mechanism,
    ``r(alpha) = alpha / (2 z^2)`` (Mironov 2017, Prop. 7); ``0 < q < 1`` gives the
    numerically exact value of Mironov, Talwar, Zhang (2019) as computed by
    ``opacus.accountants.analysis.rdp``; ``q = 0`` gives 0 and ``z = 0`` gives ``inf``.
    """
    if not 0.0 <= sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
    if not noise_multiplier >= 0.0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    alphas = _as_orders(orders)
    if sample_rate == 0.0:
        return np.zeros_like(alphas)
    if noise_multiplier**2 == 0.0:  # zero (or underflowing) noise: no privacy
        return np.full_like(alphas, np.inf)
    if sample_rate == 1.0:
        return alphas / (2.0 * noise_multiplier**2)
    # Opacus (which imports torch) and scipy load on first use, not with privacy/.
    from opacus.accountants.analysis import rdp as _opacus_rdp

    values = [
        float(
            _opacus_rdp.compute_rdp(
                q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=float(a)
            )
        )
        for a in alphas
    ]
    return np.asarray(values, dtype=np.float64)


def poisson_subsampled_rdp_upper_bound(
    base_rdp: RdpCurve, *, sample_rate: float, order: int
) -> float:
    """Upper bound on the RDP at integer ``order`` of a Poisson-subsampled mechanism.

    Zhu & Wang (ICML 2019), Theorem 6 (general upper bound, add/remove relation): if the
    base mechanism is (l, eps(l))-RDP for every integer ``2 <= l <= alpha``, then the
    mechanism run on a Poisson sample of rate ``gamma`` is (alpha, eps')-RDP with

    ``eps' = 1/(alpha-1) * log( (1-gamma)^(alpha-1) (alpha gamma - gamma + 1)
             + C(alpha,2) gamma^2 (1-gamma)^(alpha-2) e^{eps(2)}
             + 3 sum_{l=3}^{alpha} C(alpha,l) gamma^l (1-gamma)^(alpha-l) e^{(l-1) eps(l)} )``.

    ``base_rdp[l - 2]`` must hold ``eps(l)`` for ``l = 2 .. order``. The caller should
    still take the minimum with the unsampled ``eps(order)``.
    """
    if order < 2 or base_rdp.size < order - 1:
        raise ValueError("need eps(l) for every integer l in [2, order]")
    if not 0.0 < sample_rate < 1.0:
        raise ValueError(f"sample_rate must be in (0, 1), got {sample_rate}")
    from scipy import special

    alpha = order
    log_q = math.log(sample_rate)
    log_1mq = math.log1p(-sample_rate)
    ls = np.arange(2, alpha + 1, dtype=np.float64)
    eps_l = base_rdp[: alpha - 1]
    if not np.all(np.isfinite(eps_l)):
        return math.inf
    log_binom = (
        special.gammaln(alpha + 1) - special.gammaln(ls + 1) - special.gammaln(alpha - ls + 1)
    )
    log_terms = log_binom + ls * log_q + (alpha - ls) * log_1mq + (ls - 1.0) * eps_l
    weights = np.where(ls >= 3, 3.0, 1.0)
    first = (alpha - 1) * log_1mq + math.log(alpha * sample_rate - sample_rate + 1.0)
    all_terms = np.concatenate([[first], log_terms])
    all_weights = np.concatenate([[1.0], weights])
    total = float(special.logsumexp(all_terms, b=all_weights))
    return max(total, 0.0) / (alpha - 1)


def rdp_to_epsilon(
    *,
    orders: Sequence[float] | npt.NDArray[np.float64],
    rdp: Sequence[float] | npt.NDArray[np.float64],
    delta: float,
) -> tuple[float, float]:
    """Smallest epsilon over ``orders`` such that the RDP curve implies (epsilon, delta)-DP.

    Balle et al. (AISTATS 2020), Theorem 21: (alpha, r)-RDP implies (eps, delta)-DP for
    ``eps = r + log((alpha - 1)/alpha) - (log delta + log alpha) / (alpha - 1)``.
    Returns ``(epsilon, best_order)``; ``(inf, nan)`` when no order gives a finite bound
    and ``(0, nan)`` for an all-zero curve.
    Epsilon is clamped at 0 (any mechanism is (0, delta)-DP when the bound goes below).
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    alphas = _as_orders(orders)
    values = np.asarray(rdp, dtype=np.float64)
    if values.shape != alphas.shape:
        raise ValueError("orders and rdp must have the same length")
    if np.any(np.isnan(values)) or np.any(values < 0.0):
        raise ValueError("RDP values must be >= 0 (inf allowed), not NaN")
    if not np.any(values):
        return 0.0, math.nan  # identical output distributions: (0, 0)-DP
    with np.errstate(invalid="ignore"):
        eps = values + np.log1p(-1.0 / alphas) - (math.log(delta) + np.log(alphas)) / (alphas - 1.0)
    if not np.any(np.isfinite(eps)):
        return math.inf, math.nan
    idx = int(np.argmin(eps))
    return max(float(eps[idx]), 0.0), float(alphas[idx])
