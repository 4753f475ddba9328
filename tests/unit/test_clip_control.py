from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from secure_fl import load_config, run
from secure_fl.clip_control import ClipController
from secure_fl.errors import ConfigError

PLAIN = Path(__file__).resolve().parents[1] / "plain.toml"


def _controller(*overrides: str, clients: int = 100) -> ClipController:
    config = load_config(PLAIN, ["dp.mechanism=gaussian", "dp.noise_multiplier=1.5",
                                 "dp.adaptive_clip=true", "dp.clip=0.8", *overrides])
    return ClipController(config, expected_clients=clients)


def test_noise_splits_between_update_and_count_as_andrew_et_al_theorem_1() -> None:
    c = _controller()
    z, sigma_b, clip = 1.5, 100 / 20, 0.8
    z_delta = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
    assert c.z_delta == pytest.approx(z_delta)
    # Noise z * C' per coordinate of the joint vector:
    assert z * c.mechanism_clip == pytest.approx(z_delta * clip)  # on the update: z_Delta C
    assert z * c.mechanism_clip / c.kappa == pytest.approx(sigma_b)  # on the count: sigma_b
    v = c.client_vector(np.full(4, 10.0), weight=1.0)  # norm 20 > C: clipped, indicator -1/2
    assert np.linalg.norm(v[:-1]) == pytest.approx(clip)
    assert v[-1] == pytest.approx(-0.5 * c.kappa)
    assert np.linalg.norm(v) <= c.mechanism_clip + 1e-12


def test_clip_moves_toward_the_target_quantile() -> None:
    c = _controller()
    before = c.clip
    fraction = c.observe(-50.0, num_clients=100)  # every update was clipped: b_tilde = 0
    assert fraction == 0.0
    assert c.clip == pytest.approx(before * math.exp(0.2 * 0.5))
    c.observe(50.0, num_clients=100)  # nothing clipped: b_tilde = 1, clip shrinks
    assert c.clip == pytest.approx(before * math.exp(0.2 * 0.5) * math.exp(-0.2 * 0.5))


def test_adaptive_clipping_needs_noise_and_enough_count_noise() -> None:
    with pytest.raises(ConfigError, match="dp.adaptive_clip"):
        ClipController(load_config(PLAIN, ["dp.adaptive_clip=true"]), expected_clients=10)
    with pytest.raises(ConfigError, match="dp.clip_count_stddev"):
        _controller(clients=10)  # sigma_b = 0.5 <= z / 2


@pytest.mark.parametrize(("protocol", "mechanism"),
                         [("plain", "gaussian"), ("ckks", "gaussian"), ("secagg", "discrete_gaussian")])
def test_runs_adapt_the_clip_and_keep_the_epsilon(protocol: str, mechanism: str) -> None:
    common = [f"protocol={protocol}", f"dp.mechanism={mechanism}", "dp.noise_multiplier=1.0",
              "clients.num=40", "rounds=6", "train.lr=0.1"]
    fixed = run(load_config(PLAIN, [*common, "dp.clip=0.05"]), write=False, progress=False)
    adaptive = run(load_config(PLAIN, [*common, "dp.clip=0.05", "dp.adaptive_clip=true"]),
                   write=False, progress=False)
    clips = [m["clip"] for m in adaptive.metrics]
    assert clips[-1] > 1.3 * clips[0], clips  # 0.05 clips almost everything: C grows
    assert all(f is not None and f < 0.5 for f in
               (m["unclipped_fraction"] for m in adaptive.metrics[:3]))
    # The count rides in the same noised vector: the privacy cost is unchanged.
    # (plain has no guarantee against the server: compare its released-model figure)
    key = "epsilon_released_model" if protocol == "plain" else "epsilon"
    assert adaptive.summary[key] == pytest.approx(fixed.summary[key], rel=1e-3)
