"""Rényi-DP accountant for the Gaussian family and the distributed discrete mechanisms.

State: one RDP curve over a fixed grid of orders; composition adds curves (Mironov
2017, Prop. 1). Epsilon is read off with the conversion of Balle et al. (AISTATS
2020, Thm 21), see :func:`privacy.analysis.rdp.rdp_to_epsilon`.

Per event type. The relation is the event's: the Gaussian family and the sampled
events follow add/remove one unit; the discrete sum events are shifts of a fixed
noise distribution (zero-out, :mod:`privacy.relations`).

* ``GaussianEvent(z)``: ``alpha / (2 z^2)``.
* ``PoissonSampledEvent(q, GaussianEvent(z))``: exact RDP of the sampled Gaussian
  (Mironov, Talwar, Zhang 2019) via Opacus.
* ``DiscreteGaussianSumEvent``: Kairouz-Liu-Steinke (ICML 2021) Prop. 14, an RDP bound;
  refused when ``dimension`` is unknown or ``sigma < 1/2``.
* ``SkellamSumEvent``: Agarwal-Kairouz-Liu (NeurIPS 2021) RDP bound for the summed
  Skellam noise ``Sk(n mu / 2, n mu / 2)``.
  Both discrete bounds are evaluated at ``ceil(alpha)`` (sound: RDP is non-decreasing
  in alpha). A zCDP guarantee ``rho`` would enter as the curve ``alpha * rho``.
* ``PoissonSampledEvent(q, <anything else supported>)``: Zhu & Wang (ICML 2019) Thm 6
  general upper bound at integer orders, taking the minimum with the unsampled curve.
* ``SelfComposedEvent`` / ``ComposedEvent``: sums of curves.
* ``NoOpEvent``: 0. ``NonPrivateEvent``: ``inf`` at every order, so epsilon is ``inf``
  from then on and is reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from privacy.accountants.base import (
    BaseAccountant,
    check_composition,
    check_delta,
    is_count,
    is_real,
)
from privacy.analysis.discrete import ddg_rdp, skellam_rdp
from privacy.analysis.rdp import (
    DEFAULT_ORDERS,
    RdpCurve,
    gaussian_rdp,
    poisson_subsampled_rdp_upper_bound,
    rdp_to_epsilon,
)
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

__all__ = ["RdpAccountant", "event_rdp"]


def _check_sensitivities(
    event: DiscreteGaussianSumEvent | SkellamSumEvent, path: str
) -> str | None:
    for field in ("l2_sensitivity", "l1_sensitivity"):
        value = getattr(event, field)
        if not is_real(value) or not math.isfinite(value) or value < 0:
            return f"{path}.{field}: must be a finite number >= 0, got {value!r}"
    if not is_count(event.num_clients) or event.num_clients < 1:
        return f"{path}.num_clients: must be an integer >= 1, got {event.num_clients!r}"
    return None


def check_rdp_event(event: object, path: str) -> str | None:
    """``None`` if the RDP accountant can account for ``event``, else the reason."""
    if isinstance(event, NoOpEvent | NonPrivateEvent):
        return None
    if isinstance(event, GaussianEvent):
        z = event.noise_multiplier
        if not is_real(z) or z < 0:
            return f"{path}.noise_multiplier: must be a number >= 0, got {z!r}"
        return None
    if isinstance(event, DiscreteGaussianSumEvent):
        if (reason := _check_sensitivities(event, path)) is not None:
            return reason
        if not is_real(event.sigma) or not math.isfinite(event.sigma) or event.sigma < 0.5:
            return (
                f"{path}.sigma: the distributed discrete Gaussian bound (Kairouz et al. 2021, "
                f"Thm 1) needs a finite sigma >= 1/2, got {event.sigma!r}"
            )
        if event.dimension is None:
            return (
                f"{path}.dimension: unknown; the bound for sums of discrete Gaussians grows "
                "with the dimension d, so it cannot be accounted without it"
            )
        if not is_count(event.dimension) or event.dimension < 1:
            return f"{path}.dimension: must be an integer >= 1, got {event.dimension!r}"
        return None
    if isinstance(event, SkellamSumEvent):
        if (reason := _check_sensitivities(event, path)) is not None:
            return reason
        if not is_real(event.mu) or not math.isfinite(event.mu) or event.mu <= 0:
            return f"{path}.mu: must be a finite number > 0, got {event.mu!r}"
        return None
    if isinstance(event, PoissonSampledEvent):
        q = event.sample_rate
        if not is_real(q) or not 0.0 <= q <= 1.0:
            return f"{path}.sample_rate: must be in [0, 1], got {q!r}"
        return check_rdp_event(event.event, f"{path}.event ({type(event.event).__name__})")
    if isinstance(event, SelfComposedEvent | ComposedEvent):
        return check_composition(event, path, check_rdp_event)
    return f"{path}: unknown event type {type(event).__name__}"


def _integer_orders(orders: RdpCurve) -> npt.NDArray[np.int64]:
    return np.maximum(np.ceil(orders), 2).astype(np.int64)


def _curve(event: DPEvent, orders: RdpCurve) -> RdpCurve:
    if isinstance(event, NoOpEvent):
        return np.zeros_like(orders)
    if isinstance(event, NonPrivateEvent):
        return np.full_like(orders, np.inf)
    if isinstance(event, GaussianEvent):
        return gaussian_rdp(noise_multiplier=float(event.noise_multiplier), orders=orders)
    if isinstance(event, DiscreteGaussianSumEvent):
        dim = event.dimension
        if dim is None:  # unreachable after the check; keeps the type narrow
            return np.full_like(orders, np.inf)
        return np.asarray(
            [
                ddg_rdp(
                    order=float(a),
                    sigma=float(event.sigma),
                    num_clients=int(event.num_clients),
                    dimension=int(dim),
                    l2_sensitivity=float(event.l2_sensitivity),
                    l1_sensitivity=float(event.l1_sensitivity),
                )
                for a in _integer_orders(orders)
            ],
            dtype=np.float64,
        )
    if isinstance(event, SkellamSumEvent):
        return np.asarray(
            [
                skellam_rdp(
                    order=float(a),
                    mu=float(event.mu),
                    num_clients=int(event.num_clients),
                    l2_sensitivity=float(event.l2_sensitivity),
                    l1_sensitivity=float(event.l1_sensitivity),
                )
                for a in _integer_orders(orders)
            ],
            dtype=np.float64,
        )
    if isinstance(event, SelfComposedEvent):
        if event.count == 0:
            return np.zeros_like(orders)
        return int(event.count) * _curve(event.event, orders)
    if isinstance(event, ComposedEvent):
        total = np.zeros_like(orders)
        for sub in event.events:
            total = total + _curve(sub, orders)
        return total
    if isinstance(event, PoissonSampledEvent):
        return _sampled_curve(float(event.sample_rate), event.event, orders)
    raise TypeError(f"unchecked event type {type(event).__name__}")  # pragma: no cover


def _sampled_curve(q: float, inner: DPEvent, orders: RdpCurve) -> RdpCurve:
    if q == 0.0 or isinstance(inner, NoOpEvent):
        return np.zeros_like(orders)
    if q == 1.0:
        return _curve(inner, orders)
    if isinstance(inner, NonPrivateEvent):
        return np.full_like(orders, np.inf)
    if isinstance(inner, GaussianEvent):
        return gaussian_rdp(
            noise_multiplier=float(inner.noise_multiplier), sample_rate=q, orders=orders
        )
    ks = _integer_orders(orders)
    k_max = int(ks.max())
    base = _curve(inner, np.arange(2, k_max + 1, dtype=np.float64))
    out = np.empty_like(orders)
    for i, k in enumerate(ks):
        amplified = poisson_subsampled_rdp_upper_bound(base, sample_rate=q, order=int(k))
        out[i] = min(amplified, float(base[k - 2]))
    return out


@lru_cache(maxsize=512)
def _cached_curve(event: DPEvent, orders: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(float(x) for x in _curve(event, np.asarray(orders, dtype=np.float64)))


def event_rdp(event: DPEvent, orders: Sequence[float] = DEFAULT_ORDERS) -> RdpCurve:
    """The RDP curve of ``event`` at ``orders`` (raises ``ValueError`` if unsupported).

    Results are memoised per (event, orders): events are frozen, and many clients
    compose the same aggregation event.
    """
    reason = check_rdp_event(event, type(event).__name__)
    if reason is not None:
        raise ValueError(reason)
    try:
        return np.asarray(_cached_curve(event, tuple(float(a) for a in orders)), dtype=np.float64)
    except TypeError:  # an unhashable (non-frozen) event: compute without the cache
        return _curve(event, np.asarray(orders, dtype=np.float64))


class RdpAccountant(BaseAccountant):
    """Accumulates RDP curves of events; reports epsilon(delta) by Balle et al. 2020.

    >>> acc = RdpAccountant()
    >>> acc.compose(SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 1000))
    >>> round(acc.epsilon(1e-5), 2)
    2.1
    """

    name = "rdp"

    def __init__(self, *, orders: Sequence[float] = DEFAULT_ORDERS) -> None:
        alphas = tuple(float(a) for a in orders)
        if not alphas or not all(math.isfinite(a) and a > 1.0 for a in alphas):
            raise ValueError("RDP orders must be a non-empty sequence of finite numbers > 1")
        self._orders = alphas
        self._rdp: RdpCurve = np.zeros(len(alphas), dtype=np.float64)

    @classmethod
    def from_curve(cls, orders: Sequence[float], rdp: Sequence[float] | RdpCurve) -> RdpAccountant:
        """The accountant whose accumulated curve at ``orders`` is ``rdp`` (a saved
        :attr:`rdp`, e.g. from a checkpoint); entries are >= 0 or ``inf``."""
        acc = cls(orders=orders)
        curve = np.array(rdp, dtype=np.float64)
        if curve.shape != acc._rdp.shape or np.isnan(curve).any() or (curve < 0).any():
            raise ValueError("an RDP curve has one value >= 0 (or inf) per order")
        acc._rdp = curve
        return acc

    @property
    def orders(self) -> tuple[float, ...]:
        return self._orders

    @property
    def rdp(self) -> RdpCurve:
        """A copy of the accumulated RDP curve."""
        return self._rdp.copy()

    def _check(self, event: object, path: str) -> str | None:
        return check_rdp_event(event, path)

    def _compose(self, event: DPEvent) -> None:
        curve = event_rdp(event, self._orders)  # computed in full before state changes
        self._rdp = self._rdp + curve

    def epsilon_and_order(self, delta: float) -> tuple[float, float]:
        """``(epsilon, best order)`` at ``delta``; ``(inf, nan)`` once non-private."""
        eps, order = rdp_to_epsilon(orders=self._orders, rdp=self._rdp, delta=check_delta(delta))
        return eps, order

    def epsilon(self, delta: float) -> float:
        return self.epsilon_and_order(delta)[0]
