"""Issue 13: the attacks that succeeded against SecAgg+ fail now.

Each test runs the honest ``SecAggClient`` (and, where the server is not the
attacker, the honest ``SecAggServer``) through the real wire format against a
scripted malicious server and/or colluding clients, and asserts either that nothing
about an individual input is released (the adversary cannot unmask any honest
client's masked input) or that the round completes without hurting the victim.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from crypto.errors import ProtocolError, RemoteProtocolError
from crypto.prg import Csprng
from crypto.secagg import (
    AdvertiseKeys,
    KeyBroadcast,
    SecAggClient,
    ShareReceipt,
    Stage,
    UnmaskShares,
    default_neighbors,
)
from crypto.secagg.client import ADVERTISE_CONTEXT
from crypto.secagg.graph import effective_degree
from crypto.secagg.messages import advertise_payload
from crypto.signatures import sign

sys.path.insert(0, str(Path(__file__).parent))
from secagg_adversary import SplitViewServer, drive  # noqa: E402
from secagg_harness import graph_of, make  # noqa: E402

P = (1 << 255) - 19
LOW_ORDER = [0, 1, P - 1, 325606250916557431795983626356110631294008115727848805560023387167927233504]


def majority(n: int, k: int | None) -> int:
    return (effective_degree(n, k) + 1) // 2 + 1


def total_ok(h, survivors) -> bool:  # type: ignore[no-untyped-def]
    want = sum(h.inputs[i].astype(np.uint64) for i in survivors) % (1 << h.config.bits)
    return bool(np.array_equal(h.server.total, want))


# -- attack 1: split view on the sparse graph ---------------------------------------------
@pytest.mark.parametrize("n", [20, 50, 100, 200])
def test_attack1_split_view_on_default_graph_releases_nothing(n: int) -> None:
    k = default_neighbors(n)
    t = majority(n, k)
    h = make(n=n, t=t, d=4, neighbors=k, seed=n % 256)
    h.run_until(Stage.MASKED_INPUT)
    g = graph_of(h)
    u = 0
    hold = lambda v: g[v] | {v}  # noqa: E731
    # A: the t-1 neighbours of u whose holder sets overlap u's least (so that the
    # clients outside U = A + u hold t shares of every A member's mask key)
    A = sorted(sorted(g[u], key=lambda a: (len(hold(a) & hold(u)), a))[: t - 1])
    U = {u, *A}
    everyone = set(range(n))

    def view(i: int, alive: set[int]) -> tuple[int, ...]:
        if i in U:  # u's other neighbours "dropped": u masked with A only
            return tuple(sorted(alive - (g[u] - set(A))))
        return tuple(sorted(alive - set(A)))  # L: A "dropped", u survived

    server = SplitViewServer(h, frozenset(), include={u: tuple(sorted(U))}, view=view)
    know, masked = server.run()
    assert u in masked
    assert not know.exposed(h.clients, masked), "the split view unmasked an honest input"
    assert not (know.knows_b(u) and all(know.knows_s(a) for a in A))
    assert everyone  # (the scripted server saw every client)


# -- attack 2: false complaints ------------------------------------------------------------
def _false_complaints(n: int, t: int, k: int | None) -> None:
    h = make(n=n, t=t, d=4, neighbors=k, seed=2)
    h.run_until(Stage.CHECK_SHARES)
    g = graph_of(h)
    u = 0
    # the t-1 neighbours of u that see most of u's neighbourhood collude
    colluders = frozenset(sorted(g[u], key=lambda a: (-len(g[a] & g[u]), a))[: t - 1])
    victims = g[u] - colluders

    def accuse(msg):  # type: ignore[no-untyped-def]
        if isinstance(msg, ShareReceipt) and msg.sender in colluders:
            return dataclasses.replace(msg, complaints=tuple(sorted(g[msg.sender] & victims)))
        return msg

    know, masked, errors = drive(h, colluders, up=accuse)
    assert not errors
    assert h.server.stage is Stage.DONE
    assert not know.exposed(h.clients, masked)
    assert victims & h.clients[u]._mask_set, "u lost its honest partners"
    assert set(h.server.survivors) == set(range(n))  # nobody was removed, only edges
    assert total_ok(h, h.server.survivors)


def test_attack2_false_complaints_n40_cannot_isolate_a_client() -> None:
    _false_complaints(40, 9, default_neighbors(40))


def test_attack2_false_complaints_three_sites() -> None:
    _false_complaints(3, 2, None)


# -- attack 3: a signed small-order key ----------------------------------------------------
def _resign(h, msg: AdvertiseKeys, **changes) -> AdvertiseKeys:  # type: ignore[no-untyped-def]
    bad = dataclasses.replace(msg, **changes)
    payload = advertise_payload(bad.session_id, bad.round_number, bad.sender, bad.c_pk, bad.s_pk)
    return dataclasses.replace(bad, signature=sign(h.identities[bad.sender], payload, context=ADVERTISE_CONTEXT))


@pytest.mark.parametrize(("n", "k"), [(3, None), (40, default_neighbors(40))])
@pytest.mark.parametrize("point", LOW_ORDER)
def test_attack3_low_order_key_excludes_only_its_sender(n: int, k: int | None, point: int) -> None:
    h = make(n=n, t=majority(n, k), d=4, neighbors=k, seed=3)
    bad = 1

    def low(msg):  # type: ignore[no-untyped-def]
        if isinstance(msg, AdvertiseKeys) and msg.sender == bad:
            return _resign(h, msg, s_pk=point.to_bytes(32, "little"))
        return msg

    know, masked, errors = drive(h, frozenset({bad}), up=low)
    assert not errors, errors  # no honest client aborted itself
    assert h.server.stage is Stage.DONE
    assert bad in h.server.excluded and "X25519" in h.server.excluded[bad]
    assert set(h.server.survivors) == set(range(n)) - {bad}
    assert total_ok(h, h.server.survivors)


def test_attack3_client_skips_a_bad_key_forwarded_by_the_server() -> None:
    h = make(n=5, t=3, seed=4).run_until(Stage.SHARE_KEYS)
    msg = h.to(0)
    assert isinstance(msg, KeyBroadcast)
    keys = tuple(_resign(h, a, c_pk=(P - 1).to_bytes(32, "little")) if a.sender == 2 else a for a in msg.keys)
    out = h.clients[0].receive(dataclasses.replace(msg, keys=keys))  # does not raise
    assert {v for v, _ in out[0].ciphertexts} == {1, 3, 4}  # type: ignore[attr-defined]
    assert "invalid public key" in h.clients[0].skipped_peers[2]


# -- attack 4: one wrong unmask share ------------------------------------------------------
@pytest.mark.parametrize(("n", "k", "kind"), [(3, None, "b"), (40, 16, "b"), (40, 16, "s")])
def test_attack4_wrong_share_is_corrected_and_its_sender_named(n: int, k: int | None, kind: str) -> None:
    h = make(n=n, t=majority(n, k), d=4, neighbors=k, seed=5)
    liar = 1
    if kind == "s":  # a neighbour of the liar drops after sharing keys: s_sk shares are needed
        dropped = min(graph_of(h.run_until(Stage.SHARE_KEYS))[liar])
        real = h.clients[dropped].receive
        h.clients[dropped].receive = (  # type: ignore[method-assign]
            lambda m: [] if m.stage.order >= Stage.MASKED_INPUT.order else real(m)
        )

    def lie(msg):  # type: ignore[no-untyped-def]
        if isinstance(msg, UnmaskShares) and msg.sender == liar:
            field = "self_mask_shares" if kind == "b" else "key_shares"
            pairs = list(getattr(msg, field))
            o, y = pairs[0]
            pairs[0] = (o, (y + 1) % ((1 << 256) + 297))
            return dataclasses.replace(msg, **{field: tuple(pairs)})
        return msg

    know, masked, errors = drive(h, frozenset(), up=lie)
    assert h.server.stage is Stage.DONE, "round aborted over one wrong share"
    assert liar in h.server.excluded and "wrong share" in h.server.excluded[liar]
    assert total_ok(h, h.server.survivors)


# -- attack 5: the server chooses the graph, the threshold, the cohort ----------------------
def test_attack5_client_floors_refuse_small_rounds() -> None:
    h = make(n=2, t=2, seed=6)
    with pytest.raises(RemoteProtocolError, match="cohort size 2 is below its floor 3"):
        SecAggClient(h.config, index=0, identity_key=h.identities[0], vector=h.inputs[0], rng=Csprng(bytes(32)))
    h5 = make(n=5, t=3, seed=6)
    with pytest.raises(RemoteProtocolError, match="threshold 3 is below its floor 4"):
        SecAggClient(h5.config, index=0, identity_key=h5.identities[0], vector=h5.inputs[0],
                     rng=Csprng(bytes(32)), min_threshold=4)
    with pytest.raises(RemoteProtocolError, match="t > c"):  # sized for c = 0, I assume c = 3
        SecAggClient(h5.config, index=0, identity_key=h5.identities[0], vector=h5.inputs[0],
                     rng=Csprng(bytes(32)), max_colluders=3)
    h40 = make(n=40, t=3, neighbors=4, seed=6)
    with pytest.raises(RemoteProtocolError, match="neighbour count 4 is below its floor 8"):
        SecAggClient(h40.config, index=0, identity_key=h40.identities[0], vector=h40.inputs[0],
                     rng=Csprng(bytes(32)), min_neighbors=8)


def test_attack5_graph_seed_is_joint_randomness() -> None:
    # Same server-chosen salt, different advertisements: a different graph; one changed
    # or omitted advertisement changes it, so the server cannot pick the graph alone.
    h = make(n=30, t=majority(30, 6), neighbors=6, seed=7).run_until(Stage.SHARE_KEYS)
    ads = h.to(0).keys  # type: ignore[attr-defined]
    seed = h.config.joint_graph_seed(ads)
    assert h.config.graph(seed) == graph_of(h)
    assert h.config.joint_graph_seed(ads[1:]) != seed
    changed = (_resign(h, ads[0], c_pk=ads[1].s_pk), *ads[1:])
    assert h.config.joint_graph_seed(changed) != seed
    graphs = {h.config.graph(h.config.joint_graph_seed(ads[:i] + ads[i + 1:])) for i in range(5)}
    assert len(graphs) == 5


def test_attack5_client_shown_other_advertisements_cannot_be_counted() -> None:
    # The server shows client 0 a different advertisement set (so a different graph):
    # client 0's signatures are over another joint seed and count for nobody.
    h = make(n=12, t=majority(12, 4), neighbors=4, seed=8).run_until(Stage.SHARE_KEYS)
    msg = h.to(0)
    ads = msg.keys  # type: ignore[attr-defined]
    missing = next(a.sender for a in ads if a.sender not in (0,) and a.sender not in graph_of(h)[0])
    try:
        h.clients[0].receive(dataclasses.replace(msg, keys=tuple(a for a in ads if a.sender != missing)))
    except ProtocolError:
        return  # refused outright: nothing released
    assert h.clients[0]._joint_seed != h.config.joint_graph_seed(ads)


# -- sizing for c colluders -----------------------------------------------------------------
def test_parameters_are_sized_for_c_and_impossible_ones_are_config_errors() -> None:
    from crypto.errors import LocalProtocolError
    from crypto.secagg.parameters import secagg_parameters
    from secure_fl.config import DEFAULT_CONFIG_PATH, load_config
    from secure_fl.errors import ConfigError

    p = secagg_parameters(100, max_colluders=1)
    assert (p.neighbors, p.holders, p.threshold, p.quorum) == (20, 21, 12, 51)
    assert 2 * p.threshold > p.holders + 1 and p.holders >= p.threshold + 1
    assert secagg_parameters(3, max_colluders=1).threshold == 2  # three sites, one colluder
    with pytest.raises(LocalProtocolError, match="fewer than c \\+ 1"):
        secagg_parameters(3, max_colluders=2)
    with pytest.raises(LocalProtocolError, match="t > c"):
        secagg_parameters(10, max_colluders=3, threshold=3, neighbors=4)
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT_CONFIG_PATH, ["secagg.threshold=5"])
    assert info.value.field == "secagg.threshold" and "2t > k + 1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT_CONFIG_PATH, ["clients.num=3", "threat.max_colluders=2"])
    assert info.value.field == "threat.max_colluders"
