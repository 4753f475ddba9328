"""Randomized Hadamard rotation: orthogonality, exact inverse, public-seed determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import hadamard

from privacy.errors import PrivacyError
from privacy.rotation import hadamard_transform, padded_dim, random_signs, rotate, unrotate

SEED = bytes(range(32))
OTHER = bytes(range(1, 33))


@pytest.mark.parametrize(("dim", "expected"), [(1, 1), (2, 2), (3, 4), (1000, 1024), (1024, 1024)])
def test_padded_dim(dim: int, expected: int) -> None:
    assert padded_dim(dim) == expected


def test_hadamard_matches_the_dense_matrix() -> None:
    x = np.random.default_rng(0).normal(size=64)
    dense = hadamard(64) @ x / 8.0
    np.testing.assert_allclose(hadamard_transform(x), dense, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hadamard_transform(hadamard_transform(x)), x, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 5, 127, 1000, 4096])
def test_rotation_preserves_norm_and_inverts_exactly(dim: int) -> None:
    x = np.random.default_rng(dim).normal(size=dim) * 3.0
    y = rotate(x, seed=SEED)
    assert y.shape == (padded_dim(dim),)
    assert abs(np.linalg.norm(y) - np.linalg.norm(x)) <= 1e-12 * np.linalg.norm(x)
    np.testing.assert_allclose(unrotate(y, seed=SEED, dim=dim), x, rtol=0, atol=1e-9)


def test_rotation_is_linear_so_the_server_can_unrotate_a_sum() -> None:
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=300) for _ in range(5)]
    total = sum(rotate(x, seed=SEED) for x in xs)
    np.testing.assert_allclose(unrotate(total, seed=SEED, dim=300), sum(xs), atol=1e-9)


def test_rotation_flattens_a_spike() -> None:
    x = np.zeros(1024)
    x[7] = 1.0
    y = rotate(x, seed=SEED)
    np.testing.assert_allclose(np.abs(y), np.full(1024, 1 / 32), atol=1e-15)


def test_signs_are_public_deterministic_and_seed_dependent() -> None:
    a, b, c = random_signs(SEED, 256), random_signs(SEED, 256), random_signs(OTHER, 256)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert not np.array_equal(a, c)
    assert abs(a.mean()) < 0.25
    x = np.arange(10.0)
    assert not np.allclose(rotate(x, seed=SEED), rotate(x, seed=OTHER))


def test_batched_rotation_along_the_last_axis() -> None:
    xs = np.random.default_rng(2).normal(size=(3, 20))
    ys = rotate(xs, seed=SEED)
    for i in range(3):
        np.testing.assert_allclose(ys[i], rotate(xs[i], seed=SEED), atol=1e-14)
    np.testing.assert_allclose(unrotate(ys, seed=SEED, dim=20), xs, atol=1e-9)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(PrivacyError):
        random_signs(b"short", 4)
    with pytest.raises(PrivacyError):
        hadamard_transform(np.ones(6))
    with pytest.raises(PrivacyError):
        unrotate(np.ones(8), seed=SEED, dim=20)
    with pytest.raises(PrivacyError):
        padded_dim(0)
