from __future__ import annotations

import numpy as np
import pytest

from secure_fl.aggregation import ClientUpdate, PlainAggregator
from secure_fl.config import ServerConfig
from secure_fl.server_opt import ServerOptimizer


def test_plain_weighted_mean_excludes_dropped() -> None:
    ups = [
        ClientUpdate(0, np.array([1.0, 0.0], dtype=np.float32), 1.0),
        ClientUpdate(1, np.array([0.0, 2.0], dtype=np.float32), 3.0),
        ClientUpdate(2, np.array([9.0, 9.0], dtype=np.float32), 5.0, drop_stage="upload"),
    ]
    out = PlainAggregator().aggregate(ups, round_index=1)
    assert out.mean is not None
    np.testing.assert_allclose(out.mean, [0.25, 1.5])
    assert out.survivors == (0, 1)
    assert out.dropped == {"upload": [2]}
    assert out.upload_bytes == {0: 8, 1: 8}
    assert [r.sender for r in out.transcript] == [0, 1]


def test_plain_aborts_when_nothing_arrives() -> None:
    ups = [ClientUpdate(0, np.zeros(2, dtype=np.float32), 1.0, drop_stage="upload")]
    out = PlainAggregator().aggregate(ups, round_index=1)
    assert out.mean is None and out.aborted


def test_server_sgd_momentum_adam_arithmetic() -> None:
    w = np.array([1.0, -1.0])
    d = np.array([0.5, 0.25])
    np.testing.assert_allclose(ServerOptimizer(ServerConfig(optimizer="sgd", lr=2.0)).step(w, d), [2.0, -0.5])
    mom = ServerOptimizer(ServerConfig(optimizer="momentum", lr=1.0, momentum=0.5))
    w1 = mom.step(w, d)
    w2 = mom.step(w1, d)  # m = 0.5 * d + d
    np.testing.assert_allclose(w2, w1 + 1.5 * d)
    adam = ServerOptimizer(ServerConfig(optimizer="adam", lr=0.1, momentum=0.9, beta2=0.99, tau=1e-3))
    m = 0.1 * d
    v = 0.01 * d * d
    np.testing.assert_allclose(adam.step(w, d), w + 0.1 * m / (np.sqrt(v) + 1e-3))
    with pytest.raises(ValueError, match="shape"):
        ServerOptimizer(ServerConfig()).step(w, np.zeros(3))
