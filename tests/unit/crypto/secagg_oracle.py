"""Independent statement of when a SecAgg round must complete (test helper)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

ORDER = ["advertise", "share_keys", "check_shares", "masked_input", "consistency", "unmask"]


def sent(drop: Mapping[int, str], n: int, stage: str) -> set[int]:
    """Clients that still send their message of ``stage``."""
    k = ORDER.index(stage)
    return {i for i in range(n) if i not in drop or ORDER.index(drop[i]) > k}


def expected_outcome(
    n: int, t: int, graph: Sequence[frozenset[int]], drop: Mapping[int, str]
) -> list[int] | None:
    """Sorted survivors if the round must complete, ``None`` if it must abort."""

    def holders(v: int) -> set[int]:
        return set(graph[v]) | {v}

    def every_live_has_t(live: set[int]) -> bool:
        return bool(live) and all(len(holders(v) & live) >= t for v in live)

    a1, a2, a2b, a3, a4, a5 = (sent(drop, n, s) for s in ORDER)
    if not all(every_live_has_t(s) for s in (a1, a2, a2b, a3)):
        return None
    if not all(len(holders(v) & a4) >= t for v in a4):
        return None
    for u in a3:
        if len(holders(u) & a5) < t:
            return None
    for u in a2b - a3:
        if set(graph[u]) & a3 and len(holders(u) & a5) < t:
            return None
    return sorted(a3)
