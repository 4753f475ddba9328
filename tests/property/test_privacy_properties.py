"""Property tests (hypothesis) for the privacy building blocks."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crypto.fixedpoint import to_signed
from crypto.prg import Csprng
from privacy.clipping import AdaptiveClipState, adaptive_clip_step, clip_l2
from privacy.mechanisms import (
    DistributedDiscreteGaussian,
    DistributedSkellam,
    conditional_round,
    rounded_norm_bound_sq,
)
from privacy.rotation import padded_dim, rotate, unrotate
from privacy.samplers import discrete_gaussian, poisson, rational_ceil, skellam

FAST = settings(max_examples=30, deadline=None)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
seeds = st.binary(min_size=32, max_size=32)


@FAST
@given(x=arrays(np.float64, st.integers(1, 300), elements=finite), seed=seeds)
def test_rotation_is_orthogonal_and_invertible(x: np.ndarray, seed: bytes) -> None:
    y = rotate(x, seed=seed)
    scale = max(1.0, float(np.linalg.norm(x)))
    assert y.shape == (padded_dim(x.size),)
    assert abs(np.linalg.norm(y) - np.linalg.norm(x)) <= 1e-12 * scale
    np.testing.assert_allclose(unrotate(y, seed=seed, dim=x.size), x, rtol=0, atol=1e-9 * scale)


@FAST
@given(
    x=arrays(np.float64, st.integers(1, 100), elements=finite),
    c=st.floats(min_value=1e-6, max_value=1e6),
)
def test_clipping_bounds_the_norm_and_keeps_the_direction(x: np.ndarray, c: float) -> None:
    clipped, norm = clip_l2(x, max_norm=c)
    assert float(np.linalg.norm(clipped)) <= c
    assert math.isclose(norm, float(np.linalg.norm(x)), rel_tol=1e-12, abs_tol=1e-300)
    if norm > 0:
        factor = float(np.linalg.norm(clipped)) / norm
        np.testing.assert_allclose(clipped, x * factor, rtol=1e-12, atol=1e-300)


@FAST
@given(
    v=arrays(np.float64, st.integers(1, 128), elements=st.floats(-50, 50)),
    beta=st.sampled_from([0.0, math.exp(-0.5), 0.9]),
    seed=seeds,
)
def test_conditional_rounding_respects_the_bound_and_the_lattice(
    v: np.ndarray, beta: float, seed: bytes
) -> None:
    c = max(float(np.linalg.norm(v)), 1e-3)
    bound = rounded_norm_bound_sq(scaled_clip=c, dim=v.size, beta=beta)
    r = conditional_round(v, norm_bound_sq=bound, rng=Csprng(seed))
    assert int(r @ r) <= bound
    assert np.all(np.abs(r - v) < 1.0)


@FAST
@given(value=st.floats(min_value=0, max_value=1e12), bits=st.integers(0, 20))
def test_rational_ceil_never_rounds_down(value: float, bits: int) -> None:
    r = rational_ceil(value, max_denominator=1 << bits)
    assert r >= Fraction(value)
    assert r - Fraction(value) < Fraction(1, 1 << bits)


@settings(max_examples=20, deadline=None)
@given(
    num=st.integers(0, 10**6),
    den=st.integers(1, 1000),
    seed=seeds,
    size=st.integers(0, 200),
)
def test_samplers_return_int64_and_are_deterministic(
    num: int, den: int, seed: bytes, size: int
) -> None:
    q = Fraction(num, den)
    for draw in (
        lambda r: discrete_gaussian(size, sigma_sq=q, rng=r),
        lambda r: skellam(size, mu=q, rng=r),
        lambda r: poisson(size, lam=q, rng=r),
    ):
        a, b = draw(Csprng(seed)), draw(Csprng(seed))
        assert a.dtype == np.int64 and a.shape == (size,)
        np.testing.assert_array_equal(a, b)
    assert np.all(poisson(size, lam=q, rng=Csprng(seed)) >= 0)


@FAST
@given(
    clip=st.floats(min_value=1e-3, max_value=1e3),
    quantile=st.floats(min_value=0.05, max_value=0.95),
    fraction=st.floats(min_value=-1.0, max_value=2.0),
)
def test_adaptive_step_moves_in_the_right_direction(
    clip: float, quantile: float, fraction: float
) -> None:
    state = AdaptiveClipState(clip=clip, target_quantile=quantile)
    new = adaptive_clip_step(state, fraction=fraction).clip
    if fraction > quantile:
        assert new < clip
    elif fraction < quantile:
        assert new > clip
    assert new / clip == pytest.approx(math.exp(-state.learning_rate * (fraction - quantile)), rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 6),
    dim=st.integers(1, 200),
    bits=st.integers(16, 32),
    skellam_noise=st.booleans(),
    data_seed=st.integers(0, 2**32 - 1),
    seed=seeds,
)
def test_noiseless_aggregation_error_is_bounded_by_rounding(
    n: int, dim: int, bits: int, skellam_noise: bool, data_seed: int, seed: bytes
) -> None:
    cls = DistributedSkellam if skellam_noise else DistributedDiscreteGaussian
    mech = cls.create(dim=dim, clip=1.0, bits=bits, noise_multiplier=0.0, num_clients=n)
    data = np.random.default_rng(data_seed)
    xs = [data.normal(size=dim) * data.uniform(0.01, 5) for _ in range(n)]
    rng = Csprng(seed)
    total = np.zeros(mech.padded_dim, dtype=np.uint64)
    for x in xs:
        enc = mech.client_encode(x, round_seed=seed, rng=rng)
        ints = to_signed(enc, bits=bits)
        assert int(ints @ ints) <= mech.norm_bound_sq
        total += enc.astype(np.uint64)
    total &= np.uint64((1 << bits) - 1)
    out = mech.server_decode(total.astype(np.uint32), round_seed=seed)
    ref = sum(x * min(1.0, 1.0 / np.linalg.norm(x)) for x in xs)
    assert np.linalg.norm(out - ref) <= n * math.sqrt(mech.padded_dim) / mech.gamma + 1e-9
