"""Fixed and adaptive (quantile-tracking) L2 clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from crypto.prg import Csprng
from privacy.clipping import (
    AdaptiveClipState,
    adaptive_clip_step,
    clip_indicator,
    clip_l2,
    count_event,
    noised_fraction,
    update_noise_multiplier,
)
from privacy.errors import PrivacyError
from privacy.events import GaussianEvent


def test_clip_l2_projects_onto_the_ball() -> None:
    x = np.array([3.0, 4.0])
    clipped, norm = clip_l2(x, max_norm=1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped, [0.6, 0.8])
    assert np.linalg.norm(clipped) <= 1.0
    small, norm_small = clip_l2(np.array([0.1, 0.2]), max_norm=1.0)
    np.testing.assert_array_equal(small, [0.1, 0.2])
    assert math.isclose(norm_small, math.hypot(0.1, 0.2))


def test_clip_l2_never_exceeds_the_bound_in_floating_point() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.normal(size=rng.integers(1, 50)) * 10.0 ** rng.integers(-3, 6)
        c = float(10.0 ** rng.uniform(-3, 3))
        clipped, _ = clip_l2(x, max_norm=c)
        assert float(np.linalg.norm(clipped)) <= c


def test_clip_l2_does_not_mutate_and_refuses_nan() -> None:
    x = np.array([3.0, 4.0])
    clip_l2(x, max_norm=1.0)
    np.testing.assert_array_equal(x, [3.0, 4.0])
    with pytest.raises(PrivacyError):
        clip_l2(np.array([np.nan, 1.0]), max_norm=1.0)
    with pytest.raises(PrivacyError):
        clip_l2(x, max_norm=0.0)


def test_step_moves_toward_the_quantile() -> None:
    state = AdaptiveClipState(clip=1.0, target_quantile=0.5, learning_rate=0.2)
    assert adaptive_clip_step(state, fraction=0.9).clip < 1.0  # too many under: shrink
    assert adaptive_clip_step(state, fraction=0.1).clip > 1.0  # too few under: grow
    assert adaptive_clip_step(state, fraction=0.5).clip == 1.0
    assert math.isclose(adaptive_clip_step(state, fraction=1.0).clip, math.exp(-0.1))


@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_adaptive_clipping_converges_to_the_target_quantile(quantile: float) -> None:
    m = 100
    data = np.random.default_rng(1)
    rng = Csprng(bytes(32))
    state = AdaptiveClipState(
        clip=0.01,
        target_quantile=quantile,
        learning_rate=0.2,
        count_noise_std=m / 20,
        expected_clients=m,
    )
    history = []
    for _ in range(300):
        norms = data.lognormal(mean=0.0, sigma=0.5, size=m)
        total = sum(clip_indicator(float(v), clip=state.clip) for v in norms)
        state = adaptive_clip_step(state, fraction=noised_fraction(total, state=state, rng=rng))
        history.append(state.clip)
    true_q = math.exp(0.5 * float(stats.norm.ppf(quantile)))
    late = np.array(history[-100:])
    assert abs(np.median(late) / true_q - 1) < 0.1
    # the fraction of fresh norms under the final clip is close to the target
    fresh = data.lognormal(mean=0.0, sigma=0.5, size=20_000)
    assert abs(np.mean(fresh <= np.median(late)) - quantile) < 0.05


def test_noise_multiplier_split_composes_back_to_z() -> None:
    z, sigma_b = 1.0, 5.0
    z_delta = update_noise_multiplier(z, count_noise_std=sigma_b)
    assert z_delta > z
    # RDP of Gaussians adds: 1/z_delta^2 + 1/(2 sigma_b)^2 == 1/z^2
    assert math.isclose(z_delta**-2 + (2 * sigma_b) ** -2, z**-2)
    state = AdaptiveClipState(clip=1.0, count_noise_std=sigma_b, expected_clients=100)
    assert count_event(state) == GaussianEvent(noise_multiplier=10.0)
    assert update_noise_multiplier(z, count_noise_std=0.0) == z
    with pytest.raises(PrivacyError):
        update_noise_multiplier(2.0, count_noise_std=1.0)  # 2 sigma_b <= z
    with pytest.raises(PrivacyError):
        count_event(AdaptiveClipState(clip=1.0))


def test_state_is_validated() -> None:
    with pytest.raises(PrivacyError):
        AdaptiveClipState(clip=-1.0)
    with pytest.raises(PrivacyError):
        AdaptiveClipState(clip=1.0, target_quantile=1.0)
    with pytest.raises(PrivacyError):
        AdaptiveClipState(clip=1.0, expected_clients=0)
