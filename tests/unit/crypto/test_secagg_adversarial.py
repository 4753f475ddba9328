"""Attacks on the protocol fail: honest parties refuse, bad clients are excluded, and
the round completes when enough honest clients remain."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from crypto.errors import LocalProtocolError, ProtocolError, RemoteProtocolError, RoundAbortedError
from crypto.secagg import (
    AdvertiseKeys,
    ConsistencySignature,
    DownlinkMessage,
    EncryptedShares,
    Interceptor,
    KeyBroadcast,
    MaskedInput,
    RoundStart,
    Stage,
    UnmaskRequest,
    decode,
    encode,
    simulate_round,
)
from crypto.secagg.client import CONSISTENCY_CONTEXT
from crypto.secagg.messages import consistency_payload
from crypto.signatures import sign

sys.path.insert(0, str(Path(__file__).parent))
from secagg_harness import make  # noqa: E402

N, T, D, BITS = 5, 3, 32, 16
XS = [np.random.default_rng(i).integers(0, 2**BITS, size=D, dtype=np.uint32) for i in range(N)]


def expected(survivors: list[int]) -> np.ndarray:
    return sum(XS[i].astype(np.uint64) for i in survivors) % (1 << BITS)


class Rewrite(Interceptor):
    """Apply ``fn(message) -> list[frame]`` to uploads of ``who`` of type ``kind``."""

    def __init__(self, who: int, kind: type, fn) -> None:  # type: ignore[no-untyped-def]
        self.who, self.kind, self.fn = who, kind, fn

    def upload(self, sender: int, frame: bytes) -> list[tuple[int, bytes]]:
        msg = decode(frame)
        if sender == self.who and isinstance(msg, self.kind):
            return [(sender, f) for f in self.fn(msg, frame)]
        return [(sender, frame)]


def run(interceptor: Interceptor, seed: int = 1, **kw):  # type: ignore[no-untyped-def]
    return simulate_round(XS, bits=BITS, threshold=T, seed=seed, interceptor=interceptor, **kw)


def assert_completed_without(res, bad: int) -> None:  # type: ignore[no-untyped-def]
    assert bad in res.excluded
    assert bad not in res.survivors
    assert res.survivors == [i for i in range(N) if i != bad]
    assert np.array_equal(res.total, expected(res.survivors))


# -- malicious clients -------------------------------------------------------------------
def test_forged_key_advertisement_is_excluded() -> None:
    def forge(msg, frame):  # type: ignore[no-untyped-def]
        return [encode(dataclasses.replace(msg, signature=bytes(64)))]

    res = run(Rewrite(2, AdvertiseKeys, forge))
    assert_completed_without(res, 2)
    assert "signature" in res.excluded[2]


def test_substituted_public_key_is_excluded() -> None:
    def swap(msg, frame):  # type: ignore[no-untyped-def]
        return [encode(dataclasses.replace(msg, c_pk=bytes([9]) * 32))]  # signature no longer matches

    assert_completed_without(run(Rewrite(4, AdvertiseKeys, swap)), 4)


def test_duplicate_message_is_refused_and_sender_excluded() -> None:
    res = run(Rewrite(1, EncryptedShares, lambda m, f: [f, f]))
    assert_completed_without(res, 1)
    assert "duplicate" in res.excluded[1]


def test_message_replayed_from_another_session_is_refused() -> None:
    captured: dict[str, bytes] = {}

    class Capture(Interceptor):
        def upload(self, sender: int, frame: bytes) -> list[tuple[int, bytes]]:
            if sender == 3 and isinstance(decode(frame), AdvertiseKeys):
                captured["adv"] = frame
            return [(sender, frame)]

    run(Capture(), seed=10)
    res = run(Rewrite(3, AdvertiseKeys, lambda m, f: [captured["adv"]]), seed=11)
    assert_completed_without(res, 3)
    assert "another session" in res.excluded[3]


def test_message_replayed_into_a_later_stage_is_refused() -> None:
    old: dict[str, bytes] = {}

    class Replay(Interceptor):
        def upload(self, sender: int, frame: bytes) -> list[tuple[int, bytes]]:
            msg = decode(frame)
            if sender == 0 and isinstance(msg, AdvertiseKeys):
                old["adv"] = frame
            if sender == 0 and isinstance(msg, MaskedInput):
                return [(0, old["adv"]), (0, frame)]
            return [(sender, frame)]

    res = run(Replay())
    assert_completed_without(res, 0)  # its pairwise masks were removed via its key shares
    assert "illegal transition" in res.excluded[0] and "masked_input" in res.excluded[0]


def test_message_from_outside_the_cohort_is_refused() -> None:
    class Outsider(Interceptor):
        def upload(self, sender: int, frame: bytes) -> list[tuple[int, bytes]]:
            msg = decode(frame)
            if isinstance(msg, MaskedInput) and sender == 0:
                fake = dataclasses.replace(msg, sender=7)  # client 7 does not exist
                spoof = dataclasses.replace(msg, vector=np.zeros(D, dtype=np.uint32))  # claims to be 0
                return [(7, encode(fake)), (9, encode(spoof)), (sender, frame)]
            return [(sender, frame)]

    res = run(Outsider())
    assert res.survivors == list(range(N))
    assert not res.excluded
    assert np.array_equal(res.total, expected(res.survivors))


def test_server_refuses_non_member_directly() -> None:
    h = make()
    msg = AdvertiseKeys(session_id=h.config.session_id, round_number=1, sender=99, c_pk=b"a" * 32,
                        s_pk=b"b" * 32, signature=bytes(64))
    with pytest.raises(RemoteProtocolError, match="not in the cohort"):
        h.server.receive(msg)


@pytest.mark.parametrize("attack", ["short", "long", "wide", "padding"])
def test_malformed_masked_vector_is_refused(attack: str) -> None:
    def bad(msg, frame):  # type: ignore[no-untyped-def]
        v = np.asarray(msg.vector)
        if attack == "short":
            return [encode(dataclasses.replace(msg, vector=v[:-1].copy()))]
        if attack == "long":
            return [encode(dataclasses.replace(msg, vector=np.append(v, np.uint32(1))))]
        if attack == "wide":  # values >= 2^b, sent at b+1 bits
            return [encode(dataclasses.replace(msg, bits=BITS + 1, vector=v | np.uint32(1 << BITS)))]
        # non-canonical encoding: bits=12 with 32 coords -> 48 bytes, set a padding bit via 13-bit header
        wide = encode(dataclasses.replace(msg, bits=12, vector=v & np.uint32(0xFFF)))
        return [wide[:-1] + bytes([wide[-1] | 0x80])]

    res = run(Rewrite(1, MaskedInput, bad))
    assert_completed_without(res, 1)


def test_truncated_share_ciphertext_is_refused() -> None:
    def truncate(msg, frame):  # type: ignore[no-untyped-def]
        # one ciphertext shortened by one byte (bypassing the sender-side validation):
        # the server checks exact lengths when it decodes the frame
        recv, ct = msg.ciphertexts[0]
        broken = object.__new__(EncryptedShares)
        for f in dataclasses.fields(EncryptedShares):
            object.__setattr__(broken, f.name, getattr(msg, f.name))
        object.__setattr__(broken, "ciphertexts", ((recv, ct[:-1]), *msg.ciphertexts[1:]))
        return [encode(broken)]

    res = run(Rewrite(2, EncryptedShares, truncate))
    assert_completed_without(res, 2)


def test_corrupted_share_ciphertext_removes_only_that_edge() -> None:
    # The receiver complains; a complaint cannot be verified, so it removes the edge
    # between accuser and accused (issue 13, attack 2), never the accused alone.
    def corrupt(msg, frame):  # type: ignore[no-untyped-def]
        recv, ct = msg.ciphertexts[1]
        bad_ct = ct[:30] + bytes([ct[30] ^ 0x01]) + ct[31:]
        cts = list(msg.ciphertexts)
        cts[1] = (recv, bad_ct)
        return [encode(dataclasses.replace(msg, ciphertexts=tuple(cts)))]

    res = run(Rewrite(3, EncryptedShares, corrupt))
    recv = 1  # client 3's second neighbour on the complete graph {0, 1, 2, 4}
    assert not res.excluded and not res.client_errors
    assert res.survivors == list(range(N))
    assert recv not in res.mask_sets[3] and 3 not in res.mask_sets[recv]
    assert res.mask_sets[3] == {0, 2, 4} and res.mask_sets[0] == {1, 2, 3, 4}
    assert np.array_equal(res.total, expected(res.survivors))


def test_bad_consistency_signature_keeps_input_but_excludes_sender() -> None:
    res = run(Rewrite(4, ConsistencySignature, lambda m, f: [encode(dataclasses.replace(m, signature=bytes(64)))]))
    assert 4 in res.excluded
    assert res.survivors == list(range(N))  # its masked input was already in the sum
    assert np.array_equal(res.total, expected(res.survivors))


def test_too_many_bad_clients_abort_the_round() -> None:
    class Forger(Interceptor):
        def upload(self, sender: int, frame: bytes) -> list[tuple[int, bytes]]:
            msg = decode(frame)
            if sender in (0, 1, 2) and isinstance(msg, AdvertiseKeys):
                return [(sender, encode(dataclasses.replace(msg, signature=bytes(64))))]
            return [(sender, frame)]

    with pytest.raises(RoundAbortedError):
        run(Forger())


# -- malicious server ---------------------------------------------------------------------
def test_client_refuses_forged_neighbour_keys() -> None:
    h = make().run_until(Stage.SHARE_KEYS)
    msg = h.to(0)
    assert isinstance(msg, KeyBroadcast)
    forged = dataclasses.replace(msg.keys[1], s_pk=bytes([7]) * 32)  # neighbour 1's keys
    with pytest.raises(RemoteProtocolError, match="forged"):
        h.clients[0].receive(dataclasses.replace(msg, keys=(msg.keys[0], forged, *msg.keys[2:])))
    with pytest.raises(ProtocolError):  # an aborted client refuses everything afterwards
        h.clients[0].receive(msg)


def test_client_refuses_its_own_advertisement_altered() -> None:
    """A client compares its own advertisement byte for byte (no verification): a server
    that swaps its keys or its signature is caught."""
    for field, value in (("s_pk", bytes([7]) * 32), ("signature", bytes(64))):
        h = make().run_until(Stage.SHARE_KEYS)
        msg = h.to(0)
        assert isinstance(msg, KeyBroadcast)
        altered = dataclasses.replace(msg.keys[0], **{field: value})
        with pytest.raises(RemoteProtocolError, match="advertisement of mine"):
            h.clients[0].receive(dataclasses.replace(msg, keys=(altered, *msg.keys[1:])))


def test_client_refuses_replayed_server_message() -> None:
    h = make().run_until(Stage.SHARE_KEYS)
    start = RoundStart(session_id=h.config.session_id, round_number=1, recipient=1)
    with pytest.raises(ProtocolError) as info:
        h.clients[1].receive(start)
    text = str(info.value)
    assert "client" in text and "share_keys" in text and "RoundStart" in text
    h2 = make().run_until(Stage.SHARE_KEYS)
    with pytest.raises(RemoteProtocolError, match="another session or round"):
        h2.clients[2].receive(dataclasses.replace(h2.to(2), round_number=7))


def _unmask_stage():  # type: ignore[no-untyped-def]
    return make().run_until(Stage.UNMASK)


def test_client_refuses_survivor_set_that_differs_from_the_one_it_signed() -> None:
    # The server asks client 0 to treat client 4 as dropped (release s_sk_4) after everyone,
    # including 0, signed a set in which 4 survived (so others release b_4).
    h = _unmask_stage()
    req = h.to(0)
    assert isinstance(req, UnmaskRequest) and 4 in req.survivors
    lie = dataclasses.replace(req, survivors=tuple(u for u in req.survivors if u != 4))
    with pytest.raises(RemoteProtocolError, match="different survivor set"):
        h.clients[0].receive(lie)
    assert h.clients[0].released == {}  # nothing was released


def test_split_view_attack_is_caught() -> None:
    # Server shows U3 = {0..4} to clients 0-3 but U3' = {0,1,2,4} (3 "dropped") to client 4,
    # hoping to collect b_3 shares from one group and s_sk_3 shares from the other.
    h = make().run_until(Stage.CONSISTENCY)
    true_set = h.to(4).survivors  # type: ignore[attr-defined]
    fake_set = tuple(u for u in true_set if u != 3)
    sig4 = h.clients[4].receive(dataclasses.replace(h.to(4), survivors=fake_set))[0]
    assert isinstance(sig4, ConsistencySignature)
    honest_sigs = [h.clients[i].receive(h.to(i))[0] for i in range(4)]
    # (a) forward the honest signatures (over the true set) with the fake set: invalid
    req = UnmaskRequest(session_id=h.config.session_id, round_number=1, recipient=4, survivors=fake_set,
                        signatures=tuple((s.sender, tuple(sorted(h.clients[s.sender].mask_set)), s.signature)
                                        for s in honest_sigs[:3]))
    with pytest.raises(RemoteProtocolError, match="invalid consistency signature"):
        h.clients[4].receive(req)
    assert h.clients[4].released == {}
    # (b) forward only the signatures that really are over the fake set: fewer than t
    h2 = make().run_until(Stage.CONSISTENCY)
    s4 = h2.clients[4].receive(dataclasses.replace(h2.to(4), survivors=fake_set))[0]
    req2 = UnmaskRequest(session_id=h2.config.session_id, round_number=1, recipient=4, survivors=fake_set,
                         signatures=((4, tuple(sorted(h2.clients[4].mask_set)), s4.signature),))  # type: ignore[attr-defined]
    with pytest.raises(RoundAbortedError):
        h2.clients[4].receive(req2)
    assert h2.clients[4].released == {}


def test_client_never_releases_both_shares_of_one_peer() -> None:
    h = _unmask_stage()
    req = h.to(1)
    assert isinstance(req, UnmaskRequest)
    out = h.clients[1].receive(req)[0]
    assert {o for o, _ in out.self_mask_shares} and not out.key_shares  # type: ignore[attr-defined]
    # a second request claiming 4 dropped (to obtain s_sk_4 as well as b_4): refused
    survivors = tuple(u for u in req.survivors if u != 4)
    seed = h.clients[1]._joint_seed
    masks = [tuple(sorted(h.clients[i].mask_set)) for i in range(N)]
    sigs = tuple(
        (i, masks[i], sign(h.identities[i], consistency_payload(h.config.session_id, 1, seed, survivors, masks[i]),
                           context=CONSISTENCY_CONTEXT))
        for i in range(N)
    )
    with pytest.raises(ProtocolError):
        h.clients[1].receive(dataclasses.replace(req, survivors=survivors, signatures=sigs))
    assert h.clients[1].released[4] == "b"
    with pytest.raises(LocalProtocolError, match="both shares"):
        h.clients[1]._record_release(4, "s")


def test_consistency_request_must_include_me_and_only_masked_peers() -> None:
    h = make().run_until(Stage.CONSISTENCY)
    req = h.to(2)
    with pytest.raises(RemoteProtocolError, match="omits me"):
        h.clients[2].receive(dataclasses.replace(req, survivors=(0, 1, 3, 4)))


def test_server_illegal_transition_names_role_stage_and_message() -> None:
    h = make()
    vec = np.zeros(h.config.length, dtype=np.uint32)
    bad = MaskedInput(session_id=h.config.session_id, round_number=1, sender=2, bits=BITS, vector=vec)
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(bad)
    text = str(info.value)
    assert "server" in text and "advertise" in text and "MaskedInput" in text
    assert 2 in h.server.excluded


def test_downlink_messages_validate_themselves() -> None:
    h = make()
    msg: DownlinkMessage = h.outbox[0]
    with pytest.raises(RemoteProtocolError):
        dataclasses.replace(msg, session_id=b"short")


def test_consistency_signatures_carry_the_mask_sets_partners_need() -> None:
    """Honest path: every surviving, signing partner of a recipient is among the forwarded
    signers (its signature covers its mask set), so no separate mask-set signature is
    forwarded or verified; a partner that masked but did not sign comes with the mask-set
    signature of its masked input, which the recipient verifies."""
    h = make(n=8, t=3, neighbors=4).run_until(Stage.UNMASK)
    for req in h.outbox:
        assert isinstance(req, UnmaskRequest)
        signers = {w for w, _, _ in req.signatures}
        assert h.clients[req.recipient].mask_set <= signers and req.mask_sets == ()
        for w, members, _ in req.signatures:
            assert members == tuple(sorted(h.clients[w].mask_set))
    res = simulate_round([np.arange(4, dtype=np.uint32)] * 8, bits=16, threshold=3, neighbors=4,
                         drop={3: "consistency"}, seed=5)
    assert 3 in res.survivors and not res.client_errors
    assert np.array_equal(res.total, 8 * np.arange(4))
