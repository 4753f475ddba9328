"""A buffer with mixed staleness aggregates, under secure aggregation, to the
staleness-weighted mean computed in plaintext (within quantization / CKKS error)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crypto.prg import Csprng
from secure_fl.aggregation import ClientUpdate
from secure_fl.config import load_config
from secure_fl.protocols import CkksAggregator, SecAggAggregator
from secure_fl.staleness import staleness_weight

PLAIN = Path(__file__).resolve().parents[1] / "plain.toml"


def _buffer(dim: int) -> tuple[list[ClientUpdate], np.ndarray]:
    rng = np.random.default_rng(7)
    taus = [0, 1, 3, 0, 7, 2]
    updates, num, den = [], np.zeros(dim), 0.0
    for cid, tau in enumerate(taus):
        delta = rng.normal(scale=0.05, size=dim).astype(np.float32)
        w = staleness_weight(tau, fn="polynomial", a=0.5) * (0.5 + 0.1 * cid)  # x sample ratio
        updates.append(ClientUpdate(cid, delta, w))
        num += w * delta.astype(np.float64)
        den += w
    return updates, num / den


@pytest.mark.parametrize("protocol", ["secagg", "ckks"])
def test_mixed_staleness_buffer_equals_plaintext_weighted_mean(protocol: str) -> None:
    dim = 300
    config = load_config(PLAIN, [f"protocol={protocol}", "dp.clip=10.0", "aggregation.mode=async",
                                 "clients.per_round=6", "aggregation.buffer_size=6"])
    agg_cls = SecAggAggregator if protocol == "secagg" else CkksAggregator
    aggregator = agg_cls(config, dim=dim, rng=Csprng(bytes(32)))
    updates, expected = _buffer(dim)
    out = aggregator.aggregate(updates, round_index=1)
    assert out.mean is not None and out.survivors == tuple(range(6))
    # secagg: 32-bit fixed point at scale ~2^31 / (6 * 10); ckks: 1e-6 of the bound.
    np.testing.assert_allclose(out.mean, expected, atol=1e-5)
    # The weights themselves stay secret: only their sum is decoded (last coordinate).
    assert all(u.weight not in (out.measurements or {}).values() for u in updates)


def test_secagg_buffer_with_a_dropout_weights_only_the_survivors() -> None:
    dim = 200
    config = load_config(PLAIN, ["protocol=secagg", "dp.clip=10.0"])
    updates, _ = _buffer(dim)
    updates[2] = ClientUpdate(2, updates[2].delta, updates[2].weight, drop_stage="masked_input")
    out = SecAggAggregator(config, dim=dim, rng=Csprng(bytes(32))).aggregate(updates, round_index=1)
    live = [u for u in updates if u.drop_stage is None]
    expected = sum(u.weight * u.delta.astype(np.float64) for u in live) / sum(u.weight for u in live)
    assert out.mean is not None and 2 not in out.survivors
    np.testing.assert_allclose(out.mean, expected, atol=1e-5)
