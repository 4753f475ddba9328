"""The SecAgg+ communication graph (Bell et al., "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead", CCS'20).

SecAgg+ replaces the complete graph of SecAgg by a sparse k-regular graph: client
``u`` agrees pairwise masks only with its neighbours ``N(u)`` and Shamir-shares its
secrets only among ``N(u) ∪ {u}``. Bell et al. prove that a random graph with
``k = O(log n)`` keeps the sum private and the round recoverable with high
probability for constant corruption and dropout rates; client cost drops from
``O(n d)`` to ``O(log n · d)``.

Construction (public and deterministic): draw a permutation ``π`` of the ``n``
clients from the CSPRNG keyed with ``HKDF(seed, info="secagg-graph" || n || k)`` and
connect each client to the ``k/2`` clients on either side of it on the ring ordered
by ``π`` (a Harary graph H_{k,n} under a random labelling, the construction used in
deployed SecAgg+ implementations). ``k`` is rounded up to an even number; if
``k >= n - 1`` the graph is complete. Everyone who knows (seed, n, k) computes the
same graph, so the server cannot choose neighbourhoods.

:func:`default_neighbors` picks ``k = min(n - 1, even ceil(3 log2 n))`` (20 for
n = 100, 30 for n = 1000): the O(log n) regime of the paper with a constant that
leaves room for a threshold majority among ~10% dropouts. Choose ``k`` explicitly
for a stated threat model.
"""

from __future__ import annotations

import functools
import math
import struct

from crypto.errors import LocalProtocolError
from crypto.key_agreement import hkdf_sha256
from crypto.prg import Csprng

__all__ = ["complete_graph", "default_neighbors", "effective_degree", "neighbor_graph"]


def default_neighbors(n: int) -> int:
    """Default SecAgg+ degree for ``n`` clients: the smallest even ``k >= 3 log2 n``, capped at n-1."""
    if n < 2:
        raise LocalProtocolError(f"secure aggregation needs at least 2 clients, got {n}")
    k = math.ceil(3 * math.log2(n))
    k += k % 2
    return min(n - 1, k)


def effective_degree(n: int, k: int | None) -> int:
    """Degree of every node of :func:`neighbor_graph` (n-1 for the complete graph)."""
    if k is None:
        return n - 1
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LocalProtocolError(f"neighbors must be a positive integer or None, got {k!r}")
    even = k + (k % 2)
    return n - 1 if even >= n - 1 else even


def complete_graph(n: int) -> tuple[frozenset[int], ...]:
    """``N(u) = {0..n-1} minus {u}`` (classic SecAgg)."""
    everyone = frozenset(range(n))
    return tuple(everyone - {u} for u in range(n))


@functools.lru_cache(maxsize=64)
def neighbor_graph(seed: bytes, n: int, k: int | None) -> tuple[frozenset[int], ...]:
    """``N(u)`` for ``u = 0..n-1``: complete for ``k=None``, else the random Harary graph."""
    if n < 2:
        raise LocalProtocolError(f"secure aggregation needs at least 2 clients, got {n}")
    degree = effective_degree(n, k)
    if degree == n - 1:
        return complete_graph(n)
    rng = Csprng(hkdf_sha256(seed, info=b"secure-fl/secagg/v1/graph" + struct.pack(">II", n, degree)))
    order = list(range(n))
    for i in range(n - 1, 0, -1):  # Fisher-Yates with exact CSPRNG draws
        j = rng.randbelow(i + 1)
        order[i], order[j] = order[j], order[i]
    half = degree // 2
    nbrs: list[set[int]] = [set() for _ in range(n)]
    for pos, u in enumerate(order):
        for off in range(1, half + 1):
            v = order[(pos + off) % n]
            nbrs[u].add(v)
            nbrs[v].add(u)
    return tuple(frozenset(s) for s in nbrs)
