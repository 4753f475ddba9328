"""Independent reference epsilons for the audit: never the project's own formulas.

The audit checks every claimed epsilon against a *lower* bound of what any
Rényi-DP-based accountant could honestly claim for the events in the ledger, computed
along code paths that share nothing with :mod:`privacy`:

* **Gaussian family, unsampled** (``GaussianEvent``): Google's ``dp_accounting``
  (0.6.0) RDP accountant, on a grid of orders finer than the project's
  (:data:`REFERENCE_ORDERS`), converted with its own (Canonne-Kamath-Steinke 2020)
  rule; a finer grid can only give a smaller figure, so an honest claim is never below.
* **Gaussian family, Poisson-sampled**: ``dp_accounting``'s privacy-loss-distribution
  accountant with the *optimistic* estimate (Koskela et al. 2020; Doroshenko et al.
  2022 connect-the-dots), a lower bound of the tight epsilon, which is itself below
  every RDP figure.
* **Sums of discrete noise shares** (``DiscreteGaussianSumEvent``, ``SkellamSumEvent``):
  Rényi divergences computed numerically from the exact pmfs at a concrete, achievable
  worst case, a one-coordinate integer shift ``k = floor(l2_sensitivity)`` (the
  mechanism admits the rounded vector ``(k, 0, ..., 0)`` and its zero-out neighbour
  ``0``; replace-one: ``2 k``). Truncating a sum of positive terms only lowers it, so
  every number here is a lower bound of the true divergence at that order.

  - Sum of ``n`` discrete Gaussians ``N_Z(0, sigma^2)``: the pmf is exactly
    ``P(x) = exp(-x^2 / (2 S) + u(x mod n)) / Z`` with ``S = n sigma^2``, where
    ``exp(u(r))`` is the theta series of the coset ``{v in Z^n : sum v = r}`` of the
    root lattice (it depends on ``x`` only through ``x mod n``). For integer orders
    ``a`` and shifts ``k``, completing the square gives
    ``D_a = [a (a-1) k^2 / (2 S) + log sum_r e^{a u(r-k) + (1-a) u(r)} G(r - a k)
    - log sum_r e^{u(r)} G(r)] / (a - 1)`` with ``G(c) = sum_j exp(-(n j + c)^2 / (2 S))``.
    ``u`` is read off an exact convolution of the truncated pmfs at ``x in [0, n)``;
    it is constant to double precision once ``sigma >= 8`` (its variation is of order
    ``exp(-2 pi^2 sigma^2 / 2)``).
  - Skellam: the sum of ``n`` shares is exactly ``Sk(n mu / 2, n mu / 2)`` with pmf
    ``exp(-V) I_|x|(V)``, ``V = n mu`` (``scipy.special.ive``), summed over the window
    that holds its mass.
  - Poisson-sampled discrete events: for integer ``a``, the binomial expansion
    ``D_a((1-q) P + q P_k || P) = log sum_j C(a, j) (1-q)^{a-j} q^j e^{(j-1) D_j} / (a-1)``
    of the exact divergences above (Mironov, Talwar, Zhang 2019, Sec. 3.3, for any
    base pair), a lower bound for add/remove neighbours.

RDP to (epsilon, delta), as a lower bound of the accountants' conversion. The project
converts with ``eps(a) = r(a) + log(1 - 1/a) - (log delta + log a) / (a - 1)`` (Balle et
al. 2020, Thm 21) minimised over *its* orders. Since Rényi divergence is
non-decreasing in the order, a lower bound ``L`` known at orders ``a_1 < ... < a_m``
extends to all orders as a step function, and :func:`conversion_lower_bound` minimises
the conversion of that step function over every real order ``a > 1``: no claim made by
this conversion from a curve above the true one can be smaller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import dp_accounting as dpa
import numpy as np
import numpy.typing as npt
from dp_accounting import rdp as dpa_rdp
from dp_accounting.pld import privacy_loss_distribution as dpa_pld
from scipy import special

from privacy.events import (
    DiscreteGaussianSumEvent,
    DPEvent,
    GaussianEvent,
    NonPrivateEvent,
    NoOpEvent,
    PoissonSampledEvent,
    SkellamSumEvent,
)

__all__ = [
    "LOWER_ORDERS",
    "REFERENCE_ORDERS",
    "SAMPLED_ORDERS",
    "SKELLAM_ORDERS",
    "conversion_lower_bound",
    "ddg_sum_divergences",
    "gaussian_epsilon",
    "lower_rdp_curve",
    "sampled_divergences",
    "skellam_sum_divergences",
]

FloatArray = npt.NDArray[np.float64]

REFERENCE_ORDERS: tuple[float, ...] = tuple(
    sorted(
        {round(1.0 + i / 100.0, 2) for i in range(1, 1001)}
        | {float(a) for a in range(11, 1025)}
        | {1536.0, 2048.0, 4096.0}
    )
)
"""Orders of the Gaussian reference: 1.01 .. 11 in steps of 0.01, every integer to
1024, then 1536, 2048, 4096 (a superset of the usual accountants' grids)."""

LOWER_ORDERS: FloatArray = np.concatenate(
    [
        np.round(np.arange(1.05, 11.0, 0.05), 2),
        np.arange(11.0, 65.0),
        np.array([80.0, 96.0, 128.0, 192.0, 256.0]),
    ]
)
"""The common grid of the discrete lower-bound curves (the exact discrete-Gaussian
formula holds at real orders; other curves are carried onto it by the step rule)."""

SKELLAM_ORDERS: FloatArray = np.round(
    np.concatenate(
        [np.arange(1.1, 3.0, 0.1), np.arange(3.0, 8.0, 0.5),
         np.array([8.0, 9.0, 10.0, 12.0, 14.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0])]
    ),
    2,
)
"""Fewer orders for Skellam (each sums a window of the Bessel pmf); the step extension
covers the orders in between."""

SAMPLED_ORDERS: FloatArray = np.arange(2.0, 65.0)
"""Integer orders of the binomial expansion for Poisson-sampled discrete events."""


def _onto_lower_grid(orders: FloatArray, curve: FloatArray) -> FloatArray:
    """Step extension (RDP is non-decreasing in the order) of ``curve`` onto
    :data:`LOWER_ORDERS`; 0 below ``orders[0]``."""
    idx = np.searchsorted(orders, LOWER_ORDERS, side="right") - 1
    out = np.where(idx >= 0, curve[np.maximum(idx, 0)], 0.0)
    return np.asarray(out, dtype=np.float64)


# ------------------------------------------------------------------------- Gaussian


def _dpa_event(event: DPEvent) -> dpa.DpEvent:
    if isinstance(event, GaussianEvent):
        return dpa.GaussianDpEvent(float(event.noise_multiplier))
    if isinstance(event, PoissonSampledEvent) and isinstance(event.event, GaussianEvent):
        return dpa.PoissonSampledDpEvent(float(event.sample_rate), _dpa_event(event.event))
    raise ValueError(f"not a Gaussian-family event: {type(event).__name__}")


def gaussian_epsilon(events: Sequence[tuple[DPEvent, int]], *, delta: float) -> float:
    """Reference epsilon of a composition of Gaussian-family events ``(event, count)``.

    Unsampled: ``dp_accounting`` RDP on :data:`REFERENCE_ORDERS`. Any sampled part:
    ``dp_accounting`` PLD, optimistic estimate (a lower bound of the tight epsilon).
    """
    if any(isinstance(e, NonPrivateEvent) for e, c in events if c):
        return math.inf
    live = [(e, c) for e, c in events if c and not isinstance(e, NoOpEvent)]
    live = [
        (e, c)
        for e, c in live
        if not (isinstance(e, GaussianEvent) and math.isinf(e.noise_multiplier))
    ]
    if not live:
        return 0.0
    if any(isinstance(e, GaussianEvent) and e.noise_multiplier <= 0 for e, _ in live):
        return math.inf
    if all(isinstance(e, GaussianEvent) for e, _ in live):
        acc = dpa_rdp.RdpAccountant(orders=list(REFERENCE_ORDERS))
        for e, c in live:
            acc.compose(_dpa_event(e), c)
        return max(float(acc.get_epsilon(delta)), 0.0)
    total: dpa_pld.PrivacyLossDistribution | None = None
    for e, c in live:
        q = float(e.sample_rate) if isinstance(e, PoissonSampledEvent) else 1.0
        inner = e.event if isinstance(e, PoissonSampledEvent) else e
        if not isinstance(inner, GaussianEvent):
            raise ValueError(f"not a Gaussian-family event: {type(e).__name__}")
        one = dpa_pld.from_gaussian_mechanism(
            float(inner.noise_multiplier),
            pessimistic_estimate=False,
            value_discretization_interval=1e-3,
            sampling_prob=q,
        )
        block = one.self_compose(c) if c > 1 else one
        total = block if total is None else total.compose(block)
    return max(float(total.get_epsilon_for_delta(delta)) if total is not None else 0.0, 0.0)


# ---------------------------------------------------------------- exact discrete sums


def _log_dg_pmf(sigma: float, half: int) -> FloatArray:
    k = np.arange(-half, half + 1, dtype=np.float64)
    logp = -(k**2) / (2.0 * sigma**2)
    out: FloatArray = logp - special.logsumexp(logp)
    return out


def _coset_log_theta(sigma: float, n: int) -> FloatArray:
    """``u(r)`` for ``r in [0, n)`` (up to a common constant): log of the coset theta
    series, read off the exact n-fold convolution near 0. Constant for sigma >= 8."""
    if n == 1 or sigma >= 8.0:
        return np.zeros(n)
    half = int(math.ceil(14.0 * sigma)) + 2
    one = np.exp(_log_dg_pmf(sigma, half))
    out = one
    for _ in range(n - 1):
        out = np.convolve(out, one)
    centre = (out.size - 1) // 2  # index of x = 0
    x = np.arange(n)
    vals = out[centre + x]
    s2 = n * sigma**2
    u: FloatArray = np.log(vals) + x.astype(np.float64) ** 2 / (2.0 * s2)
    centred: FloatArray = u - u[0]
    return centred


def _log_g(n: int, s2: float) -> FloatArray:
    """``log G(c)`` for ``c in [0, n)``, ``G(c) = sum_j exp(-(n j + c)^2 / (2 S))``."""
    width = int(math.ceil(40.0 * math.sqrt(s2) / n)) + 2
    if width > 400:  # G is constant to double precision: its variation ~ exp(-2 pi^2 S / n^2)
        return np.zeros(n)
    j = np.arange(-width, width + 1, dtype=np.float64)
    c = np.arange(n, dtype=np.float64)
    grid = -((n * j[None, :] + c[:, None]) ** 2) / (2.0 * s2)
    out: FloatArray = special.logsumexp(grid, axis=1)
    return out


@lru_cache(maxsize=64)
def _ddg_cached(sigma: float, n: int, shift: int, orders: tuple[float, ...]) -> tuple[float, ...]:
    s2 = n * sigma**2
    u = _coset_log_theta(sigma, n)
    lg = _log_g(n, s2)
    r = np.arange(n)
    log_z = float(special.logsumexp(u + lg))
    out = []
    for a in orders:
        if lg.any():  # G(c) at the real argument c = r - a * shift (period n)
            c = np.mod(r - a * shift, n)
            width = int(math.ceil(40.0 * math.sqrt(s2) / n)) + 2
            j = np.arange(-width - 1, width + 2, dtype=np.float64)
            g = special.logsumexp(-((n * j[None, :] + c[:, None]) ** 2) / (2.0 * s2), axis=1)
        else:
            g = np.zeros(n)
        term = a * u[(r - shift) % n] + (1 - a) * u + g
        value = a * (a - 1) * shift**2 / (2.0 * s2) + float(special.logsumexp(term)) - log_z
        out.append(max(value / (a - 1), 0.0))
    return tuple(out)


def ddg_sum_divergences(
    *, sigma: float, num_clients: int, shift: int, orders: FloatArray = LOWER_ORDERS
) -> FloatArray:
    """Exact ``D_a(Z + shift || Z)`` at (real) orders ``a > 1`` for ``Z`` a sum of
    ``num_clients`` discrete Gaussians ``N_Z(0, sigma^2)`` (module docstring)."""
    return np.asarray(
        _ddg_cached(float(sigma), int(num_clients), int(shift), tuple(float(a) for a in orders))
    )


def _log_ive(order: FloatArray, z: float) -> FloatArray:
    """``log(I_v(z) e^{-z})`` for integer orders ``v >= 0``: ``scipy.special.ive`` where it
    is representable, else Debye's uniform expansion (DLMF 10.41.3) with three
    correction terms (relative error below ``1e-9`` where it is used: there
    ``v >= 36 sqrt(z)`` or ``v >= 100``)."""
    with np.errstate(divide="ignore"):
        direct = np.log(special.ive(order, z))
    bad = ~np.isfinite(direct) | (direct < -600.0)
    if np.any(bad):
        v = np.maximum(order[bad], 1.0)
        w = z / v
        root = np.sqrt(1.0 + w * w)
        eta = root + np.log(w / (1.0 + root))
        t = 1.0 / root
        u1 = (3 * t - 5 * t**3) / 24.0
        u2 = (81 * t**2 - 462 * t**4 + 385 * t**6) / 1152.0
        u3 = (30375 * t**3 - 369603 * t**5 + 765765 * t**7 - 425425 * t**9) / 414720.0
        direct[bad] = (
            v * eta
            - 0.5 * np.log(2 * math.pi * v)
            - 0.25 * np.log1p(w * w)
            + np.log1p(u1 / v + u2 / v**2 + u3 / v**3)
            - z
        )
    result: FloatArray = np.asarray(direct, dtype=np.float64)
    return result


@lru_cache(maxsize=64)
def _skellam_cached(v: float, shift: int, orders: tuple[float, ...]) -> tuple[float, ...]:
    sd = math.sqrt(v)
    out: list[float] = []
    for ai in orders:
        # the summand peaks at x = a * shift with spread sd: 14 sd each side hold it all
        lo = int(math.floor(ai * shift - 14.0 * sd - 60))
        hi = int(math.ceil(ai * shift + 14.0 * sd + 60))
        if hi - lo > 6_000_000:
            out.append(out[-1] if out else 0.0)  # too wide to sum: carry the last order's
            continue
        x = np.arange(lo, hi + 1, dtype=np.float64)
        lp = _log_ive(np.abs(x), v)
        lq = _log_ive(np.abs(x - shift), v)
        terms = ai * lq + (1 - ai) * lp
        out.append(max(float(special.logsumexp(terms)) / (ai - 1), 0.0))
    return tuple(out)


def skellam_sum_divergences(
    *, mu: float, num_clients: int, shift: int, orders: FloatArray = SKELLAM_ORDERS
) -> FloatArray:
    """Exact (window-truncated, hence lower) ``D_a(Z + shift || Z)`` for
    ``Z ~ Sk(n mu / 2, n mu / 2)`` at orders ``a > 1``."""
    return np.asarray(
        _skellam_cached(float(num_clients * mu), int(shift), tuple(float(a) for a in orders))
    )


def sampled_divergences(base: FloatArray, *, sample_rate: float, orders: FloatArray) -> FloatArray:
    """``D_a((1-q) P + q P' || P)`` at integer orders ``a`` from the exact
    ``D_j(P' || P)`` of the base pair at ``j = 2 .. a`` (binomial expansion).

    ``base`` holds ``D_j`` at ``orders`` and must cover every integer ``2 .. max order``.
    """
    q = float(sample_rate)
    if q >= 1.0:
        return base.copy()
    table = {int(a): float(d) for a, d in zip(orders, base, strict=True)}
    out = np.zeros_like(base)
    for i, a in enumerate(orders):
        ai = int(a)
        js = np.arange(0, ai + 1)
        if any(int(j) not in table for j in js if j >= 2):
            out[i] = 0.0  # a missing order: 0 is a valid lower bound
            continue
        logd = np.array([0.0 if j < 2 else (j - 1) * table[int(j)] for j in js])
        log_terms = (
            special.gammaln(ai + 1)
            - special.gammaln(js + 1)
            - special.gammaln(ai - js + 1)
            + (ai - js) * math.log1p(-q)
            + js * math.log(q)
            + logd
        )
        out[i] = max(float(special.logsumexp(log_terms)) / (ai - 1), 0.0)
    return out


def lower_rdp_curve(event: DPEvent, *, replace_one: bool = False) -> FloatArray | None:
    """Lower-bound RDP of one discrete event on :data:`LOWER_ORDERS` (``None`` if the
    event is not a discrete sum, possibly Poisson-sampled). ``replace_one`` doubles the
    shift (two rounded vectors ``(k, 0, ...)`` and ``(-k, 0, ...)``)."""
    q = 1.0
    inner = event
    if isinstance(event, PoissonSampledEvent):
        q, inner = float(event.sample_rate), event.event
    if not isinstance(inner, DiscreteGaussianSumEvent | SkellamSumEvent):
        return None
    k = int(math.floor(inner.l2_sensitivity)) * (2 if replace_one else 1)
    if isinstance(inner, DiscreteGaussianSumEvent):
        orders = LOWER_ORDERS if q >= 1.0 else SAMPLED_ORDERS
        base = ddg_sum_divergences(
            sigma=inner.sigma, num_clients=inner.num_clients, shift=k, orders=orders
        )
    else:
        orders = SKELLAM_ORDERS if q >= 1.0 else SAMPLED_ORDERS
        base = skellam_sum_divergences(
            mu=inner.mu, num_clients=inner.num_clients, shift=k, orders=orders
        )
    if q < 1.0:
        base = sampled_divergences(base, sample_rate=q, orders=orders)
    if orders is LOWER_ORDERS:
        return base
    return _onto_lower_grid(orders, base)


def conversion_lower_bound(
    curve: FloatArray, *, delta: float, orders: FloatArray = LOWER_ORDERS
) -> float:
    """Smallest ``r(a) + log(1 - 1/a) - (log delta + log a) / (a - 1)`` over *every*
    real order ``a > 1`` for any curve ``r >=`` the step extension of ``curve``.

    ``curve[i]`` lower-bounds the divergence at ``orders[i]``; by monotonicity in the
    order it lower-bounds every order in ``[orders[i], orders[i+1])`` (and 0 below
    ``orders[0]``, ``curve[-1]`` above the last).
    """
    if not np.all(np.isfinite(curve)):
        return math.inf
    log_delta = math.log(delta)

    def conv(r: float, a: FloatArray) -> FloatArray:
        out: FloatArray = r + np.log1p(-1.0 / a) - (log_delta + np.log(a)) / (a - 1.0)
        return out

    best = math.inf
    below = np.linspace(1.0 + 1e-6, float(orders[0]), 400)
    best = min(best, float(conv(0.0, below).min()))
    for i in range(len(orders) - 1):
        a = np.linspace(float(orders[i]), float(orders[i + 1]), 64)
        best = min(best, float(conv(float(curve[i]), a).min()))
    tail = float(orders[-1]) * np.geomspace(1.0, 1e6, 200)
    best = min(best, float(conv(float(curve[-1]), tail).min()), float(curve[-1]))
    return max(best, 0.0)
