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


# -- one-word Bernoulli(exp(-f)) trials (the vectorised discrete Gaussian / Laplace path) --
_DEFAULT_JOB_SIGMA_SQ = 1_072_668_083  # one client's share in the default job (d = 8,192)

# (hi, lo, d1, d2) for each branch of _frac_grid: d1 d2 < 2^62 (int64); d1 d2 >= 2^62 with
# d1 < 2^31 (exact Python integers); d1 >= 2^31 with d1 d2 >= 2^62 (the interval [hi, hi+1)/d1)
_GRID_CASES = [
    (2 * _DEFAULT_JOB_SIGMA_SQ, 32_752**2),
    ((1 << 21) + 2, 1 << 45),
    (2 * 10**12, (10**6 + 1) ** 2),
]


@pytest.mark.parametrize(("d1", "d2"), _GRID_CASES)
def test_frac_grid_brackets_the_exact_fraction(d1: int, d2: int) -> None:
    from privacy.samplers import _frac_grid

    gen = np.random.default_rng(40)
    hi = np.concatenate([[0, d1 - 1], gen.integers(0, d1, 2_000)]).astype(np.int64)
    lo = np.concatenate([[0, d2 - 1], gen.integers(0, d2, 2_000)]).astype(np.int64)
    f_lo, f_hi = _frac_grid(hi, lo, d1, d2, 30)
    for i in range(hi.size):
        f = Fraction(int(hi[i]) * d2 + int(lo[i]), d1 * d2)
        assert Fraction(int(f_lo[i]), 1 << 30) <= f <= Fraction(int(f_hi[i]), 1 << 30), i
        assert f_hi[i] - f_lo[i] <= 4
    assert int(f_hi.max()) <= (1 << 30) + 1  # inside the coarse table


def test_exp_tables_bracket_the_true_value() -> None:
    """The certified tables behind the one-word trials, against 60-digit decimals."""
    import decimal

    from privacy.samplers import _exp_neg_frac_tables, _laplace_accept_table

    ctx = decimal.Context(prec=60)
    coarse_lo, coarse_hi, fine_lo, fine_hi = _exp_neg_frac_tables()
    t = 32_752
    lap_lo, lap_hi = _laplace_accept_table(t)
    checks = [
        (coarse_lo, coarse_hi, 1 << 15, 31),
        (fine_lo, fine_hi, 1 << 30, 31),
        (lap_lo, lap_hi, t, 62),
    ]
    for lo, hi, den, bits in checks:
        for j in (0, 1, 2, 777, lo.size // 2, lo.size - 1):
            ref = ctx.multiply(ctx.exp(ctx.divide(-decimal.Decimal(j), den)), ctx.power(2, bits))
            assert int(lo[j]) <= ref <= int(hi[j]) and hi[j] - lo[j] <= 2, (den, j)


@pytest.mark.parametrize(("d1", "d2"), _GRID_CASES)
@pytest.mark.parametrize("coarsen", [0, 24])
def test_one_word_exp_trial_is_exact_including_its_fallback(d1: int, d2: int, coarsen: int) -> None:
    """Bernoulli(exp(-f)) frequencies at fixed f; with 24 bits of the grid dropped (step
    2^-6) the exact fallback (_LazyUniform on the same uniform) decides a few percent of
    the trials, so an error there would show."""
    from privacy import samplers

    n = 60_000
    calls = 0
    real = samplers._LazyUniform.below_exp_neg

    def counting(self: samplers._LazyUniform, gamma: Fraction) -> bool:
        nonlocal calls
        calls += 1
        return real(self, gamma)

    for k, frac in enumerate((Fraction(1, 7), Fraction(1, 2), Fraction(9, 10))):
        hi_v = int(frac * d1)
        lo_v = int((frac * d1 - hi_v) * d2)
        f = Fraction(hi_v * d2 + lo_v, d1 * d2)
        hi = np.full(n, hi_v, dtype=np.int64)
        lo = np.full(n, lo_v, dtype=np.int64)
        samplers._LazyUniform.below_exp_neg = counting  # type: ignore[method-assign]
        try:
            hits = int(samplers._bernoulli_exp_neg_unit(hi, lo, d1, d2, _rng(41 + k), _coarsen=coarsen).sum())
        finally:
            samplers._LazyUniform.below_exp_neg = real  # type: ignore[method-assign]
        assert stats.binomtest(hits, n, math.exp(-float(f))).pvalue > P_MIN
    if coarsen:
        assert calls > 3 * n / 200  # the fallback decided more than 0.5% of the trials


def test_discrete_gaussian_goodness_of_fit_at_the_default_jobs_share() -> None:
    n = 40_000
    s = _DEFAULT_JOB_SIGMA_SQ
    x = discrete_gaussian(n, sigma_sq=s, rng=_rng(45))
    half = int(4 * math.sqrt(s)) + 1

    def pmf(k: np.ndarray) -> np.ndarray:
        return discrete_gaussian_pmf(k, sigma_sq=float(s))

    assert _chisquare_binned(x, pmf, -half, half, 2_000) > P_MIN
