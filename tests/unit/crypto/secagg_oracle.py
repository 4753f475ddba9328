"""Independent statement of when a SecAgg round must complete (test helper)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from crypto.prg import Csprng
from crypto.secagg import AdvertiseKeys, RoundConfig, RoundStart, SecAggClient
from crypto.secagg.simulate import _derive, _root_seed
from crypto.signatures import generate_identity, identity_public_bytes

ORDER = ["advertise", "share_keys", "check_shares", "masked_input", "consistency", "unmask"]


def sent(drop: Mapping[int, str], n: int, stage: str) -> set[int]:
    """Clients that still send their message of ``stage``."""
    k = ORDER.index(stage)
    return {i for i in range(n) if i not in drop or ORDER.index(drop[i]) > k}


def simulated_graph(
    n: int, neighbors: int | None, seed: int | bytes, drop: Mapping[int, str] | None = None
) -> tuple[frozenset[int], ...]:
    """The graph ``simulate_round(..., seed=seed)`` draws: from the joint seed over the
    signed advertisements of the clients that do not drop at "advertise"."""
    root = _root_seed(seed)
    ids = [generate_identity(Csprng(_derive(root, "identity", i))) for i in range(n)]
    holders = n if neighbors is None or neighbors + neighbors % 2 >= n - 1 else neighbors + neighbors % 2 + 1
    cfg = RoundConfig(
        session_id=_derive(root, "session"),
        round_number=0,
        bits=8,
        length=1,
        threshold=holders // 2 + 1,
        identity_keys=tuple(identity_public_bytes(k) for k in ids),
        graph_seed=_derive(root, "graph"),
        neighbors=neighbors,
    )
    ads: list[AdvertiseKeys] = []
    for i in sorted(sent(drop or {}, n, "advertise")):
        client = SecAggClient(
            cfg, index=i, identity_key=ids[i], vector=np.zeros(1, dtype=np.uint32),
            rng=Csprng(_derive(root, "client", i)), min_cohort_size=2, min_threshold=1, min_neighbors=1,
        )
        (ad,) = client.receive(RoundStart(session_id=cfg.session_id, round_number=0, recipient=i))
        assert isinstance(ad, AdvertiseKeys)
        ads.append(ad)
    return cfg.graph(cfg.joint_graph_seed(ads))


def expected_outcome(
    n: int, t: int, graph: Sequence[frozenset[int]], drop: Mapping[int, str], c: int = 0
) -> list[int] | None:
    """Sorted survivors if the round must complete, ``None`` if it must abort.

    Besides ``t`` live holders per client at every stage, the consistency signatures
    must reach the cohort quorum ``floor((n + c) / 2) + 1``.
    """

    def holders(v: int) -> set[int]:
        return set(graph[v]) | {v}

    def every_live_has_t(live: set[int]) -> bool:
        return bool(live) and all(len(holders(v) & live) >= t for v in live)

    a1, a2, a2b, a3, a4, a5 = (sent(drop, n, s) for s in ORDER)
    if not all(every_live_has_t(s) for s in (a1, a2, a2b, a3)):
        return None
    if not all(len(holders(v) & a4) >= t for v in a4):
        return None
    if len(a4) < (n + c) // 2 + 1:
        return None
    for u in a3:
        if len(holders(u) & a5) < t:
            return None
    for u in a2b - a3:
        if set(graph[u]) & a3 and len(holders(u) & a5) < t:
            return None
    return sorted(a3)
