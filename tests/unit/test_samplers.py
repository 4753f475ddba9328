"""Exact integer samplers: goodness of fit against exact pmfs, variances, determinism."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from crypto.prg import Csprng
from privacy.errors import PrivacyError
from privacy.samplers import (
    bernoulli_exp_neg,
    discrete_gaussian,
    discrete_gaussian_pmf,
    discrete_gaussian_variance,
    discrete_laplace,
    poisson,
    rational_ceil,
    skellam,
)

P_MIN = 1e-4  # seeds are pinned: a failure is deterministic, not flaky


def _rng(tag: int) -> Csprng:
    return Csprng(tag.to_bytes(32, "little"))


def _chisquare_binned(samples: np.ndarray, pmf, lo: int, hi: int, width: int) -> float:
    """Chi-square p-value with bins of ``width`` integers on [lo, hi] plus two tail bins."""
    edges = np.arange(lo, hi + 1, width)
    counts = [np.sum(samples < lo)]
    probs = [float(np.sum(pmf(np.arange(lo - 50_000, lo))))]
    for a in edges:
        b = min(a + width, hi + 1)
        counts.append(np.sum((samples >= a) & (samples < b)))
        probs.append(float(np.sum(pmf(np.arange(a, b)))))
    counts.append(np.sum(samples > hi))
    probs.append(float(np.sum(pmf(np.arange(hi + 1, hi + 50_000)))))
    counts_a = np.array(counts, dtype=float)
    expected = np.array(probs) / sum(probs) * samples.size
    # merge tiny tail bins into their neighbours so every expected count is >= 5
    merged_c, merged_e, acc_c, acc_e = [], [], 0.0, 0.0
    for c, e in zip(counts_a, expected, strict=True):
        acc_c += c
        acc_e += e
        if acc_e >= 5:
            merged_c.append(acc_c)
            merged_e.append(acc_e)
            acc_c = acc_e = 0.0
    merged_c[-1] += acc_c
    merged_e[-1] += acc_e
    return float(stats.chisquare(merged_c, merged_e).pvalue)


@pytest.mark.parametrize(
    ("sigma_sq", "width", "tag"),
    [(Fraction(1, 4), 1, 1), (Fraction(2), 1, 2), (7, 1, 3), (150**2, 25, 4)],
)
def test_discrete_gaussian_goodness_of_fit(sigma_sq: Fraction | int, width: int, tag: int) -> None:
    n = 40_000
    x = discrete_gaussian(n, sigma_sq=sigma_sq, rng=_rng(tag))
    assert x.dtype == np.int64 and x.shape == (n,)
    s = float(sigma_sq)
    half = int(4 * math.sqrt(s)) + 1

    def pmf(k: np.ndarray) -> np.ndarray:
        return discrete_gaussian_pmf(k, sigma_sq=s)

    assert _chisquare_binned(x, pmf, -half, half, width) > P_MIN


def test_discrete_gaussian_rejects_a_wrong_sigma() -> None:
    """The test above has power: samples with sigma 150 do not fit sigma 160."""
    x = discrete_gaussian(40_000, sigma_sq=150**2, rng=_rng(4))

    def pmf(k: np.ndarray) -> np.ndarray:
        return discrete_gaussian_pmf(k, sigma_sq=160.0**2)

    assert _chisquare_binned(x, pmf, -600, 600, 25) < 1e-6


def test_discrete_gaussian_variance_matches_exact_pmf() -> None:
    # sigma = 0.5: Var[N_Z(0, 1/4)] = 0.2150..., clearly below sigma^2 = 0.25
    exact = discrete_gaussian_variance(0.25)
    assert 0.21 < exact < 0.22
    x = discrete_gaussian(200_000, sigma_sq=Fraction(1, 4), rng=_rng(5)).astype(float)
    se = exact * math.sqrt(2 / x.size) * 2  # generous: kurtosis of a lattice variable
    assert abs(x.var() - exact) < 4 * se


def test_sum_of_discrete_gaussian_shares_has_the_accounted_variance() -> None:
    """n shares sum to variance n Var[N_Z(0, sigma^2)] (= n sigma^2 up to the tiny gap)."""
    n, size = 8, 50_000
    for sigma_sq, tag in ((Fraction(1, 4), 6), (Fraction(900), 7)):
        rng = _rng(tag)
        total = sum(
            discrete_gaussian(size, sigma_sq=sigma_sq, rng=rng).astype(float) for _ in range(n)
        )
        expected = n * discrete_gaussian_variance(float(sigma_sq))
        assert abs(total.var() / expected - 1) < 4 * math.sqrt(2 / size)
        assert abs(total.mean()) < 4 * math.sqrt(expected / size)


def test_discrete_gaussian_large_sigma_paths() -> None:
    # python-int threshold path (sigma ~ 1e6) and the scalar fallback (sigma^2 > 2^62)
    for sigma_sq, size, tag in ((10**12, 20_000, 8), (1 << 70, 300, 9)):
        x = discrete_gaussian(size, sigma_sq=sigma_sq, rng=_rng(tag)).astype(float)
        sd = math.sqrt(float(sigma_sq))
        assert abs(x.mean()) < 5 * sd / math.sqrt(size)
        assert abs(x.std() / sd - 1) < 5 / math.sqrt(2 * size)


def test_discrete_laplace_goodness_of_fit() -> None:
    t = 3
    x = discrete_laplace(40_000, scale=t, rng=_rng(10))
    r = math.exp(-1 / t)

    def pmf(k: np.ndarray) -> np.ndarray:
        return (1 - r) / (1 + r) * r ** np.abs(k)

    assert _chisquare_binned(x, pmf, -20, 20, 1) > P_MIN


@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(7, 2)])
def test_bernoulli_exp_neg_frequency(gamma: Fraction) -> None:
    n = 100_000
    hits = int(bernoulli_exp_neg(gamma, n, rng=_rng(11)).sum())
    assert stats.binomtest(hits, n, math.exp(-float(gamma))).pvalue > P_MIN


@pytest.mark.parametrize(
    ("mu", "width", "tag"),
    [(Fraction(1), 1, 12), (Fraction(7, 2), 1, 13), (Fraction(5000), 20, 14)],
)
def test_skellam_goodness_of_fit(mu: Fraction, width: int, tag: int) -> None:
    x = skellam(40_000, mu=mu, rng=_rng(tag))
    m = float(mu) / 2
    half = int(5 * math.sqrt(float(mu))) + 3

    def pmf(k: np.ndarray) -> np.ndarray:
        return stats.skellam.pmf(k, m, m)

    assert _chisquare_binned(x, pmf, -half, half, width) > P_MIN


@pytest.mark.parametrize(
    ("lam", "width", "tag"),
    [(Fraction(1, 2), 1, 15), (Fraction(3), 1, 16), (Fraction(10**6), 100, 17)],
)
def test_poisson_goodness_of_fit(lam: Fraction, width: int, tag: int) -> None:
    x = poisson(40_000, lam=lam, rng=_rng(tag))
    lf = float(lam)
    lo = max(0, int(lf - 5 * math.sqrt(lf)))
    hi = int(lf + 5 * math.sqrt(lf)) + 5

    def pmf(k: np.ndarray) -> np.ndarray:
        return stats.poisson.pmf(k, lf)

    assert _chisquare_binned(x, pmf, lo, hi, width) > P_MIN


def test_sum_of_skellam_shares_has_variance_n_mu() -> None:
    n, size, mu = 6, 40_000, Fraction(2500)
    rng = _rng(18)
    total = sum(skellam(size, mu=mu, rng=rng).astype(float) for _ in range(n))
    assert abs(total.var() / (n * float(mu)) - 1) < 4 * math.sqrt(2 / size)


def test_samplers_are_deterministic_given_the_seed() -> None:
    for fn in (
        lambda r: discrete_gaussian(1000, sigma_sq=Fraction(9, 2), rng=r),
        lambda r: skellam(1000, mu=Fraction(40), rng=r),
        lambda r: poisson(1000, lam=Fraction(3, 7), rng=r),
        lambda r: discrete_laplace(1000, scale=5, rng=r),
    ):
        a, b, c = fn(_rng(19)), fn(_rng(19)), fn(_rng(20))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_zero_noise_and_empty_requests() -> None:
    assert discrete_gaussian(5, sigma_sq=0, rng=_rng(21)).tolist() == [0] * 5
    assert skellam(3, mu=0, rng=_rng(21)).tolist() == [0] * 3
    assert discrete_gaussian(0, sigma_sq=4, rng=_rng(21)).size == 0


def test_inexact_parameters_are_refused() -> None:
    with pytest.raises(PrivacyError, match="Fraction"):
        discrete_gaussian(3, sigma_sq=2.5, rng=_rng(22))  # type: ignore[arg-type]
    with pytest.raises(PrivacyError):
        discrete_gaussian(3, sigma_sq=Fraction(-1), rng=_rng(22))
    with pytest.raises(PrivacyError):
        poisson(3, lam=Fraction(1 << 31), rng=_rng(22))
    with pytest.raises(PrivacyError):
        discrete_laplace(3, scale=0, rng=_rng(22))


def test_rational_ceil_rounds_up() -> None:
    assert rational_ceil(0.25) == Fraction(1, 4)
    assert rational_ceil(2.0**0.5, max_denominator=4) == Fraction(3, 2)
    v = 1234.56789
    r = rational_ceil(v, max_denominator=1 << 10)
    assert r >= Fraction(v) and r - Fraction(v) < Fraction(1, 1 << 10)
    with pytest.raises(PrivacyError):
        rational_ceil(float("nan"))


def test_certified_exp_bounds_bracket_the_true_value() -> None:
    """The integer brackets behind the one-word Bernoulli(exp(-gamma)) trials are valid
    and tight: checked against 60-digit decimal arithmetic, an independent reference."""
    import decimal

    from privacy.samplers import _exp_neg_bounds

    ctx = decimal.Context(prec=80)
    for gamma in (Fraction(0), Fraction(1, 3), Fraction(1), Fraction(7, 2), Fraction(43), Fraction(62)):
        for bits in (62, 126):
            lo, hi = _exp_neg_bounds(gamma, bits)
            ref = ctx.multiply(
                ctx.exp(ctx.divide(-decimal.Decimal(gamma.numerator), gamma.denominator)),
                ctx.power(decimal.Decimal(2), bits),
            )
            assert lo <= ref <= hi and hi - lo <= 3, (gamma, bits, lo, hi, ref)
    assert _exp_neg_bounds(Fraction(10**6), 62) == (0, 1)


def test_lazy_uniform_resolves_a_straddling_word_exactly() -> None:
    """A word inside the bracket (the rare path of the vectorized samplers) is decided by
    revealing more bits: the decision frequency is exp(-gamma) given that word."""
    from privacy.samplers import _exp_neg_bounds, _LazyUniform

    gamma = Fraction(1)
    lo, hi = _exp_neg_bounds(gamma, 62)
    assert lo < hi
    rng = _rng(23)
    # U in [lo, lo + 1) / 2^62 straddles e^{-1} iff the bracket is not exact; the outcome is
    # then decided by the further bits, and both outcomes must occur over many trials
    # only if e^{-1} lies strictly inside that cell.
    outcomes = {_LazyUniform(lo, 62, rng).below_exp_neg(gamma) for _ in range(200)}
    lo2, hi2 = _exp_neg_bounds(gamma, 126)
    cell = range(lo << 64, (lo + 1) << 64)
    assert outcomes == ({True, False} if lo2 in cell and hi2 in cell else outcomes)
    assert _LazyUniform(lo - 1, 62, rng).below_exp_neg(gamma) is True
    assert _LazyUniform(hi, 62, rng).below_exp_neg(gamma) is False


def test_geometric_and_integer_exp_trials_match_exact_laws() -> None:
    """The table-driven primitives of the vectorized path: V with P(V >= v) = e^{-v}, and
    Bernoulli(e^{-w}) for integer w (CKS20 Algorithm 1, gamma > 1)."""
    from privacy.samplers import _bernoulli_exp_neg_int, _geometric_exp_neg_one

    n = 200_000
    v = _geometric_exp_neg_one(n, _rng(24))
    counts = np.bincount(v, minlength=12)[:12].astype(float)
    probs = (1 - math.exp(-1)) * np.exp(-np.arange(12.0))
    expected = probs * n
    tail_c, tail_e = n - counts.sum(), n - expected.sum()
    p = stats.chisquare(np.append(counts, tail_c), np.append(expected, tail_e)).pvalue
    assert p > P_MIN
    for w in (1, 2, 5):
        hits = int(_bernoulli_exp_neg_int(np.full(n, w, dtype=np.int64), _rng(25 + w)).sum())
        assert stats.binomtest(hits, n, math.exp(-w)).pvalue > P_MIN
    assert not _bernoulli_exp_neg_int(np.full(1000, 10**9, dtype=np.int64), _rng(30)).any()
