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

* ``Bernoulli(exp(-gamma))`` is decided as the exact comparison ``U < exp(-gamma)`` of
  one uniform real ``U`` whose first 62 bits are a CSPRNG word, against *certified*
  integer brackets ``lo <= 2^62 exp(-gamma) <= hi``: for integer ``gamma`` (the
  ``exp(-1)^w`` conjunction of CKS20 Algorithm 1) and the geometric count of Algorithm 2
  (``P(V >= v) = e^{-v}``) from a table computed once with exact rational series
  (:func:`_exp_neg_bounds`); for the fractional part ``f`` in ``[0, 1)`` from ``f``'s
  position on the grid ``F / 2^30`` and two tables ``e^{-a/2^15}``, ``e^{-b/2^30}``
  (:func:`_bernoulli_exp_neg_unit`); for the discrete Laplace acceptance ``e^{-u/t}``
  from a per-scale table (:func:`_laplace_accept_table`). Tables are built by exact
  integer recursion (:func:`_exp_neg_chain`). A word that falls inside a bracket
  (probability about ``2^-28`` for fractions, ``2^-60`` for integers) reveals further
  uniform bits until the comparison is decided against the exact rational ``gamma``
  (:class:`_LazyUniform`). No floating-point value is ever involved, and these trials
  have exactly the success probability of CKS20 Algorithm 1's series loop
  (``P(K odd) = exp(-gamma)``) that they replace.

Rationals are kept as integer pairs; where ``gamma``'s denominator would exceed 62 bits it
is kept as two "digits" ``D = D1 * D2`` and only bracketed (:func:`_frac_grid`). Exact
Python-integer arithmetic (numpy object arrays) is used only for the per-candidate
numerators that overflow int64.

Timing. Rejection samplers take a data-independent but output-dependent number of
iterations, the channel exploited by Jin et al. (2022) against one-value-at-a-time
samplers. Here noise for a whole vector is drawn in one batch on the client, so the
running time depends only on aggregate properties of many independent samples, never
on one coordinate, and it is never visible to the server apart from the upload time.

Throughput (2-core VM, ``benchmarks/samplers.py``, current versus the previous revision
timed alternately in one run): the discrete Gaussian at the default job's share
(sigma ~ 3.3 x 10^4, d = 8,192) costs about 0.2 us per coordinate (0.78 us with the
series loop of CKS20 Algorithm 1 in the same run); Poisson ~0.04 s per 10^5 samples for
lam up to 2^30 (plus a one-off ``O(sqrt(lam))`` table, 0.25 s at 2^30); Skellam about
1 us per coordinate. The scalar reference implementation of CKS20 (kept for
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
    if np.any(np.diff(hi) > 0) or np.any(np.diff(lo) > 0):  # _geometric_exp_neg_one relies on it
        raise PrivacyError("internal: exp(-v) brackets are not monotone")
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


_FRAC_BITS = 30  # exp(-f) for f in [0, 1] is bracketed on the grid F / 2^30
_HALF_BITS = _FRAC_BITS // 2  # F = a 2^15 + b: exp(-F/2^30) = exp(-a/2^15) exp(-b/2^30)
_TABLE_BITS = 31  # table entries are brackets of 2^31 exp(-.), products fit in int64
_CHAIN_BITS = 96  # working precision of the exact recursion that builds the tables


def _exp_neg_chain(step: Fraction, count: int, out_bits: int) -> tuple[IntArray, IntArray]:
    """Certified ``lo_j <= 2^out_bits e^{-j step} <= hi_j`` for ``j = 0 .. count - 1``.

    Exact integer recursion: with ``c_lo <= 2^96 e^{-step} <= c_hi`` from
    :func:`_exp_neg_bounds` (rational series), ``L_{j+1} = floor(L_j c_lo / 2^96)`` and
    ``H_{j+1} = ceil(H_j c_hi / 2^96)`` from ``L_0 = H_0 = 2^96`` keep
    ``L_j <= 2^96 e^{-j step} <= H_j`` for every ``j`` (induction; all factors positive);
    the entries are ``floor(L_j / 2^(96 - out_bits))`` and ``ceil(H_j / 2^(96 - out_bits))``.
    The rounding accumulated over ``j`` steps is below ``4 j`` units of ``2^-96``: for
    ``count <= 2^16`` and ``out_bits <= 62`` less than one unit of the entries.
    """
    c_lo, c_hi = _exp_neg_bounds(step, _CHAIN_BITS)
    lo_v = hi_v = 1 << _CHAIN_BITS
    shift = _CHAIN_BITS - out_bits
    lo_out, hi_out = [], []
    for _ in range(count):
        lo_out.append(lo_v >> shift)
        hi_out.append(-(-hi_v >> shift))
        lo_v = (lo_v * c_lo) >> _CHAIN_BITS
        hi_v = -(-(hi_v * c_hi) >> _CHAIN_BITS)
    return np.array(lo_out, dtype=np.int64), np.array(hi_out, dtype=np.int64)


_LAPLACE_TABLE_MAX = 1 << 16  # discrete Laplace scales up to this use a per-scale table


@functools.lru_cache(maxsize=8)
def _laplace_accept_table(t: int) -> tuple[IntArray, IntArray]:
    """Certified ``lo_u <= 2^62 e^{-u/t} <= hi_u`` for ``u = 0 .. t - 1`` (built once per t)."""
    return _exp_neg_chain(Fraction(1, t), t, _WORD_BITS)


@functools.lru_cache(maxsize=1)
def _exp_neg_frac_tables() -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Certified brackets ``lo <= 2^31 e^{-a/2^15} <= hi`` (``a = 0 .. 2^15``) and
    ``lo <= 2^31 e^{-b/2^30} <= hi`` (``b = 0 .. 2^15 - 1``), built once.

    (:func:`_exp_neg_chain`).
    """

    coarse_lo, coarse_hi = _exp_neg_chain(Fraction(1, 1 << _HALF_BITS), (1 << _HALF_BITS) + 1, _TABLE_BITS)
    fine_lo, fine_hi = _exp_neg_chain(Fraction(1, 1 << _FRAC_BITS), 1 << _HALF_BITS, _TABLE_BITS)
    return coarse_lo, coarse_hi, fine_lo, fine_hi


def _frac_grid(hi: IntArray, lo: IntArray, d1: int, d2: int, bits: int) -> tuple[IntArray, IntArray]:
    """int64 ``F_lo <= 2^bits f <= F_hi`` for ``f = (hi d2 + lo) / (d1 d2)`` in ``[0, 1)``.

    ``f`` lies in ``[a/b, (a + e)/b]``: ``a = hi d2 + lo``, ``b = d1 d2``, ``e = 0`` when
    ``b < 2^62`` (int64) or ``d1 < 2^31`` (exact Python integers, rare); otherwise
    ``a = hi``, ``b = d1``, ``e = 1``. With ``s = max(0, bitlen(b) - 32)``: if ``s = 0`` the
    bracket is ``floor(2^bits a / b)``, ``ceil(2^bits (a + e) / b)``; else, with
    ``D = floor(b / 2^s)`` and ``h = floor(a / 2^s)``, ``a/b > h/(D+1)`` and
    ``(a + e)/b <= (h + 1)/D``, so ``floor(2^bits h / (D+1))``, ``ceil(2^bits (h+1) / D)``.
    Every operand stays below 2^62 (``a < b``, ``h <= D < 2^32``, ``bits <= 30``).
    """
    if d1 * d2 < _LIMIT_62:
        a, b, e = hi * d2 + lo, d1 * d2, 0
    elif d1 < (1 << 31):
        a, b, e = hi.astype(object) * d2 + lo.astype(object), d1 * d2, 0
    else:
        a, b, e = hi, d1, 1
    s = max(0, b.bit_length() - 32)
    if s == 0:
        a64 = np.asarray(a, dtype=np.int64)
        return (a64 << bits) // b, -((-(a64 + e) << bits) // b)
    den = b >> s
    h = np.asarray(a >> s, dtype=np.int64)
    return (h << bits) // (den + 1), -((-(h + 1) << bits) // den)


def _bernoulli_exp_neg_unit(
    hi: IntArray, lo: IntArray, d1: int, d2: int, rng: Csprng, *, _coarsen: int = 0
) -> BoolArray:
    """Exact ``Bernoulli(exp(-f_i))`` for ``f_i = (hi_i d2 + lo_i) / (d1 d2)`` in ``[0, 1)``
    (``0 <= hi_i < d1 < 2^62``, ``0 <= lo_i < d2``), one uniform word per trial.

    The trial is the comparison ``U < exp(-f)`` of a uniform real ``U = (u + V) / 2^62``
    (``u`` a 62-bit CSPRNG word, ``V`` further bits not yet drawn), decided in integers:

    1. a grid bracket ``F_lo / 2^30 <= f <= F_hi / 2^30`` (:func:`_frac_grid`, int64);
    2. ``exp(-F/2^30) = exp(-a/2^15) exp(-b/2^30)`` for ``F = a 2^15 + b``, so
       ``lower = lo_c[a(F_hi)] lo_f[b(F_hi)] <= 2^62 exp(-f) <= hi_c[a(F_lo)] hi_f[b(F_lo)] = upper``
       with the certified tables of :func:`_exp_neg_frac_tables` (products below 2^63);
    3. ``u < lower`` means ``U < (u + 1)/2^62 <= exp(-f)``: success; ``u >= upper`` means
       ``U >= exp(-f)``: failure. Otherwise (probability about ``2^-28`` per trial) the same
       ``U`` is finished by :class:`_LazyUniform` against the exact rational ``f``.

    So the output is exactly ``Bernoulli(exp(-f))``; no floating-point value is involved.
    This replaces the per-step series loop of CKS20 Algorithm 1 (``P(K odd) = exp(-f)``),
    which needed about 8 batched steps for a batch of 10^4 trials, by one comparison.
    ``_coarsen`` (tests only) drops that many low bits of ``F``, widening the brackets so
    the exact fallback runs on a large share of trials.
    """
    n = hi.size
    if n == 0:
        return np.zeros(0, dtype=bool)
    coarse_lo, coarse_hi, fine_lo, fine_hi = _exp_neg_frac_tables()
    f_lo, f_hi = _frac_grid(hi, lo, d1, d2, _FRAC_BITS - _coarsen)
    # f < 1, so F_hi may be capped at 2^30 (the coarse table ends at a = 2^15)
    f_lo, f_hi = f_lo << _coarsen, np.minimum(f_hi << _coarsen, 1 << _FRAC_BITS)
    mask = (1 << _HALF_BITS) - 1
    lower = coarse_lo[f_hi >> _HALF_BITS] * fine_lo[f_hi & mask]
    upper = coarse_hi[f_lo >> _HALF_BITS] * fine_hi[f_lo & mask]
    u = _words62(n, rng)
    out: BoolArray = u < lower
    for i in np.flatnonzero((u >= lower) & (u < upper)).tolist():
        gamma = Fraction(int(hi[i]) * d2 + int(lo[i]), d1 * d2)
        out[i] = _LazyUniform(int(u[i]), _WORD_BITS, rng).below_exp_neg(gamma)
    return out


def _bernoulli_exp_neg_split(
    whole: IntArray, hi: IntArray, lo: IntArray, d1: int, d2: int, rng: Csprng
) -> BoolArray:
    """``Bernoulli(exp(-gamma_i))`` for ``gamma_i = whole_i + (hi_i d2 + lo_i)/(d1 d2)``.

    CKS20 Algorithm 1 (case gamma > 1): ``exp(-gamma) = exp(-floor(gamma)) *
    exp(-(gamma - floor(gamma)))``, a conjunction of two independent trials: the integer
    part by :func:`_bernoulli_exp_neg_int`, the fraction by :func:`_bernoulli_exp_neg_unit`.
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
    pos = np.searchsorted(lo_asc, u, side="right")  # lo_asc[pos - 1] <= u < lo_asc[pos]
    sure = m - pos  # #{v: u < lo_v}: U < e^{-v} surely for v <= sure
    # u >= lo_v for every v > sure, and hi_v does not increase with v (checked when the
    # table is built), so the count is uncertain iff u < hi_{sure+1} = hi_asc[pos - 1].
    below = hi_asc[np.maximum(pos - 1, 0)]
    v: IntArray = sure.astype(np.int64)
    for i in np.flatnonzero(((pos > 0) & (u < below)) | (sure >= m)).tolist():
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
    if t <= _LAPLACE_TABLE_MAX:  # U < exp(-u/t) against the per-scale certified table
        lo_t, hi_t = _laplace_accept_table(t)
        word = _words62(n, rng)
        keep = word < lo_t[u]
        for i in np.flatnonzero((word >= lo_t[u]) & (word < hi_t[u])).tolist():
            lazy = _LazyUniform(int(word[i]), _WORD_BITS, rng)
            keep[i] = lazy.below_exp_neg(Fraction(int(u[i]), t))
    else:
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


def _dg_threshold(
    y_abs: IntArray, p: int, q: int, t: int
) -> tuple[IntArray, IntArray, IntArray, int, int]:
    """Digits of ``gamma(y) = (|y| - sigma^2/t)^2 / (2 sigma^2)`` with ``sigma^2 = p/q``.

    ``gamma = (q t |y| - p)^2 / (2 p q t^2) = N / B`` with ``B = 2p q t^2``. Returns
    ``(floor(gamma), hi, lo, d1, d2)`` with ``N mod B = hi d2 + lo`` and ``B = d1 d2``:
    ``(d1, d2) = (B, 1)`` (so ``lo = 0``) when ``B < 2^62``, else ``(2p, q t^2)``. Uses
    int64 when every intermediate fits, exact Python integers otherwise.
    """
    big = 2 * p * q * t * t
    d1, d2 = (big, 1) if big < _INT64_SAFE else (2 * p, q * t * t)
    n = y_abs.size
    ymax = int(y_abs.max(initial=0))
    if big < _INT64_SAFE and q * t * ymax + p < _INT64_SAFE:
        a = y_abs * (q * t) - p
        if n and max(ymax * (q * t) - p, p) < (1 << 31):  # every a^2 < 2^62: no masks
            whole, rest = np.divmod(a * a, big)
            return whole, rest, np.zeros(n, dtype=np.int64), d1, d2
        whole = np.empty(n, dtype=np.int64)
        hi = np.empty(n, dtype=np.int64)
        small = np.abs(a) < (1 << 31)  # a^2 < 2^62
        a_small = a[small]
        whole[small], hi[small] = np.divmod(a_small * a_small, big)
        large = np.flatnonzero(~small)
    else:
        whole = np.empty(n, dtype=np.int64)
        hi = np.empty(n, dtype=np.int64)
        large = np.arange(n)
    lo = np.zeros(n, dtype=np.int64)
    if large.size:  # exact Python integers (numpy object arrays) where int64 would overflow
        y_obj = y_abs[large].astype(object)
        a_obj = y_obj * (q * t) - p
        sq = a_obj * a_obj
        w_obj, rest_obj = sq // big, sq % big
        hi_obj, lo_obj = rest_obj // d2, rest_obj % d2
        whole[large] = np.minimum(w_obj, _INT64_SAFE).astype(np.int64)
        hi[large] = hi_obj.astype(np.int64)
        lo[large] = lo_obj.astype(np.int64)
    return whole, hi, lo, d1, d2


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
        whole, hi, lo, d1, d2 = _dg_threshold(np.abs(y), p, q, t)
        ok = _bernoulli_exp_neg_split(whole, hi, lo, d1, d2, rng)
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
