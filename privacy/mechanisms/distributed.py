"""Distributed discrete Gaussian and Skellam mechanisms for secure aggregation in Z_{2^b}.

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", ICML 2021 (KLS21, Algorithms 1 and 2), and
Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021 (AKL21). Both share one pipeline and differ only in the
integer noise.

Client (``client_encode``), for an update ``x in R^dim``:

1. clip: ``x <- x min(1, C / ||x||_2)``;
2. flatten: ``x <- U x`` with the randomized Hadamard rotation ``U = H D_xi / sqrt(d)``
   of :mod:`privacy.rotation` (``d`` = dim padded to a power of two, signs from the
   public round seed); every coordinate is then sub-Gaussian with proxy
   ``||x||^2 / d``, so one large coordinate cannot force a wrap-around;
3. scale: ``x <- gamma x`` (``1/gamma`` is the lattice granularity);
4. *conditional* randomized rounding: round each coordinate up with probability equal
   to its fractional part, and **repeat until** ``||x_tilde||_2^2 <= B`` where
   (KLS21, Thm. 1 and eq. (3); AKL21 Sec. 4; with ``c = C gamma``)

       B = floor(min{ (c + sqrt d)^2,
                      c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2) }).

   Why conditional: unconditional randomized rounding has L2 sensitivity up to
   ``c + sqrt d`` in the worst case; rejecting the rare (probability ``<= beta``)
   rounding whose norm exceeds the typical bound makes the sensitivity *exactly*
   ``sqrt(B)`` with ``B ≈ c^2 + d/4``, which is what the accountant is told. The check
   is an exact integer comparison, so the recorded sensitivity holds with certainty.
   With ``beta = exp(-1/2)`` the square-root factor is 1 and a rounding is accepted
   with probability ``>= 1 - beta ≈ 0.39`` (in practice almost always).
5. add the client's integer noise share: ``N_Z(0, sigma^2)`` (DDG) or
   ``Sk(mu/2, mu/2)`` (Skellam), sampled *exactly* by :mod:`privacy.samplers`, so the
   floating-point attacks on DP noise (Mironov, CCS 2012) do not apply;
6. reduce modulo ``2^b`` (modular clipping) -> ``uint32`` in ``[0, 2^b)``.

Server (``server_decode``) on the modular sum of the surviving clients: centre into
``[-2^(b-1), 2^(b-1))``, divide by ``gamma``, apply ``U^T`` and drop the padding. The
result is ``sum_i clip(x_i) + U^T(noise + rounding) / gamma``.

Noise provisioning. ``noise_multiplier = z`` fixes the total noise standard deviation
``z C`` in the real domain, i.e. ``z C gamma`` in the integer domain, split over
``threshold = t`` shares: DDG ``sigma^2 = (z C gamma)^2 / t``, Skellam
``mu = (z C gamma)^2 / t`` (each rounded *up* to an exact rational). With ``s``
survivors the event records ``s`` shares, the noise actually present. The privacy
loss is accounted against the *inflated* integer sensitivities ``Delta_2 = sqrt(B)``
and ``Delta_1 = min(sqrt(d) Delta_2, B)`` (an integer vector with ``||v||_2^2 <= B`` has
``||v||_1 <= ||v||_2^2 <= B``), so its effective multiplier ``z C gamma / Delta_2`` is
slightly below ``z`` (see ``sensitivity_inflation``).

Wrap-around (modular clipping) bound, ``wrap_probability``. Let ``n = num_clients``
(the maximum number of summands). Coordinate ``j`` of the integer sum is
``S_j = D_j + E_j + N_j``: the rotated scaled data ``D_j = (U gamma sum_i x_i)_j``, the
rounding errors ``|E_j| < n`` (each ``|e| < 1``), and the noise ``N_j``. Over the
rotation signs, ``D_j`` is sub-Gaussian with proxy ``v = (n C gamma)^2 / d`` (Hoeffding;
``||sum_i x_i|| <= n C``: worst case of aligned client updates, which is realistic in
federated learning). The DDG noise of ``n`` shares is ``n sigma^2``-sub-Gaussian
(CKS20, Prop.); the Skellam noise has cumulant ``K(t) = n mu (cosh t - 1)``. With
``a = 2^(b-1) - 1 - n`` a Chernoff bound and a union bound over the ``d`` coordinates give

    P(wrap) <= min{1, 2 d inf_{t>0} exp(t^2 v / 2 + K(t) - t a)},

which for DDG is ``2 d exp(-a^2 / (2 (v + n sigma^2)))``. :meth:`create` picks the
largest ``gamma`` with this bound ``<= wrap_target`` (default ``1e-9``), subject to
int64 headroom (``(c + sqrt d)^2 < 2^62``) and a local noise variance of at most ``2^30``
(both samplers stay on their fast exact int64 paths, and the Poisson sampler's range
``mu / 2 <= 2^30`` is respected). The cap costs nothing measurable: at
``sigma^2 = 2^30`` with ``t = 8``, ``C gamma ≈ 9e4 / z``, so the sensitivity
inflation from rounding is ``≈ d / (8 (C gamma)^2)``, below 1e-4 for ``d = 10^6, z = 1``. The rotation seed must be independent of the updates for this bound
to hold.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from typing import Self

import numpy as np
import numpy.typing as npt

from crypto.errors import FieldOverflowError
from crypto.fixedpoint import stochastic_round, to_signed
from crypto.prg import Csprng
from privacy.clipping import clip_l2
from privacy.errors import PrivacyError
from privacy.events import DiscreteGaussianSumEvent, NonPrivateEvent, SkellamSumEvent
from privacy.rotation import padded_dim, rotate, unrotate
from privacy.samplers import discrete_gaussian, rational_ceil, skellam

__all__ = [
    "DistributedDiscreteGaussian",
    "DistributedSkellam",
    "conditional_round",
    "rounded_norm_bound_sq",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_INT64_HEADROOM = float(1 << 62)
_MAX_LOCAL_VARIANCE = Fraction(1 << 30)
_MAX_ROUNDING_ATTEMPTS = 1000


def rounded_norm_bound_sq(*, scaled_clip: float, dim: int, beta: float) -> int:
    """``B``: the squared L2 bound enforced by conditional rounding (KLS21, Thm. 1).

    ``B = floor(min{(c + sqrt d)^2, c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)})``
    with ``c = scaled_clip``; ``beta = 0`` means unconditional rounding (first term).
    """
    if not (math.isfinite(scaled_clip) and scaled_clip > 0):
        raise PrivacyError(f"scaled_clip must be finite and > 0, got {scaled_clip}")
    if not 0.0 <= beta < 1.0:
        raise PrivacyError(f"beta must be in [0, 1), got {beta}")
    c, d = scaled_clip, float(dim)
    worst = (c + math.sqrt(d)) ** 2
    if beta > 0:
        typical = c * c + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2)
        worst = min(worst, typical)
    return math.floor(worst)


def conditional_round(
    v: npt.ArrayLike, *, norm_bound_sq: int, rng: Csprng, max_attempts: int = _MAX_ROUNDING_ATTEMPTS
) -> IntArray:
    """Randomized rounding of ``v``, repeated until ``||round(v)||_2^2 <= norm_bound_sq``.

    The norm test is exact (int64 sum of squares; callers keep ``norm_bound_sq`` and the
    entries within int64 headroom). Raises :class:`PrivacyError` after ``max_attempts``
    rejections, which means ``v`` was not clipped to the bound the caller assumed.
    """
    arr = np.asarray(v, dtype=np.float64)
    for _ in range(max_attempts):
        rounded = stochastic_round(arr, rng=rng)
        if int(np.dot(rounded, rounded)) <= norm_bound_sq:
            return rounded
    raise PrivacyError(
        f"conditional rounding failed {max_attempts} times: the input norm exceeds the "
        f"bound sqrt({norm_bound_sq}); was it clipped and scaled consistently?"
    )


def _round_up(x: float) -> float:
    return math.nextafter(x, math.inf)


def _round_down(x: float) -> float:
    return math.nextafter(x, 0.0)


def _variance_rational(value: float) -> Fraction:
    """``value`` rounded up to a rational ``p/q`` with ``q <= 2^16`` and ``p <~ 2^30``.

    Small numerators keep the exact samplers on their int64 fast paths; the round-up
    changes the variance by a relative ``<= 2^-29`` at most (``p >= 2^29`` or ``q = 2^16``).
    """
    if value == 0:
        return Fraction(0)
    shift = max(0, min(16, 29 - math.ceil(value).bit_length()))
    return rational_ceil(value, max_denominator=1 << shift)


@dataclass(frozen=True)
class _DistributedMechanism(ABC):
    """Shared pipeline of :class:`DistributedDiscreteGaussian` and :class:`DistributedSkellam`."""

    dim: int
    clip: float
    bits: int
    noise_multiplier: float
    num_clients: int
    threshold: int
    gamma: float
    beta: float = math.exp(-0.5)

    # -- construction ----------------------------------------------------------------
    def __post_init__(self) -> None:
        for name in ("dim", "bits", "num_clients", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise PrivacyError(f"{name} must be an int, got {value!r}")
        if self.dim < 1:
            raise PrivacyError(f"dim must be >= 1, got {self.dim}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise PrivacyError(f"clip must be finite and > 0, got {self.clip}")
        if not 2 <= self.bits <= 32:
            raise FieldOverflowError(f"bits must be in [2, 32], got {self.bits}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise PrivacyError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.num_clients < 1:
            raise PrivacyError(f"num_clients must be >= 1, got {self.num_clients}")
        if not 1 <= self.threshold <= self.num_clients:
            raise PrivacyError(
                f"threshold must be in [1, num_clients={self.num_clients}], got {self.threshold}"
            )
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise PrivacyError(f"gamma must be finite and > 0, got {self.gamma}")
        if not 0.0 <= self.beta < 1.0:
            raise PrivacyError(f"beta must be in [0, 1), got {self.beta}")
        if self._headroom_violated(self.gamma):
            raise FieldOverflowError(
                f"gamma={self.gamma:g} leaves no int64 headroom: (C gamma + sqrt d)^2 >= 2^62"
            )
        if self.field_margin <= 0:
            raise FieldOverflowError(
                f"a {self.bits}-bit field cannot hold the sum of {self.num_clients} rounded "
                f"vectors: need 2^(b-1) - 1 > num_clients"
            )
        self._check_noise(self.gamma)

    @classmethod
    def create(
        cls,
        *,
        dim: int,
        clip: float,
        bits: int,
        noise_multiplier: float,
        num_clients: int,
        threshold: int | None = None,
        beta: float = math.exp(-0.5),
        wrap_target: float = 1e-9,
    ) -> Self:
        """Validate the settings and choose the largest ``gamma`` whose wrap bound holds.

        ``threshold`` defaults to ``num_clients`` (no dropout tolerance). Raises
        :class:`FieldOverflowError` when no ``gamma`` with ``C gamma >= 1`` (a granularity
        no coarser than the clip norm) satisfies ``wrap_probability <= wrap_target``.
        """
        if not 0.0 < wrap_target < 1.0:
            raise PrivacyError(f"wrap_target must be in (0, 1), got {wrap_target}")
        t = num_clients if threshold is None else threshold
        probe = cls(dim, clip, bits, noise_multiplier, num_clients, t, 1.0 / clip, beta)
        hi = probe._max_gamma()
        lo = 1.0 / clip
        if probe._wrap_at(lo) > wrap_target:
            raise FieldOverflowError(
                f"{bits} bits cannot hold a sum of {num_clients} clients of dimension {dim} "
                f"with noise multiplier {noise_multiplier} at wrap probability <= "
                f"{wrap_target:g} even at granularity C: use more bits"
            )
        if probe._wrap_at(hi) <= wrap_target:
            gamma = hi
        else:
            for _ in range(80):  # bisection on log(gamma); wrap(gamma) is increasing
                mid = math.sqrt(lo * hi)
                if probe._wrap_at(mid) <= wrap_target:
                    lo = mid
                else:
                    hi = mid
                if hi / lo < 1 + 1e-9:
                    break
            gamma = lo
        return cls(dim, clip, bits, noise_multiplier, num_clients, t, gamma, beta)

    # -- noise-specific hooks (each mechanism defines them) ------------------------------
    @abstractmethod
    def _local_variance(self, gamma: float) -> Fraction:
        """Exact variance of one client's integer noise share at scale ``gamma``."""

    @abstractmethod
    def _noise_log_mgf(self, t: float, gamma: float) -> float:
        """``log E exp(t N_j)`` for the noise of ``num_clients`` shares."""

    @abstractmethod
    def _sample_noise(self, size: int, rng: Csprng) -> IntArray:
        """``size`` exact integer noise samples of one share, from the CSPRNG."""

    def _noise_cap_gamma(self) -> float:
        if self.noise_multiplier == 0:
            return math.inf
        # local variance (z C gamma)^2 / t <= 2^30, with margin for the rational round-up
        return math.sqrt(float(_MAX_LOCAL_VARIANCE) * 0.999 * self.threshold) / (
            self.noise_multiplier * self.clip
        )

    def _check_noise(self, gamma: float) -> None:
        if self._local_variance(gamma) > _MAX_LOCAL_VARIANCE:
            raise PrivacyError(
                f"local noise variance exceeds 2^30 at gamma={gamma:g}; use a smaller gamma "
                f"or create(), which respects the cap"
            )

    # -- derived quantities --------------------------------------------------------------
    @property
    def padded_dim(self) -> int:
        """``d``: ``dim`` padded to a power of two (length of encoded vectors)."""
        return padded_dim(self.dim)

    @property
    def granularity(self) -> float:
        """``1 / gamma``: the real-domain spacing of the integer lattice."""
        return 1.0 / self.gamma

    @property
    def scaled_clip(self) -> float:
        """``c = C gamma``: the clip norm in the integer domain."""
        return self.clip * self.gamma

    @property
    def field_margin(self) -> int:
        """``a = 2^(b-1) - 1 - num_clients``: room left for data plus noise per coordinate."""
        return (1 << (self.bits - 1)) - 1 - self.num_clients

    @functools.cached_property
    def norm_bound_sq(self) -> int:
        """``B``, the exact squared L2 bound of every rounded client vector."""
        return rounded_norm_bound_sq(
            scaled_clip=self.scaled_clip, dim=self.padded_dim, beta=self.beta
        )

    @property
    def l2_sensitivity(self) -> float:
        """``Delta_2 = sqrt(B)`` (integer domain, rounded up)."""
        return _round_up(math.sqrt(self.norm_bound_sq))

    @property
    def l1_sensitivity(self) -> float:
        """``Delta_1 = min(sqrt(d) sqrt(B), B)`` (integer domain, rounded up)."""
        return _round_up(
            min(
                math.sqrt(self.padded_dim) * math.sqrt(self.norm_bound_sq),
                float(self.norm_bound_sq),
            )
        )

    @property
    def sensitivity_inflation(self) -> float:
        """``Delta_2 / (C gamma) >= 1``: the privacy cost of rounding (close to 1 is good)."""
        return self.l2_sensitivity / self.scaled_clip

    @functools.cached_property
    def local_variance(self) -> Fraction:
        """Exact variance parameter of one share: ``sigma^2`` (DDG) or ``mu`` (Skellam)."""
        return self._local_variance(self.gamma)

    def effective_noise_multiplier(self, *, num_survivors: int) -> float:
        """``sqrt(s * local_variance) / Delta_2`` for ``s`` surviving shares."""
        return math.sqrt(num_survivors * float(self.local_variance)) / self.l2_sensitivity

    @functools.cached_property
    def wrap_probability(self) -> float:
        """Upper bound on the probability that any coordinate of the sum wraps mod 2^b."""
        return self._wrap_at(self.gamma)

    # -- client / server -------------------------------------------------------------------
    def client_encode(
        self, x: npt.ArrayLike, *, round_seed: bytes, rng: Csprng
    ) -> npt.NDArray[np.uint32]:
        """Clip, rotate, scale, conditionally round, add the noise share, reduce mod ``2^b``.

        ``x`` has length ``dim``; returns ``padded_dim`` values in ``[0, 2^bits)`` (uint32).
        ``rng`` is the client's private CSPRNG (rounding and noise); ``round_seed`` is the
        public 32-byte seed of the round's rotation.
        """
        arr = np.asarray(x, dtype=np.float64)
        if arr.shape != (self.dim,):
            raise PrivacyError(f"expected an update of shape ({self.dim},), got {arr.shape}")
        clipped, _ = clip_l2(arr, max_norm=self.clip)
        scaled = rotate(clipped, seed=round_seed) * self.gamma
        ints = conditional_round(scaled, norm_bound_sq=self.norm_bound_sq, rng=rng)
        if self.noise_multiplier > 0:
            ints = ints + self._sample_noise(self.padded_dim, rng)
        mask = np.uint64((1 << self.bits) - 1)
        return (ints.astype(np.uint64) & mask).astype(np.uint32)

    def server_decode(self, total: npt.ArrayLike, *, round_seed: bytes) -> FloatArray:
        """Centre the modular sum, divide by ``gamma``, unrotate, drop the padding."""
        arr = np.asarray(total)
        if arr.shape != (self.padded_dim,):
            raise PrivacyError(f"expected a sum of shape ({self.padded_dim},), got {arr.shape}")
        centred = to_signed(arr, bits=self.bits).astype(np.float64) / self.gamma
        return unrotate(centred, seed=round_seed, dim=self.dim)

    def _check_survivors(self, num_survivors: int) -> None:
        if isinstance(num_survivors, bool) or not 1 <= num_survivors <= self.num_clients:
            raise PrivacyError(
                f"num_survivors must be in [1, num_clients={self.num_clients}], got {num_survivors!r}"
            )

    # -- internals ---------------------------------------------------------------------------
    def _headroom_violated(self, gamma: float) -> bool:
        return (self.clip * gamma + math.sqrt(self.padded_dim) + 2) ** 2 >= _INT64_HEADROOM

    def _max_gamma(self) -> float:
        head = (
            math.sqrt(_INT64_HEADROOM) * (1 - 1e-9) - math.sqrt(self.padded_dim) - 2
        ) / self.clip
        return min(head, self._noise_cap_gamma())

    def _wrap_at(self, gamma: float) -> float:
        a = float(self.field_margin)
        if a <= 0:
            return 1.0
        d = self.padded_dim
        v = (self.num_clients * self.clip * gamma) ** 2 / d

        def log_bound(t: float) -> float:
            return t * t * v / 2 + self._noise_log_mgf(t, gamma) - t * a

        noise_total = self.num_clients * float(self._local_variance(gamma))
        t_star = a / (v + noise_total)  # optimum if all parts were Gaussian
        if noise_total > 0:  # Skellam optimum has noise_total sinh(t) <= a
            t_star = min(t_star, math.asinh(a / noise_total))
        from scipy.optimize import minimize_scalar  # 0.7 s to import: only when a bound is computed

        res = minimize_scalar(
            log_bound, bounds=(0.0, t_star), method="bounded", options={"xatol": t_star * 1e-10}
        )
        best = min(float(res.fun), log_bound(t_star))
        log_p = math.log(2 * d) + best
        return 1.0 if log_p >= 0 else math.exp(log_p)


@dataclass(frozen=True)
class DistributedDiscreteGaussian(_DistributedMechanism):
    """Distributed discrete Gaussian (KLS21): each client adds ``N_Z(0, sigma^2)^d``.

    ``sigma^2 = (z C gamma)^2 / threshold`` rounded up to a rational. The sum of ``s``
    shares is close to (not exactly) ``N_Z(0, s sigma^2)``; KLS21 Thm. 2 accounts for the
    gap (``tau`` term), which the accountant computes from the event.

    >>> mech = DistributedDiscreteGaussian.create(dim=10, clip=1.0, bits=16,
    ...     noise_multiplier=1.0, num_clients=4, threshold=3)
    >>> mech.padded_dim, mech.wrap_probability <= 1e-9
    (16, True)
    """

    def _local_variance(self, gamma: float) -> Fraction:
        return _variance_rational((self.noise_multiplier * self.clip * gamma) ** 2 / self.threshold)

    def _noise_log_mgf(self, t: float, gamma: float) -> float:
        # N_Z(0, s^2) is s^2-sub-Gaussian (CKS20): log E e^{tX} <= t^2 s^2 / 2.
        return t * t * self.num_clients * float(self._local_variance(gamma)) / 2

    @property
    def local_sigma_sq(self) -> Fraction:
        """Exact ``sigma^2`` of one client's share (integer domain)."""
        return self.local_variance

    @property
    def local_sigma(self) -> float:
        """``sigma`` of one share (integer domain, rounded down for reporting)."""
        return _round_down(math.sqrt(float(self.local_variance)))

    def _sample_noise(self, size: int, rng: Csprng) -> IntArray:
        return discrete_gaussian(size, sigma_sq=self.local_variance, rng=rng)

    def event(self, *, num_survivors: int) -> DiscreteGaussianSumEvent | NonPrivateEvent:
        """The release with ``num_survivors`` shares actually summed (NonPrivate if z = 0)."""
        self._check_survivors(num_survivors)
        if self.local_variance == 0:
            return NonPrivateEvent()
        return DiscreteGaussianSumEvent(
            sigma=self.local_sigma,
            num_clients=num_survivors,
            l2_sensitivity=self.l2_sensitivity,
            l1_sensitivity=self.l1_sensitivity,
            dimension=self.padded_dim,
        )


@dataclass(frozen=True)
class DistributedSkellam(_DistributedMechanism):
    """Distributed Skellam (AKL21): each client adds ``Sk(mu/2, mu/2)^d`` (variance ``mu``).

    ``mu = (z C gamma)^2 / threshold`` rounded up to a rational. Unlike the discrete
    Gaussian, Skellam is closed under summation: ``s`` shares sum to exactly
    ``Sk(s mu/2, s mu/2)``.
    """

    def _local_variance(self, gamma: float) -> Fraction:
        return _variance_rational((self.noise_multiplier * self.clip * gamma) ** 2 / self.threshold)

    def _noise_log_mgf(self, t: float, gamma: float) -> float:
        # Skellam(m/2, m/2): log E e^{tX} = m (cosh t - 1) = 2 m sinh(t/2)^2.
        total_mu = self.num_clients * float(self._local_variance(gamma))
        if total_mu == 0:
            return 0.0
        return 2.0 * total_mu * math.sinh(t / 2) ** 2

    @property
    def local_mu(self) -> Fraction:
        """Exact ``mu`` (variance) of one client's share (integer domain)."""
        return self.local_variance

    def _sample_noise(self, size: int, rng: Csprng) -> IntArray:
        return skellam(size, mu=self.local_variance, rng=rng)

    def event(self, *, num_survivors: int) -> SkellamSumEvent | NonPrivateEvent:
        """The release with ``num_survivors`` shares actually summed (NonPrivate if z = 0)."""
        self._check_survivors(num_survivors)
        if self.local_variance == 0:
            return NonPrivateEvent()
        return SkellamSumEvent(
            mu=_round_down(float(self.local_variance)),
            num_clients=num_survivors,
            l2_sensitivity=self.l2_sensitivity,
            l1_sensitivity=self.l1_sensitivity,
        )
