"""simulate_round returns the exact sum for every admissible drop pattern (exhaustive
for small n) and raises RoundAbortedError otherwise."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from crypto.errors import ProtocolError, RoundAbortedError
from crypto.secagg import simulate_round

sys.path.insert(0, str(Path(__file__).parent))
from secagg_oracle import expected_outcome, simulated_graph  # noqa: E402

CONTRACT_STAGES = [None, "advertise", "share_keys", "masked_input", "unmask"]
BITS = 8


def _inputs(n: int) -> list[np.ndarray]:
    return [(np.arange(3, dtype=np.uint32) * 37 + 91 * i + 200) % (1 << BITS) for i in range(n)]


def _graph_of(n: int, neighbors: int | None, seed: int, drop: dict[int, str]) -> tuple[frozenset[int], ...]:
    # the graph comes from the joint seed over the advertisements that were sent
    return simulated_graph(n, neighbors, seed, drop)


def _check(n: int, t: int, neighbors: int | None, drop: dict[int, str], seed: int) -> bool:
    xs = _inputs(n)
    want = expected_outcome(n, t, _graph_of(n, neighbors, seed, drop), drop)
    if want is None:
        with pytest.raises(RoundAbortedError):
            simulate_round(xs, bits=BITS, threshold=t, neighbors=neighbors, drop=drop, seed=seed)
        return False
    res = simulate_round(xs, bits=BITS, threshold=t, neighbors=neighbors, drop=drop, seed=seed)
    assert res.survivors == want
    expect = sum(xs[i].astype(np.uint64) for i in want) % (1 << BITS)
    assert np.array_equal(res.total, expect), (drop, res.total, expect)
    assert not res.excluded and not res.client_errors
    return True


@pytest.mark.parametrize(("n", "t", "neighbors"), [(2, 2, None), (3, 2, None), (4, 3, None), (5, 3, None), (4, 2, 2)])
def test_every_drop_pattern(n: int, t: int, neighbors: int | None) -> None:
    completed = aborted = 0
    for pattern in itertools.product(CONTRACT_STAGES, repeat=n):
        drop = {i: s for i, s in enumerate(pattern) if s is not None}
        if _check(n, t, neighbors, drop, seed=n * 100 + t):
            completed += 1
        else:
            aborted += 1
    assert completed and aborted  # both outcomes were exercised


@pytest.mark.parametrize("stage", ["check_shares", "consistency"])
def test_extra_drop_stages(stage: str) -> None:
    for who in range(4):
        _check(4, 3, None, {who: stage}, seed=7)
    _check(4, 3, None, {0: stage, 1: stage}, seed=7)


def test_too_few_survivors_raise_a_protocol_error() -> None:
    xs = _inputs(5)
    with pytest.raises(RoundAbortedError):
        simulate_round(xs, bits=BITS, threshold=3, drop={0: "masked_input", 1: "masked_input", 2: "unmask"})
    with pytest.raises(ProtocolError):
        simulate_round(xs, bits=BITS, threshold=3, drop={i: "advertise" for i in range(5)})


def test_dropped_client_masks_are_removed_with_many_neighbours() -> None:
    rng = np.random.default_rng(1)
    xs = [rng.integers(0, 2**32, size=50, dtype=np.uint32) for _ in range(12)]
    drop = {0: "masked_input", 7: "unmask", 9: "share_keys"}
    assert expected_outcome(12, 4, _graph_of(12, 5, 3, drop), drop) is not None
    res = simulate_round(xs, bits=32, threshold=4, neighbors=5, drop=drop, seed=3)
    assert res.survivors == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    assert np.array_equal(res.total, sum(xs[i].astype(np.uint64) for i in res.survivors) % 2**32)
    assert res.dropped == {"masked_input": [0], "unmask": [7], "share_keys": [9]}
    assert set(res.upload_bytes) == set(range(12)) and res.upload_bytes[9] < res.upload_bytes[1]
    assert all(len(r.sha256) == 64 for r in res.transcript)


def test_same_seed_same_round_fresh_seed_differs() -> None:
    xs = _inputs(3)
    a = simulate_round(xs, bits=BITS, threshold=2, seed=b"fixed")
    b = simulate_round(xs, bits=BITS, threshold=2, seed=b"fixed")
    c = simulate_round(xs, bits=BITS, threshold=2)
    assert [r.sha256 for r in a.transcript] == [r.sha256 for r in b.transcript]
    assert [r.sha256 for r in a.transcript] != [r.sha256 for r in c.transcript]
    assert np.array_equal(a.total, c.total)


def test_three_sites_one_colluder_abort_says_the_survivors_withdrew() -> None:
    """n = 3, t = 2, c = 1 (the Flower pilot): a site lost before masking leaves each
    survivor one mask partner, fewer than min(t + c, k + 1) - 1 = 2, so both withdraw and
    the round aborts rather than leak. The reason must say so, not "no live clients"
    (the deployment guide's dropout rehearsal showed only that)."""
    xs = _inputs(3)
    with pytest.raises(RoundAbortedError) as err:
        simulate_round(xs, bits=BITS, threshold=2, drop={2: "share_keys"}, seed=3, max_colluders=1)
    msg = str(err.value)
    assert "withdrew" in msg and "[0, 1]" in msg and "1 mask partner" in msg and "max_colluders 1" in msg
