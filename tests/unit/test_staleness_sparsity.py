from __future__ import annotations

import numpy as np
import pytest

from secure_fl.errors import ConfigError, ProtocolError
from secure_fl.sparsity import MagnitudePruner, full_support, random_k_support
from secure_fl.staleness import StaleUpdateError, check_staleness, staleness_weight


def test_staleness_functions() -> None:
    assert staleness_weight(0, fn="polynomial", a=0.5) == 1.0
    assert staleness_weight(3, fn="polynomial", a=0.5) == pytest.approx(0.5)
    assert staleness_weight(8, fn="constant") == 1.0
    assert staleness_weight(4, fn="hinge", a=0.5, b=4) == 1.0
    assert staleness_weight(6, fn="hinge", a=0.5, b=4) == pytest.approx(0.5)
    weights = [staleness_weight(t, fn="polynomial", a=1.0) for t in range(10)]
    assert all(a > b for a, b in zip(weights, weights[1:], strict=False))
    with pytest.raises(ProtocolError):
        staleness_weight(-1, fn="constant")
    check_staleness(3, max_staleness=3)
    with pytest.raises(StaleUpdateError, match="exceeds"):
        check_staleness(4, max_staleness=3)


def test_random_k_support_is_public_and_deterministic() -> None:
    a = random_k_support(1000, density=0.1, round_seed=b"\x01" * 32)
    b = random_k_support(1000, density=0.1, round_seed=b"\x01" * 32)
    c = random_k_support(1000, density=0.1, round_seed=b"\x02" * 32)
    assert a.size == 100 and np.array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert np.all(np.diff(a.indices) > 0)
    v = np.arange(1000, dtype=np.float32)
    np.testing.assert_array_equal(a.scatter(a.gather(v))[a.indices], v[a.indices])
    assert a.scatter(a.gather(v)).sum() == v[a.indices].sum()
    with pytest.raises(ConfigError):
        random_k_support(10, density=0, round_seed=bytes(32))


def test_full_support_roundtrip() -> None:
    s = full_support(5)
    v = np.arange(5.0)
    np.testing.assert_array_equal(s.scatter(s.gather(v)), v)


def test_magnitude_pruner_schedule_and_no_rewinding() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=1000)
    p = MagnitudePruner(dim=1000, density=0.1, start=0, end=10)
    assert p.target_sparsity(0) == 0.0 and p.target_sparsity(10) == pytest.approx(0.9)
    kept_before = p.update(w, 1).copy()
    masks = [p.update(w * (1 + 0.01 * v), v).copy() for v in range(2, 12)]
    assert masks[-1].sum() == 100
    for earlier, later in zip([kept_before, *masks], masks, strict=False):
        assert not np.any(later & ~earlier), "a pruned weight came back"
    top = np.argsort(-np.abs(w))[:100]
    assert set(np.flatnonzero(masks[-1])) == set(top.tolist())


def test_pruner_respects_prunable_positions() -> None:
    prunable = np.zeros(100, dtype=bool)
    prunable[:50] = True
    p = MagnitudePruner(dim=100, density=0.6, start=0, end=1, prunable=prunable)  # 60 kept: 50 + 10
    mask = p.update(np.ones(100), 1)
    assert mask[50:].all() and mask[:50].sum() == 10


def test_memory_budget_subsets_fit_and_are_maximal() -> None:
    from secure_fl.config import ModelConfig
    from secure_fl.memory_budget import feasible_subsets, subset_memory, tensor_layout
    from secure_fl.models import build_model

    model = build_model(ModelConfig(kind="mlp", hidden=(64,)), (1, 8, 8), 10)
    layout = tensor_layout(model, (1, 8, 8))
    assert [t.size for t in layout] == [4096, 64, 640, 10]
    full = subset_memory(layout, frozenset(range(4)), batch_size=32)
    # 4 bytes x (d + 2 d + batch x (64 + 10)) for full training
    assert full == 4 * (4810 + 2 * 4810 + 32 * 74)
    subsets = feasible_subsets(layout, budget_fraction=0.5, batch_size=32)
    for s in subsets:
        assert subset_memory(layout, s, batch_size=32) <= 0.5 * full
        for extra in set(range(4)) - s:  # maximal: adding any tensor breaks the budget
            assert subset_memory(layout, s | {extra}, batch_size=32) > 0.5 * full
    with pytest.raises(ConfigError, match="no subset"):
        feasible_subsets(layout, budget_fraction=0.01, batch_size=32)
