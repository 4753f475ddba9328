"""Everything the server receives or stores is masked: no individual input in the clear."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from crypto.secagg import Interceptor, MaskedInput, Stage, decode, simulate_round

sys.path.insert(0, str(Path(__file__).parent))
from secagg_harness import make  # noqa: E402

D, BITS = 2000, 16


def _arrays(obj: Any, seen: set[int] | None = None) -> list[np.ndarray]:
    """Every numpy array reachable from ``obj`` (attributes, containers)."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return [obj]
    out: list[np.ndarray] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _arrays(k, seen) + _arrays(v, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            out += _arrays(v, seen)
    elif hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
        for name in list(getattr(obj, "__dict__", {})) + list(getattr(obj, "__slots__", ())):
            if hasattr(obj, name) and not callable(getattr(obj, name)):
                out += _arrays(getattr(obj, name), seen)
    return out


def _centered_corr(a: np.ndarray, b: np.ndarray) -> float:
    x = a.astype(np.float64) - a.mean()
    y = b.astype(np.float64) - b.mean()
    return float(abs(x @ y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12))


def _looks_like(arr: np.ndarray, x: np.ndarray) -> bool:
    if arr.shape != x.shape:
        return False
    diff = (arr.astype(np.int64) - x.astype(np.int64)) % (1 << BITS)
    # equal, or equal up to a constant offset, or correlated
    return bool(np.all(diff == diff[0])) or _centered_corr(arr, x) > 0.15


def test_server_state_during_the_round_holds_only_masked_data() -> None:
    h = make(n=5, t=3, d=D, bits=BITS)
    # structured inputs (an attacker's best case for spotting leakage)
    for i, c in enumerate(h.clients):
        x = (np.arange(D, dtype=np.uint32) * (i + 1)) % (1 << BITS)
        h.inputs[i] = x
        c._x = x  # same input for the client's masking
    for stage in (Stage.CONSISTENCY, Stage.UNMASK):
        h.run_until(stage)
        arrays = _arrays(h.server)
        assert len(arrays) == 1  # only the streaming accumulator (O(d))
        acc = arrays[0]
        assert acc.shape == (D,)
        for x in h.inputs:
            assert not _looks_like(acc & np.uint32((1 << BITS) - 1), x)
        total = sum(x.astype(np.uint64) for x in h.inputs) % (1 << BITS)
        assert not _looks_like(acc & np.uint32((1 << BITS) - 1), total.astype(np.uint32))


def test_every_masked_upload_is_unrelated_to_every_input() -> None:
    n = 6
    xs = [(np.arange(D, dtype=np.uint32) * (i + 3)) % (1 << BITS) for i in range(n)]
    received: list[np.ndarray] = []

    class Tap(Interceptor):
        def upload(self, sender: int, frame: bytes) -> list[tuple[int, bytes]]:
            msg = decode(frame)
            if isinstance(msg, MaskedInput):
                received.append(np.array(msg.vector))
            return [(sender, frame)]

    res = simulate_round(xs, bits=BITS, threshold=4, drop={2: "masked_input"}, seed=5, interceptor=Tap())
    assert len(received) == n - 1
    for y in received:
        for x in xs:
            assert not _looks_like(y, x)
        # masked uploads look uniform: every 16-bit value bucket is populated evenly
        counts = np.bincount(y >> np.uint32(12), minlength=16)
        assert counts.min() > D / 16 * 0.6
    assert res.survivors == [0, 1, 3, 4, 5]
    # the transcript stores sizes and digests only
    for rec in res.transcript:
        assert set(vars(rec)) == {"sender", "stage", "size", "sha256"}
