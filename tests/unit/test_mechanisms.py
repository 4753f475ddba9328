"""DP mechanisms: continuous Gaussian baselines and the distributed integer mechanisms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crypto.errors import FieldOverflowError
from crypto.fixedpoint import to_signed
from crypto.prg import Csprng
from privacy.errors import PrivacyError
from privacy.events import (
    DiscreteGaussianSumEvent,
    GaussianEvent,
    NonPrivateEvent,
    SkellamSumEvent,
)
from privacy.mechanisms import (
    CentralGaussian,
    DistributedDiscreteGaussian,
    DistributedSkellam,
    GaussianShare,
    conditional_round,
    rounded_norm_bound_sq,
)
from privacy.rotation import rotate

ROUND_SEED = bytes(range(32))
MECHANISMS = [DistributedDiscreteGaussian, DistributedSkellam]


def _updates(n: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=dim) * rng.uniform(0.2, 3.0) for _ in range(n)]


def _clipped_sum(xs: list[np.ndarray], clip: float) -> np.ndarray:
    return sum(x * min(1.0, clip / np.linalg.norm(x)) for x in xs)


def _secure_sum(encoded: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros(encoded[0].size, dtype=np.uint64)
    for e in encoded:
        total += e.astype(np.uint64)
    return (total & np.uint64((1 << bits) - 1)).astype(np.uint32)


# -- continuous Gaussian ------------------------------------------------------------------
def test_central_gaussian_noise_scale_and_event() -> None:
    mech = CentralGaussian(clip=2.0, noise_multiplier=1.5)
    noisy = mech.add_noise(np.zeros(100_000), rng=Csprng(bytes(32)))
    assert abs(noisy.std() / 3.0 - 1) < 0.02
    assert mech.event() == GaussianEvent(noise_multiplier=1.5)
    assert CentralGaussian(clip=1.0, noise_multiplier=0.0).event() == NonPrivateEvent()
    with pytest.raises(PrivacyError):
        CentralGaussian(clip=0.0, noise_multiplier=1.0)


def test_gaussian_shares_carry_the_target_variance_at_the_threshold() -> None:
    mech = GaussianShare(clip=1.0, noise_multiplier=2.0, threshold=4)
    rng = Csprng(bytes(32))
    zero = np.zeros(50_000)
    total = sum(mech.client_encode(zero, rng=rng) for _ in range(4))
    assert abs(total.std() / 2.0 - 1) < 0.02  # 4 shares of variance 4/4 -> std z C = 2
    assert mech.event(num_survivors=4) == GaussianEvent(noise_multiplier=2.0)
    z3 = mech.event(num_survivors=3)
    assert isinstance(z3, GaussianEvent)
    assert math.isclose(z3.noise_multiplier, 2.0 * math.sqrt(3 / 4))
    clipped = mech.client_encode(np.array([30.0, 40.0]), rng=rng)
    assert clipped.shape == (2,)


# -- distributed integer mechanisms -------------------------------------------------------------
def test_rounded_norm_bound_matches_kls21() -> None:
    c, d = 100.0, 64
    beta = math.exp(-0.5)
    expected = min((c + 8) ** 2, c * c + d / 4 + 1.0 * (c + 4))
    assert rounded_norm_bound_sq(scaled_clip=c, dim=d, beta=beta) == math.floor(expected)
    assert rounded_norm_bound_sq(scaled_clip=c, dim=d, beta=0.0) == math.floor((c + 8) ** 2)


def test_conditional_round_enforces_the_bound() -> None:
    rng = Csprng(bytes(32))
    v = rotate(np.random.default_rng(3).normal(size=200), seed=ROUND_SEED)
    v *= 50.0 / np.linalg.norm(v)
    bound = rounded_norm_bound_sq(scaled_clip=50.0, dim=256, beta=math.exp(-0.5))
    for _ in range(50):
        r = conditional_round(v, norm_bound_sq=bound, rng=rng)
        assert int(r @ r) <= bound
        assert np.all((r == np.floor(v)) | (r == np.ceil(v)))
    with pytest.raises(PrivacyError):
        conditional_round(v * 3, norm_bound_sq=bound, rng=rng, max_attempts=5)


@pytest.mark.parametrize("cls", MECHANISMS)
@pytest.mark.parametrize(("bits", "dim", "z"), [(16, 50, 1.0), (20, 3000, 0.7), (32, 700, 2.0)])
def test_end_to_end_recovers_the_sum_within_the_noise(cls, bits: int, dim: int, z: float) -> None:
    n, t, clip = 6, 5, 1.5
    mech = cls.create(dim=dim, clip=clip, bits=bits, noise_multiplier=z, num_clients=n, threshold=t)
    assert mech.wrap_probability <= 1e-9
    xs = _updates(n, dim)
    rngs = [Csprng(i.to_bytes(32, "big")) for i in range(n)]
    enc = [
        mech.client_encode(x, round_seed=ROUND_SEED, rng=r) for x, r in zip(xs, rngs, strict=True)
    ]
    assert all(e.dtype == np.uint32 and e.shape == (mech.padded_dim,) for e in enc)
    assert all(int(e.max()) < (1 << bits) for e in enc)
    out = mech.server_decode(_secure_sum(enc, bits), round_seed=ROUND_SEED)
    err = out - _clipped_sum(xs, clip)
    # per-coordinate std: n shares of noise plus rounding (variance <= 1/4 each), / gamma
    expected = math.sqrt(n * float(mech.local_variance) + n / 4) / mech.gamma
    real_noise = math.sqrt(n / t) * z * clip
    assert math.isclose(expected, math.sqrt(real_noise**2 + n / 4 / mech.gamma**2), rel_tol=1e-3)
    assert abs(err.mean()) < 5 * expected / math.sqrt(dim)
    assert err.std() < expected * (1 + 6 / math.sqrt(dim))
    assert err.std() > math.sqrt(real_noise**2) * (1 - 6 / math.sqrt(dim))


@pytest.mark.parametrize("cls", MECHANISMS)
def test_zero_noise_is_secure_aggregation_of_quantized_updates(cls) -> None:
    n, dim, bits, clip = 5, 300, 24, 1.0
    mech = cls.create(dim=dim, clip=clip, bits=bits, noise_multiplier=0.0, num_clients=n)
    assert mech.local_variance == 0
    assert mech.event(num_survivors=n) == NonPrivateEvent()
    xs = _updates(n, dim, seed=4)
    rng = Csprng(bytes(32))
    enc = [mech.client_encode(x, round_seed=ROUND_SEED, rng=rng) for x in xs]
    for e in enc:  # each rounded vector obeys the exact sensitivity bound
        ints = to_signed(e, bits=bits)
        assert int(ints @ ints) <= mech.norm_bound_sq
    out = mech.server_decode(_secure_sum(enc, bits), round_seed=ROUND_SEED)
    err = out - _clipped_sum(xs, clip)
    # rounding error of the integer sum is < n per coordinate before the (orthogonal) unrotation
    assert np.linalg.norm(err) <= n * math.sqrt(mech.padded_dim) / mech.gamma


@pytest.mark.parametrize("cls", MECHANISMS)
def test_events_record_survivors_and_inflated_sensitivities(cls) -> None:
    mech = cls.create(dim=100, clip=1.0, bits=20, noise_multiplier=1.0, num_clients=10, threshold=7)
    ev = mech.event(num_survivors=8)
    assert isinstance(ev, DiscreteGaussianSumEvent | SkellamSumEvent)
    assert ev.num_clients == 8
    assert ev.l2_sensitivity >= math.sqrt(mech.norm_bound_sq)
    assert ev.l2_sensitivity >= mech.clip * mech.gamma
    assert ev.l1_sensitivity >= ev.l2_sensitivity
    assert 1.0 <= mech.sensitivity_inflation < 1.01
    # threshold shares carry (z C gamma)^2
    assert float(mech.local_variance) * 7 >= (mech.clip * mech.gamma) ** 2
    assert math.isclose(float(mech.local_variance) * 7, (mech.clip * mech.gamma) ** 2, rel_tol=1e-6)
    if isinstance(ev, DiscreteGaussianSumEvent):
        assert ev.dimension == mech.padded_dim
        assert ev.sigma <= math.sqrt(float(mech.local_variance))
    else:
        assert ev.mu <= float(mech.local_variance)
    with pytest.raises(PrivacyError):
        mech.event(num_survivors=0)
    with pytest.raises(PrivacyError):
        mech.event(num_survivors=11)


@pytest.mark.parametrize("cls", MECHANISMS)
def test_wrap_probability_bound_holds_in_simulation(cls) -> None:
    """With a loose target (5%) the observed wrap rate stays below it; 4x the gamma wraps."""
    n, dim, bits, clip, z = 4, 64, 12, 1.0, 1.0
    mech = cls.create(
        dim=dim, clip=clip, bits=bits, noise_multiplier=z, num_clients=n, wrap_target=0.05
    )
    assert 0.0 < mech.wrap_probability <= 0.05
    aligned = [np.ones(dim)] * n  # worst case: identical updates

    def wrapped(m, trials: int) -> float:
        """Fraction of rounds in which some coordinate of the true integer sum leaves Z_2^b."""
        rng = Csprng(bytes(32))
        hits = 0
        for trial in range(trials):
            seed = trial.to_bytes(32, "little")
            enc = [m.client_encode(x, round_seed=seed, rng=rng) for x in aligned]
            # each client's own value is far inside the range, so centring recovers it
            true_sum = sum(to_signed(e, bits=bits) for e in enc)
            hits += bool(np.any(np.abs(true_sum + 0.5) > 2 ** (bits - 1)))
        return hits / trials

    assert wrapped(mech, 100) <= 0.05
    loose = cls(dim, clip, bits, z, n, n, mech.gamma * 4)
    assert wrapped(loose, 30) > 0.5


def test_create_refuses_fields_too_small() -> None:
    with pytest.raises(FieldOverflowError):
        DistributedDiscreteGaussian.create(
            dim=10_000, clip=1.0, bits=8, noise_multiplier=1.0, num_clients=200
        )
    with pytest.raises(FieldOverflowError):  # feasible field, but not at wrap <= 1e-9
        DistributedDiscreteGaussian.create(
            dim=10_000, clip=1.0, bits=8, noise_multiplier=20.0, num_clients=100
        )
    with pytest.raises(FieldOverflowError):
        DistributedSkellam.create(dim=10, clip=1.0, bits=33, noise_multiplier=1.0, num_clients=2)
    with pytest.raises(PrivacyError):
        DistributedSkellam.create(
            dim=10, clip=1.0, bits=16, noise_multiplier=1.0, num_clients=2, threshold=3
        )


@pytest.mark.parametrize("cls", MECHANISMS)
def test_encode_validates_shapes(cls) -> None:
    mech = cls.create(dim=10, clip=1.0, bits=16, noise_multiplier=1.0, num_clients=3)
    with pytest.raises(PrivacyError):
        mech.client_encode(np.ones(11), round_seed=ROUND_SEED, rng=Csprng(bytes(32)))
    with pytest.raises(PrivacyError):
        mech.server_decode(np.zeros(10, dtype=np.uint32), round_seed=ROUND_SEED)
