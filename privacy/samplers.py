"""Exact integer noise samplers driven only by the CSPRNG.

Why exact. A floating-point noise sampler does not sample the distribution its
mathematics assumes: the set of representable outputs and their probabilities leak the
un-noised value (Mironov, "On significance of the least significant bits for
differential privacy", CCS 2012, for the Laplace mechanism; Jin, McMurtry, Rubinstein,
Ohrimenko, "Are we there yet? Timing and floating-point attacks on differential
privacy systems", IEEE S&P 2022, for Gaussian samplers). Every sampler in this module
uses integer arithmetic only: uniform integers from :class:`crypto.prg.Csprng`,
rational Bernoulli trials ``Bernoulli(num / den)`` decided by an exact integer
comparison ``U < num`` with ``U`` uniform on ``[0, den)``, and rejection steps whose
acceptance probabilities are exact rationals or ``exp(-rational)``. The outputs follow
the stated distributions exactly (given a uniform keystream), not approximately.

Contents
--------
* :func:`bernoulli_exp_neg` -- ``Bernoulli(exp(-gamma))`` for rational ``gamma >= 0``
  (Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy",
  NeurIPS 2020, Algorithm 1).
* :func:`discrete_laplace` -- ``P(Y = y) ∝ exp(-|y| / t)`` for an integer scale
  ``t >= 1`` (CKS20, Algorithm 2).
* :func:`discrete_gaussian` -- ``N_Z(0, sigma^2)``: ``P(Y = y) ∝ exp(-y^2 / (2 sigma^2))``
  for rational ``sigma^2`` (CKS20, Algorithm 3).
* :func:`poisson` / :func:`skellam` -- ``Poisson(lam)`` for rational ``lam`` and the
  symmetric Skellam ``Sk(mu/2, mu/2) = Poisson(mu/2) - Poisson(mu/2)`` (variance ``mu``)
  of Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private
  Federated Learning", NeurIPS 2021.

Vectorization. The authors' reference code (and the OpenDP port) draws one sample at a
time in Python, about 10^4 samples per second. Here every step of the algorithms runs
on numpy batches of candidates, and rejected candidates are replaced by a fresh batch:

* ``Bernoulli(exp(-gamma))`` for a rational ``gamma`` in ``[0, 1]`` runs CKS20
  Algorithm 1 with every still-undecided candidate advanced at once (all share the same
  step ``k``, so ``Bernoulli(1/k)`` is one batch of uniforms below a scalar);
* ``Bernoulli(exp(-w))`` for integer ``w`` (the ``exp(-1)^w`` conjunction of Algorithm 1)
  and the geometric count of Algorithm 2 (``P(V >= v) = e^{-v}``) are decided by one
  62-bit uniform word each against a table of *certified* integer brackets
  ``lo_v <= 2^62 e^{-v} <= hi_v`` computed once with exact rational series
  (:func:`_exp_neg_bounds`); a word that falls inside a bracket (probability about
  ``2^-60``) reveals further uniform bits until the comparison is decided
  (:class:`_LazyUniform`). No floating-point value is ever involved and the decision is
  the exact comparison ``U < e^{-v}`` of a uniform real ``U``.

Rationals are kept as integer pairs; where ``gamma``'s denominator would exceed 64 bits it
is factored into two "digits" ``D = D1 * D2`` so that ``Bernoulli(r / D)`` is decided
lexicographically on two uniform integers (see :func:`_bernoulli_two_digit`). Exact
Python-integer arithmetic (numpy object arrays) is used only for the per-candidate
numerators that overflow int64.

Timing. Rejection samplers take a data-independent but output-dependent number of
iterations, the channel exploited by Jin et al. (2022) against one-value-at-a-time
samplers. Here noise for a whole vector is drawn in one batch on the client, so the
running time depends only on aggregate properties of many independent samples, never
on one coordinate, and it is never visible to the server apart from the upload time.

Throughput (2-core CI machine, ``benchmarks/samplers.py``, an unloaded machine): the
discrete Gaussian at the default job's share (sigma ~ 3.3 x 10^4, d = 8,192) costs about
0.25-0.5 us per coordinate (1.2-1.7 us before the table-driven trials and batch sizes
that follow the measured acceptance); Poisson ~0.04 s per 10^5 samples for lam up to
2^30 (plus a one-off ``O(sqrt(lam))`` table, 0.25 s at 2^30); Skellam about 1 us per
coordinate. The scalar reference implementation of CKS20 (kept for
sigma^2 >= 2^61) manages 2-3 x 10^4 samples per second.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from crypto.prg import Csprng
from privacy.errors import PrivacyError

__all__ = [
    "IntArray",
    "bernoulli_exp_neg",
    "discrete_gaussian",
    "discrete_gaussian_pmf",
    "discrete_gaussian_variance",
    "discrete_laplace",
    "poisson",
    "rational_ceil",
    "skellam",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Rational = Fraction | int

_LIMIT_62 = 1 << 62  # every denominator handled by the vectorized paths is below this
_INT64_SAFE = 1 << 62


# ---------------------------------------------------------------------------------------
# Rational helpers
# ---------------------------------------------------------------------------------------
def _as_fraction(value: Rational, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | Fraction):
        raise PrivacyError(
            f"{name} must be an int or fractions.Fraction (exact), got {type(value).__name__}; "
            f"use rational_ceil() to convert a float"
        )
    frac = Fraction(value)
    if frac < 0:
        raise PrivacyError(f"{name} must be >= 0, got {frac}")
    return frac


def rational_ceil(value: float, *, max_denominator: int = 1 << 16) -> Fraction:
    """The smallest ``k / Q >= value`` with ``Q = max_denominator`` (reduced).

    Noise parameters computed in floating point are converted to exact rationals by
    rounding *up*, so the noise actually sampled is never below the planned noise.

    >>> rational_ceil(0.5)
    Fraction(1, 2)
    >>> rational_ceil(2.0 ** 0.5, max_denominator=4)
    Fraction(3, 2)
    """
    if not math.isfinite(value) or value < 0:
        raise PrivacyError(f"value must be finite and >= 0, got {value}")
    if max_denominator < 1:
        raise PrivacyError(f"max_denominator must be >= 1, got {max_denominator}")
    exact = Fraction(value)  # the float's exact binary value
    return Fraction(math.ceil(exact * max_denominator), max_denominator)


# ---------------------------------------------------------------------------------------
# Vectorized exact primitives
# ---------------------------------------------------------------------------------------
_WORD_BITS = 62  # uniform words u in [0, 2^62): U = (u + V) / 2^62 with V in [0, 1) unrevealed
_EXP_TABLE_SIZE = 64  # e^{-v} for v < 64 is tabulated; beyond, 2^62 e^{-v} < 1


def _words62(n: int, rng: Csprng) -> IntArray:
    """``n`` uniform integers in ``[0, 2^62)``: the first 62 bits of uniforms ``U_i``."""
    raw = np.frombuffer(rng.random_bytes(8 * n), dtype="<u8") >> np.uint64(64 - _WORD_BITS)
    out: IntArray = raw.astype(np.int64)
    return out


def _exp_neg_bounds(gamma: Fraction, bits: int) -> tuple[int, int]:
    """Integers ``lo <= 2^bits exp(-gamma) <= hi`` with ``hi - lo <= 3``, exactly.

    ``exp(-gamma) = exp(-1)^w exp(-f)`` with ``w = floor(gamma)``, ``f`` in ``[0, 1)``.
    For ``0 <= x <= 1`` the terms ``x^k / k!`` of ``exp(-x) = sum_k (-x)^k / k!`` decrease,
    so consecutive partial sums bracket the limit (alternating series); lower bounds
    multiply lower bounds (all positive). Only rational arithmetic is used. When
    ``w > bits``, ``exp(-gamma) < 2^-w <= 2^-(bits+1)`` and ``(0, 1)`` is returned.
    """
    w = gamma.numerator // gamma.denominator
    if w > bits:
        return 0, 1
    f = gamma - w
    tol = Fraction(1, (1 << (bits + 3)) * (w + 1) * 3)

    def bracket(x: Fraction) -> tuple[Fraction, Fraction]:
        total, term, k = Fraction(1), Fraction(1), 0
        lo_b = hi_b = total
        while True:
            k += 1
            term = term * x / k
            if k % 2:
                total -= term
                lo_b = total
            else:
                total += term
                hi_b = total
            if term <= tol and k >= 2:
                return lo_b, hi_b

    lo_f, hi_f = bracket(f) if f else (Fraction(1), Fraction(1))
    if w:
        lo_1, hi_1 = bracket(Fraction(1))
        lo_f, hi_f = lo_f * lo_1**w, hi_f * hi_1**w
    scaled_lo, scaled_hi = lo_f * (1 << bits), hi_f * (1 << bits)
    return scaled_lo.numerator // scaled_lo.denominator, -(-scaled_hi.numerator // scaled_hi.denominator)


class _LazyUniform:
    """A uniform ``U`` in ``[0, 1)`` whose binary digits are revealed only as needed.

    ``U = (word + V) / 2^bits`` with ``V`` uniform in ``[0, 1)`` and still unrevealed.
    Comparisons against ``exp(-gamma)`` use certified integer bounds and draw 64 more
    bits only while ``U``'s revealed interval straddles the bracket, so every decision is
    exact; each further draw is needed with probability below ``2^-61``.
    """

    __slots__ = ("bits", "rng", "word")

    def __init__(self, word: int, bits: int, rng: Csprng) -> None:
        self.word, self.bits, self.rng = word, bits, rng

    def below_exp_neg(self, gamma: Fraction) -> bool:
        """``U < exp(-gamma)``, decided exactly."""
        while True:
            lo, hi = _exp_neg_bounds(gamma, self.bits)
            if self.word < lo:  # U < (word + 1) / 2^bits <= lo / 2^bits <= exp(-gamma)
                return True
            if self.word >= hi:  # U >= word / 2^bits >= hi / 2^bits >= exp(-gamma)
                return False
            self.word = (self.word << 64) | int.from_bytes(self.rng.random_bytes(8), "little")
            self.bits += 64


@functools.lru_cache(maxsize=1)
def _exp_neg_int_table() -> tuple[IntArray, IntArray]:
    """Certified bounds ``lo_v <= 2^62 e^{-v} <= hi_v`` for ``v = 0 .. 63`` (built once)."""
    pairs = [_exp_neg_bounds(Fraction(v), _WORD_BITS) for v in range(_EXP_TABLE_SIZE)]
    lo = np.array([a for a, _ in pairs], dtype=np.int64)
    hi = np.array([b for _, b in pairs], dtype=np.int64)
    return lo, hi


def _bernoulli_exp_neg_int(whole: IntArray, rng: Csprng) -> BoolArray:
    """Exact ``Bernoulli(exp(-w_i))`` for integers ``w_i >= 0``, one uniform word each.

    ``U_i < exp(-w_i)`` is decided by the word against the certified table; a word inside
    a bracket (probability below ``2^-60``) is resolved by :class:`_LazyUniform`. This is
    the conjunction ``exp(-1)^w`` of CKS20 Algorithm 1 (case gamma > 1) in one trial.
    """
    lo_t, hi_t = _exp_neg_int_table()
    idx = np.minimum(whole, _EXP_TABLE_SIZE - 1)
    beyond = whole >= _EXP_TABLE_SIZE  # 2^62 e^{-w} < 1: bounds (0, 1)
    lo = np.where(beyond, 0, lo_t[idx])
    hi = np.where(beyond, 1, hi_t[idx])
    u = _words62(whole.size, rng)
    out: BoolArray = u < lo
    for i in np.flatnonzero((u >= lo) & (u < hi)).tolist():
        lazy = _LazyUniform(int(u[i]), _WORD_BITS, rng)
        out[i] = lazy.below_exp_neg(Fraction(int(whole[i])))
    return out


def _bernoulli_two_digit(hi: IntArray, lo: IntArray, d1: int, d2: int, rng: Csprng) -> BoolArray:
    """Exact ``Bernoulli(r / (d1 * d2))`` with ``r = hi * d2 + lo``, ``0 <= lo < d2``.

    ``U = U1 * d2 + U2`` with ``U1`` uniform below ``d1`` and ``U2`` uniform below ``d2``
    is uniform below ``d1 * d2``, and ``U < r`` iff ``U1 < hi`` or (``U1 == hi`` and
    ``U2 < lo``). Neither ``d1 * d2`` nor ``r`` is ever formed, so denominators up to
    ``2^124`` are handled in int64.
    """
    n = hi.size
    u1 = rng.integers_below(d1, n)
    out = u1 < hi
    if d2 > 1:
        tie = np.flatnonzero(u1 == hi)
        if tie.size:
            u2 = rng.integers_below(d2, tie.size)
            out[tie] = u2 < lo[tie]
    return out


def _bernoulli_exp_neg_unit(hi: IntArray, lo: IntArray, d1: int, d2: int, rng: Csprng) -> BoolArray:
    """``Bernoulli(exp(-gamma_i))`` for ``gamma_i = (hi_i d2 + lo_i) / (d1 d2)`` in ``[0, 1]``.

    CKS20 Algorithm 1 (case gamma <= 1): draw ``A_k ~ Bernoulli(gamma / k)`` for
    ``k = 1, 2, ...`` until the first ``A_K = 0``; ``P(K > k) = gamma^k / k!`` and so
    ``P(K odd) = sum_k (-gamma)^k / k! = exp(-gamma)``. ``Bernoulli(gamma / k)`` is drawn
    as ``Bernoulli(1 / k) AND Bernoulli(gamma)`` (independent, product of probabilities).
    Every candidate still running at step ``k`` shares that ``k``, so ``Bernoulli(1 / k)``
    is one batch of uniforms below the scalar ``k`` (and is skipped at ``k = 1``).
    """
    n = hi.size
    result = np.zeros(n, dtype=bool)
    active = np.arange(n)
    k = 1
    while active.size:
        if k == 1:
            a = _bernoulli_two_digit(hi, lo, d1, d2, rng)
        else:
            a = rng.integers_below(k, active.size) == 0
            cand = np.flatnonzero(a)
            if cand.size:
                sub = active[cand]
                a[cand] = _bernoulli_two_digit(hi[sub], lo[sub], d1, d2, rng)
        result[active[~a]] = (k & 1) == 1
        active = active[a]
        k += 1
    return result


def _bernoulli_exp_neg_split(
    whole: IntArray, hi: IntArray, lo: IntArray, d1: int, d2: int, rng: Csprng
) -> BoolArray:
    """``Bernoulli(exp(-gamma_i))`` for ``gamma_i = whole_i + (hi_i d2 + lo_i)/(d1 d2)``.

    CKS20 Algorithm 1 (case gamma > 1): ``exp(-gamma) = exp(-floor(gamma)) *
    exp(-(gamma - floor(gamma)))``, a conjunction of two independent trials: the integer
    part by :func:`_bernoulli_exp_neg_int`, the fraction by the series loop.
    """
    alive = np.ones(whole.size, dtype=bool)
    need = np.flatnonzero(whole > 0)
    if need.size:
        alive[need] = _bernoulli_exp_neg_int(whole[need], rng)
    idx = np.flatnonzero(alive)
    if idx.size:
        alive[idx] = _bernoulli_exp_neg_unit(hi[idx], lo[idx], d1, d2, rng)
    return alive


def bernoulli_exp_neg(gamma: Rational, size: int, *, rng: Csprng) -> BoolArray:
    """``size`` independent exact ``Bernoulli(exp(-gamma))`` trials for rational ``gamma``.

    CKS20 Algorithm 1. ``gamma = p / q`` must have ``q < 2^62``.
    """
    g = _as_fraction(gamma, "gamma")
    p, q = g.numerator, g.denominator
    if q >= _LIMIT_62:
        raise PrivacyError("gamma's denominator must be below 2^62")
    whole, rest = divmod(p, q)
    n = _check_size(size)
    return _bernoulli_exp_neg_split(
        np.full(n, min(whole, _INT64_SAFE), dtype=np.int64),
        np.full(n, rest, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        q,
        1,
        rng,
    )


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise PrivacyError(f"size must be a non-negative int, got {size!r}")
    return int(size)


# ---------------------------------------------------------------------------------------
# Discrete Laplace and discrete Gaussian (Canonne, Kamath, Steinke 2020)
# ---------------------------------------------------------------------------------------
def _geometric_exp_neg_one(n: int, rng: Csprng) -> IntArray:
    """``V`` with ``P(V = v) = (1 - e^-1) e^-v`` (successes of Bernoulli(e^-1) before a failure).

    ``P(V >= v) = e^{-v}``, so ``V = #{v >= 1 : U < e^{-v}}`` for one uniform ``U``
    (inversion; the thresholds decrease in ``v``). Each count is read from one uniform word
    against the certified table; a word inside some bracket, or so small that ``V`` may
    exceed the table (probability below ``2^-55``), is finished by :class:`_LazyUniform`.
    """
    lo_t, hi_t = _exp_neg_int_table()
    lo_asc, hi_asc = lo_t[1:][::-1].copy(), hi_t[1:][::-1].copy()  # v = 63 .. 1, increasing
    m = lo_asc.size
    u = _words62(n, rng)
    sure = m - np.searchsorted(lo_asc, u, side="right")  # #{v: u < lo_v}: U < e^{-v} surely
    maybe = m - np.searchsorted(hi_asc, u, side="right")  # #{v: u < hi_v}
    v: IntArray = sure.astype(np.int64)
    for i in np.flatnonzero((maybe != sure) | (sure >= m)).tolist():
        lazy = _LazyUniform(int(u[i]), _WORD_BITS, rng)
        count = int(sure[i])
        while lazy.below_exp_neg(Fraction(count + 1)):
            count += 1
        v[i] = count
    return v


def _discrete_laplace_batch(n: int, t: int, rng: Csprng) -> IntArray:
    """One round of CKS20 Algorithm 2 on ``n`` candidates; returns the accepted ones.

    ``U ~ Uniform{0..t-1}``, keep with probability ``exp(-U/t)``; ``V`` geometric as
    above; ``X = U + t V`` has ``P(X = x) ∝ exp(-x / t)``; a fair sign ``B`` gives
    ``Y = (1 - 2B) X``, rejecting ``(B = 1, X = 0)`` so that 0 is not counted twice.
    """
    u = rng.integers_below(t, n)
    keep = _bernoulli_exp_neg_unit(u, np.zeros(n, dtype=np.int64), t, 1, rng)
    u = u[keep]
    m = u.size
    v = _geometric_exp_neg_one(m, rng)
    x = u + t * v
    b = rng.uniform_mod_pow2(m, bits=1).astype(bool)
    ok = ~(b & (x == 0))
    signed: IntArray = np.where(b, -x, x)[ok]
    return signed


def discrete_laplace(size: int, *, scale: int, rng: Csprng) -> IntArray:
    """``size`` exact samples with ``P(Y = y) = (1 - e^{-1/t}) / (1 + e^{-1/t}) e^{-|y|/t}``.

    CKS20 Algorithm 2 with integer scale ``t = scale >= 1``. Variance
    ``2 e^{-1/t} / (1 - e^{-1/t})^2``.
    """
    n = _check_size(size)
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale < _LIMIT_62:
        raise PrivacyError(f"scale must be an int in [1, 2^62), got {scale!r}")
    out = np.empty(n, dtype=np.int64)
    filled = 0
    ratio = 1.6  # candidates per accepted sample (acceptance ~ 0.63 for t >= 2)
    while filled < n:
        need = n - filled
        batch = math.ceil(need * ratio) + 32
        got = _discrete_laplace_batch(batch, scale, rng)
        ratio = 1.1 * batch / max(got.size, 1)  # what this batch needed, plus margin
        got = got[:need]
        out[filled : filled + got.size] = got
        filled += got.size
    return out


def _dg_threshold(y_abs: IntArray, p: int, q: int, t: int) -> tuple[IntArray, IntArray, IntArray]:
    """Digits of ``gamma(y) = (|y| - sigma^2/t)^2 / (2 sigma^2)`` with ``sigma^2 = p/q``.

    ``gamma = (q t |y| - p)^2 / (2 p q t^2) = N / (d1 d2)`` with ``d1 = 2p``, ``d2 = q t^2``.
    Returns ``(floor(gamma), hi, lo)`` with ``N mod (d1 d2) = hi * d2 + lo``. Uses int64
    when every intermediate fits, exact Python integers otherwise.
    """
    d1, d2 = 2 * p, q * t * t
    big = d1 * d2
    n = y_abs.size
    whole = np.empty(n, dtype=np.int64)
    hi = np.empty(n, dtype=np.int64)
    lo = np.empty(n, dtype=np.int64)
    ymax = int(y_abs.max(initial=0))
    if big < _INT64_SAFE and q * t * ymax + p < _INT64_SAFE:
        a = y_abs * (q * t) - p
        small = np.abs(a) < (1 << 31)  # a^2 < 2^62
        a_small = a[small]
        w, rest = np.divmod(a_small * a_small, big)
        whole[small] = w
        hi[small], lo[small] = np.divmod(rest, d2)
        large = np.flatnonzero(~small)
    else:
        large = np.arange(n)
    if large.size:  # exact Python integers (numpy object arrays) where int64 would overflow
        y_obj = y_abs[large].astype(object)
        a_obj = y_obj * (q * t) - p
        sq = a_obj * a_obj
        w_obj, rest_obj = sq // big, sq % big
        hi_obj, lo_obj = rest_obj // d2, rest_obj % d2
        whole[large] = np.minimum(w_obj, _INT64_SAFE).astype(np.int64)
        hi[large] = hi_obj.astype(np.int64)
        lo[large] = lo_obj.astype(np.int64)
    return whole, hi, lo


def _floor_sqrt_fraction(s: Fraction) -> int:
    """``floor(sqrt(p / q))`` exactly: ``floor(sqrt(p q) / q) = isqrt(p q) // q``."""
    return math.isqrt(s.numerator * s.denominator) // s.denominator


def discrete_gaussian(size: int, *, sigma_sq: Rational, rng: Csprng) -> IntArray:
    """``size`` exact samples of the discrete Gaussian ``N_Z(0, sigma^2)``.

    ``P(Y = y) = exp(-y^2 / (2 sigma^2)) / sum_{z in Z} exp(-z^2 / (2 sigma^2))``.

    CKS20 Algorithm 3: with ``t = floor(sigma) + 1``, draw ``Y`` from the discrete
    Laplace of scale ``t`` and accept it with probability
    ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))`` (an exact ``Bernoulli(exp(-rational))``).
    The expected number of candidates per output is below 2 (CKS20, Thm. 9 region:
    acceptance ≈ ``(1 - e^{-1/t})/(1+e^{-1/t}) * sqrt(2 pi) sigma e^{-sigma^2/2t^2}``).

    ``sigma_sq`` is an ``int`` or a :class:`fractions.Fraction` (use :func:`rational_ceil`
    to convert a float, rounding up). The vectorized path needs ``2 p < 2^62`` and
    ``q t^2 < 2^62`` for ``sigma^2 = p/q`` (sigma up to about 10^9 with small ``q``);
    beyond that an exact one-at-a-time implementation is used.

    Note ``Var[N_Z(0, sigma^2)] < sigma^2`` (CKS20, Cor. 9); see
    :func:`discrete_gaussian_variance`.
    """
    n = _check_size(size)
    s = _as_fraction(sigma_sq, "sigma_sq")
    if s == 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    p, q = s.numerator, s.denominator
    t = _floor_sqrt_fraction(s) + 1
    if 2 * p >= _LIMIT_62 or q * t * t >= _LIMIT_62:
        return np.array([_discrete_gaussian_scalar(s, rng) for _ in range(n)], dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    filled = 0
    ratio = 1.35  # Laplace candidates per output (acceptance ~ 0.76 for sigma >= 2)
    while filled < n:
        need = n - filled
        batch = math.ceil(need * ratio) + 32
        y = discrete_laplace(batch, scale=t, rng=rng)
        whole, hi, lo = _dg_threshold(np.abs(y), p, q, t)
        ok = _bernoulli_exp_neg_split(whole, hi, lo, 2 * p, q * t * t, rng)
        ratio = 1.1 * batch / max(int(ok.sum()), 1)  # what this batch needed, plus margin
        got = y[ok][:need]
        out[filled : filled + got.size] = got
        filled += got.size
    return out


# -- scalar reference implementation (CKS20 verbatim, exact Fractions) --------------------
def _bernoulli_scalar(p: Fraction, rng: Csprng) -> bool:
    return rng.randbelow(p.denominator) < p.numerator


def _bernoulli_exp_neg_scalar(gamma: Fraction, rng: Csprng) -> bool:
    while gamma > 1:
        if not _bernoulli_exp_neg_scalar(Fraction(1), rng):
            return False
        gamma -= 1
    k = 1
    while _bernoulli_scalar(gamma / k, rng):
        k += 1
    return k % 2 == 1


def _discrete_laplace_scalar(t: int, rng: Csprng) -> int:
    while True:
        u = rng.randbelow(t)
        if not _bernoulli_exp_neg_scalar(Fraction(u, t), rng):
            continue
        v = 0
        while _bernoulli_exp_neg_scalar(Fraction(1), rng):
            v += 1
        x = u + t * v
        negative = rng.randbelow(2) == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def _discrete_gaussian_scalar(s: Fraction, rng: Csprng) -> int:
    t = _floor_sqrt_fraction(s) + 1
    while True:
        y = _discrete_laplace_scalar(t, rng)
        gamma = (abs(y) - s / t) ** 2 / (2 * s)
        if _bernoulli_exp_neg_scalar(gamma, rng):
            return y


# -- exact pmf / variance for tests and the mechanisms ------------------------------------
def discrete_gaussian_pmf(values: npt.ArrayLike, *, sigma_sq: float) -> npt.NDArray[np.float64]:
    """The pmf of ``N_Z(0, sigma^2)`` at integer ``values`` (float64, for testing)."""
    s = float(sigma_sq)
    if s <= 0:
        raise PrivacyError(f"sigma_sq must be > 0, got {sigma_sq}")
    k = np.asarray(values, dtype=np.float64)
    return np.exp(-(k**2) / (2 * s)) / _dg_normalizer(s)


def _dg_support(s: float) -> npt.NDArray[np.float64]:
    half = math.ceil(40.0 * math.sqrt(s)) + 40
    return np.arange(-half, half + 1, dtype=np.float64)


def _dg_normalizer(s: float) -> float:
    return float(np.sum(np.exp(-(_dg_support(s) ** 2) / (2 * s))))


def discrete_gaussian_variance(sigma_sq: float) -> float:
    """``Var[N_Z(0, sigma^2)] = sum_y y^2 p(y)`` by direct summation (truncated at 40 sigma).

    Slightly below ``sigma^2`` (CKS20 Cor. 9: ``Var < sigma^2``). The gap decays like
    ``exp(-2 pi^2 sigma^2)``: about ``2e-7`` relative at ``sigma = 1``, negligible
    beyond, but large for small sigma (``sigma = 0.5``: 0.2150 instead of 0.25).
    """
    s = float(sigma_sq)
    if s <= 0:
        return 0.0
    k = _dg_support(s)
    w = np.exp(-(k**2) / (2 * s))
    return float(np.sum(k**2 * w) / np.sum(w))


# ---------------------------------------------------------------------------------------
# Poisson and Skellam
# ---------------------------------------------------------------------------------------
_SCALE_BITS = 62
_SCALE = 1 << _SCALE_BITS
_WINDOW_FLOOR = 1 << 12  # window extends while r(k) >= 2^-50
_TAIL_BITS = 20  # each tail is proposed with probability 2^-20
_MAX_LAMBDA = Fraction(1 << 30)


@dataclass(frozen=True)
class _PoissonTable:
    """Certified integer bounds ``lo_k <= r(k) 2^62 <= hi_k`` on a window around the mode.

    ``r(k) = P(k) / P(m) = lam^(k - m) m! / k!`` for the mode ``m = floor(lam)``.
    """

    lam: Fraction
    mode: int
    k_first: int
    lo: IntArray
    hi: IntArray
    right_ratio: Fraction  # r(k+1)/r(k) <= right_ratio beyond the window
    right_bound: Fraction  # r(k_last) <= right_bound
    left_ratio: Fraction  # r(k-1)/r(k) <= left_ratio below the window (0 if k_first == 0)
    left_bound: Fraction

    @property
    def width(self) -> int:
        return int(self.lo.size)

    @property
    def k_last(self) -> int:
        return self.k_first + self.width - 1


def _exact_ratio(lam: Fraction, mode: int, k: int) -> Fraction:
    """``r(k) = P(k) / P(mode)`` exactly (product of ``|k - mode|`` rationals, tree-multiplied)."""
    if k >= mode:
        num, den = (
            lam.numerator ** (k - mode),
            lam.denominator ** (k - mode) * _prod_range(mode + 1, k + 1),
        )
    else:
        num, den = (
            lam.denominator ** (mode - k) * _prod_range(k + 1, mode + 1),
            lam.numerator ** (mode - k),
        )
    return Fraction(num, den)


def _prod_range(a: int, b: int) -> int:
    """``a * (a+1) * ... * (b-1)`` by binary splitting (fast for long ranges)."""
    if b - a <= 16:
        return math.prod(range(a, b))
    mid = (a + b) // 2
    return _prod_range(a, mid) * _prod_range(mid, b)


@functools.lru_cache(maxsize=16)
def _poisson_table(lam: Fraction) -> _PoissonTable:
    a, b = lam.numerator, lam.denominator
    mode = a // b
    right_lo, right_hi = [_SCALE], [_SCALE]
    k = mode
    lo_v = hi_v = _SCALE
    while True:  # r(k+1) = r(k) * a / (b (k+1))
        k += 1
        den = b * k
        lo_v = lo_v * a // den
        hi_v = -(-hi_v * a // den)
        right_lo.append(lo_v)
        right_hi.append(hi_v)
        if hi_v < _WINDOW_FLOOR:
            break
    k_last = k
    left_lo: list[int] = []
    left_hi: list[int] = []
    k = mode
    lo_v = hi_v = _SCALE
    while k > 0:  # r(k-1) = r(k) * k b / a
        num = k * b
        lo_v = lo_v * num // a
        hi_v = -(-hi_v * num // a)
        k -= 1
        left_lo.append(lo_v)
        left_hi.append(hi_v)
        if hi_v < _WINDOW_FLOOR:
            break
    k_first = k
    lo = np.array(left_lo[::-1] + right_lo, dtype=np.int64)
    hi = np.array(left_hi[::-1] + right_hi, dtype=np.int64)
    right_ratio = lam / (k_last + 1)
    right_bound = Fraction(int(hi[-1]), _SCALE)
    left_ratio = Fraction(k_first) / lam if k_first > 0 else Fraction(0)
    left_bound = Fraction(int(hi[0]), _SCALE) if k_first > 0 else Fraction(0)
    table = _PoissonTable(
        lam, mode, k_first, lo, hi, right_ratio, right_bound, left_ratio, left_bound
    )
    # Envelope check (see poisson()): the tails' proposal mass must dominate r there.
    eps = Fraction(1, 1 << _TAIL_BITS)
    c = Fraction(table.width) / (1 - 2 * eps)
    for bound, ratio in ((right_bound, right_ratio), (left_bound, left_ratio)):
        if ratio >= 1 or bound * ratio / (1 - ratio) > eps * c:
            raise PrivacyError(f"internal: Poisson envelope fails for lambda={lam}")
    return table


def _tail_proposal(table: _PoissonTable, right: bool, u: int, rng: Csprng) -> int | None:
    """One tail proposal given its acceptance word ``u``; the accepted ``k`` or ``None``.

    Proposal ``k = k_last + g`` (or ``k_first - g``), ``P(g) = (1 - rho) rho^(g-1)``,
    overall mass ``2^-20``; acceptance ``r(k) / (c 2^-20 (1 - rho) rho^(g-1))`` is at most
    ``cap = bound rho / (c 2^-20 (1 - rho))`` for every ``g``, so most proposals are
    rejected by ``u`` before ``g`` is even drawn (the order of independent draws does not
    change the distribution).
    """
    ratio = table.right_ratio if right else table.left_ratio
    bound = table.right_bound if right else table.left_bound
    if ratio == 0:
        return None
    eps = Fraction(1, 1 << _TAIL_BITS)
    c = Fraction(table.width) / (1 - 2 * eps)
    cap = bound * ratio / (c * eps * (1 - ratio))
    if Fraction(u, _SCALE) >= cap:
        return None
    g = _geometric_scalar(ratio, rng)
    k = table.k_last + g if right else table.k_first - g
    if k < 0:
        return None
    proposal = c * eps * (1 - ratio) * ratio ** (g - 1)
    accept = _exact_ratio(table.lam, table.mode, k) / proposal
    return k if _finish_comparison(u, accept, rng) else None


def _finish_comparison(u: int, prob: Fraction, rng: Csprng) -> bool:
    """Decide ``(u + V) / 2^62 < prob`` for the further uniform bits ``V`` in ``[0, 1)``."""
    scaled = prob * _SCALE
    f = scaled.numerator // scaled.denominator
    if u != f:
        return u < f
    rest = scaled - f
    return rng.randbelow(rest.denominator) < rest.numerator


def _geometric_scalar(ratio: Fraction, rng: Csprng) -> int:
    """``G >= 1`` with ``P(G = g) = (1 - ratio) ratio^(g-1)`` (exact, scalar; rare path)."""
    g = 1
    while _bernoulli_scalar(ratio, rng):
        g += 1
    return g


def poisson(size: int, *, lam: Rational, rng: Csprng) -> IntArray:
    """``size`` exact samples of ``Poisson(lam)`` for rational ``0 <= lam <= 2^30``.

    Algorithm (rejection with a certified table; integer arithmetic only). Let
    ``m = floor(lam)`` be the mode and ``r(k) = P(k)/P(m) = lam^(k-m) m!/k! <= 1``.
    The ratios obey ``r(k+1) = r(k) lam/(k+1)`` and ``r(k-1) = r(k) k/lam``, so integer
    bounds ``lo_k <= 2^62 r(k) <= hi_k`` follow by exact floor/ceil recursion from
    ``r(m) = 1`` (no logarithms, no floating point). The window ``W = [k_first, k_last]``
    extends until ``r < 2^-50`` on each side (about ``17 sqrt(lam)`` integers).

    Proposal: with probability ``1 - 2^-19`` a uniform ``k`` in ``W``; with ``2^-20``
    each, a geometric step beyond either edge with ratio ``lam/(k_last+1)`` (right) or
    ``k_first/lam`` (left), which dominate the decay of ``r`` there. Acceptance
    probability ``r(k)/(c g(k))`` equals exactly ``r(k)`` inside ``W``
    (``c = |W|/(1 - 2^-19)``); it is decided by a 62-bit uniform ``u`` against
    ``[lo_k, hi_k]`` and, only when ``u`` falls inside that interval (probability
    about ``2^-40``) or for a tail proposal that survives a cheap bound, by exact
    rational arithmetic on further random bits. The output is therefore exactly
    Poisson; acceptance is about ``sqrt(2 pi lam) / |W| ≈ 0.15``.

    Cost: the table (cached per ``lam``) takes ``O(sqrt(lam))`` integer steps; each
    sample then costs O(1) vectorized work. (Splitting ``lam`` into ``floor(lam)``
    Poisson(1) draws, as in Duchon-Duvignau style samplers, would cost ``O(lam)`` per
    sample, which is prohibitive for the ``lam ~ 10^8`` of the Skellam mechanism.)
    """
    n = _check_size(size)
    lam_f = _as_fraction(lam, "lam")
    if lam_f > _MAX_LAMBDA:
        raise PrivacyError(f"lam must be <= 2^30 for the exact Poisson sampler, got {float(lam_f)}")
    if lam_f.denominator >= _LIMIT_62 or lam_f.numerator >= _LIMIT_62:
        raise PrivacyError("lam's numerator and denominator must be below 2^62")
    if lam_f == 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    table = _poisson_table(lam_f)
    tail_cut = np.uint64(1 << (64 - _TAIL_BITS))
    out = np.empty(n, dtype=np.int64)
    filled = 0
    ratio = 7.5  # proposals per output (acceptance ~ sqrt(2 pi lam) / |W| ~ 0.15)
    while filled < n:
        need = n - filled
        batch = math.ceil(need * ratio) + 32
        comp = np.frombuffer(rng.random_bytes(8 * batch), dtype="<u8")
        idx = rng.integers_below(table.width, batch)
        u = (np.frombuffer(rng.random_bytes(8 * batch), dtype="<u8") >> np.uint64(2)).astype(
            np.int64
        )
        is_tail = comp < np.uint64(2) * tail_cut
        accepted = (u < table.lo[idx]) & ~is_tail
        unsure = np.flatnonzero((u >= table.lo[idx]) & (u < table.hi[idx]) & ~is_tail)
        ks = idx + table.k_first
        for i in unsure.tolist():
            exact = _exact_ratio(table.lam, table.mode, int(ks[i]))
            accepted[i] = _finish_comparison(int(u[i]), exact, rng)
        for i in np.flatnonzero(is_tail).tolist():
            right = bool(comp[i] < tail_cut)
            k_new = _tail_proposal(table, right, int(u[i]), rng)
            if k_new is not None:
                accepted[i] = True
                ks[i] = k_new
        ratio = 1.1 * batch / max(int(accepted.sum()), 1)  # what this batch needed, plus margin
        got = ks[accepted][:need]
        out[filled : filled + got.size] = got
        filled += got.size
    return out


def skellam(size: int, *, mu: Rational, rng: Csprng) -> IntArray:
    """``size`` exact samples of the symmetric Skellam ``Sk(mu/2, mu/2)``.

    ``Y = P1 - P2`` with ``P1, P2 ~ Poisson(mu/2)`` independent: mean 0, variance
    ``mu``, and ``P(Y = k) = e^{-mu} I_|k|(mu)`` (modified Bessel function). Sums of
    independent shares stay Skellam: ``sum_{i<n} Sk(mu/2, mu/2) = Sk(n mu/2, n mu/2)``,
    which is what makes it suitable for distributed noise (Agarwal, Kairouz, Liu 2021).
    ``mu`` must be rational with ``mu/2 <= 2^30``.
    """
    n = _check_size(size)
    mu_f = _as_fraction(mu, "mu")
    half = mu_f / 2
    return poisson(n, lam=half, rng=rng) - poisson(n, lam=half, rng=rng)
