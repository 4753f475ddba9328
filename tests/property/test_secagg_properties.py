"""Property tests (hypothesis): the protocol sum is exact for random dropout patterns
up to n = 100; bit packing and Shamir sharing round-trip."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto.errors import RoundAbortedError
from crypto.prg import Csprng
from crypto.secagg import default_neighbors, pack_bits, simulate_round, unpack_bits
from crypto.secagg.graph import effective_degree
from crypto.shamir import reconstruct, split

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "crypto"))
from secagg_oracle import expected_outcome, simulated_graph  # noqa: E402

STAGES = ["advertise", "share_keys", "masked_input", "unmask"]


@st.composite
def rounds(draw: st.DrawFn) -> tuple[int, int, int | None, dict[int, str], int, int]:
    n = draw(st.integers(2, 100))
    complete = n <= 12 and draw(st.booleans())
    k = None if complete else default_neighbors(n)
    holders = effective_degree(n, k) + 1
    t = draw(st.integers(holders // 2 + 1, holders))
    rate = draw(st.sampled_from([0.0, 0.05, 0.1, 0.3]))
    who = draw(st.lists(st.integers(0, n - 1), max_size=max(1, int(rate * n)), unique=True))
    drop = {i: draw(st.sampled_from(STAGES)) for i in who}
    bits = draw(st.sampled_from([8, 13, 32]))
    seed = draw(st.integers(0, 2**32))
    return n, t, k, drop, bits, seed


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_sum_is_exact_for_random_dropouts(case: tuple[int, int, int | None, dict[int, str], int, int]) -> None:
    n, t, k, drop, bits, seed = case
    d = 5
    xs = [Csprng(seed.to_bytes(8, "big") + bytes(23) + bytes([i % 256])).uniform_mod_pow2(d, bits=bits)
          for i in range(n)]
    graph = simulated_graph(n, k, seed, drop)
    want = expected_outcome(n, t, graph, drop)
    if want is None:
        with pytest.raises(RoundAbortedError):
            simulate_round(xs, bits=bits, threshold=t, neighbors=k, drop=drop, seed=seed)
        return
    res = simulate_round(xs, bits=bits, threshold=t, neighbors=k, drop=drop, seed=seed)
    assert res.survivors == want
    assert np.array_equal(res.total, sum(xs[i].astype(np.uint64) for i in want) % (1 << bits))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 62), st.integers(1, 300), st.integers(0, 2**32))
def test_bit_packing_roundtrip(bits: int, count: int, seed: int) -> None:
    values = Csprng(seed.to_bytes(32, "big")).uniform_mod_pow2(count, bits=bits)
    packed = pack_bits(values, bits)
    assert len(packed) == (count * bits + 7) // 8
    assert np.array_equal(unpack_bits(packed, bits, count), values)


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(2, 7), st.data())
def test_shamir_any_t_subset_reconstructs(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    shares = split(secret, threshold=t, xs=list(range(1, n + 1)), rng=Csprng(secret))
    for subset in itertools.combinations(sorted(shares.items()), t):
        assert reconstruct(subset, threshold=t) == secret


# -- issue 13: no split view, bad inclusion or collusion unmasks an honest input -----------
sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "crypto"))
from secagg_adversary import SplitViewServer  # noqa: E402
from secagg_harness import graph_of, make  # noqa: E402

from crypto.errors import LocalProtocolError  # noqa: E402
from crypto.secagg import Stage  # noqa: E402
from crypto.secagg.parameters import check_parameters  # noqa: E402


@st.composite
def parameters(draw: st.DrawFn) -> tuple[int, int, int | None, int, int]:
    n = draw(st.integers(4, 40))
    c = draw(st.integers(0, 2))
    k = draw(st.one_of(st.none(), st.sampled_from([2, 4, 6, 8])))
    h = effective_degree(n, k) + 1
    feasible = []
    for t in range(1, h + 1):
        try:
            check_parameters(n, k, t, c)
            feasible.append(t)
        except LocalProtocolError:
            pass
    if not feasible:
        c, feasible = 0, list(range(h // 2 + 1, h + 1))
    return n, c, k, draw(st.sampled_from(feasible)), draw(st.integers(0, 255))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parameters(), st.data())
def test_released_shares_never_unmask_an_honest_input(
    params: tuple[int, int, int | None, int, int], data: st.DataObject
) -> None:
    """Random graphs; a victim told to mask with a random subset A of its neighbours;
    random survivor views (everyone alive minus a random set, biased to the victim's
    neighbourhood) shown to random groups of clients; up to c colluders, who sign every
    view and whose shares the server holds. The union of all shares the honest clients
    release never gives both b_u and every pairwise mask of an honest u whose masked
    input the server has."""
    n, c, k, t, seed = params
    h = make(n=n, t=t, d=2, neighbors=k, seed=seed, max_colluders=c)
    h.run_until(Stage.MASKED_INPUT)
    g = graph_of(h)
    u = data.draw(st.integers(0, n - 1), label="victim")
    nbrs = sorted(g[u])
    others = [v for v in range(n) if v != u]
    colluders = frozenset(data.draw(st.lists(st.sampled_from(others), max_size=c, unique=True), label="colluders"))
    if data.draw(st.booleans(), label="far A"):  # the neighbours whose holder sets overlap u's least
        far = sorted(nbrs, key=lambda a: (len(g[a] & g[u]), a))
        a_set = set(far[: data.draw(st.integers(max(1, t - 1), len(nbrs)), label="|A|")])
    else:
        a_set = set(data.draw(st.lists(st.sampled_from(nbrs), min_size=1, unique=True), label="A"))
    include = {u: tuple(sorted(a_set | {u}))} if data.draw(st.booleans(), label="shrink victim") else {}
    near = nbrs + sorted({w for v in nbrs for w in g[v]} - {u})
    removed = [
        set(data.draw(st.lists(st.sampled_from(near), unique=True), label=f"removed from view {j}"))
        for j in range(3)
    ]
    if data.draw(st.booleans(), label="split view"):  # issue 13 attack 1 and its variants
        removed[0] |= set(nbrs) - a_set  # u and A: u's other neighbours "dropped"
        removed[1] |= a_set  # everyone else: A "dropped", u survived
    group = {i: (0 if i in a_set or i == u else 1) for i in range(n)}
    for i in data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=4), label="regrouped"):
        group[i] = 2

    def view(i: int, alive: set[int]) -> tuple[int, ...]:
        return tuple(sorted((alive - removed[group[i]]) | {i}))

    server = SplitViewServer(h, colluders, include=include, view=view)
    know, masked = server.run()
    assert not know.exposed(h.clients, masked)
