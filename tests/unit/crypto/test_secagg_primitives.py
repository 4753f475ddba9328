"""Unit tests of the building blocks: key agreement, AEAD, signatures, Shamir, wire, graph."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from crypto.aead import decrypt_share, encrypt_share
from crypto.errors import CryptoError, DecryptionError, LocalProtocolError, RemoteProtocolError
from crypto.key_agreement import (
    Purpose,
    derive_pair_key,
    derive_self_mask_seed,
    generate_x25519,
    public_bytes,
    x25519_shared_secret,
)
from crypto.prg import Csprng
from crypto.secagg import (
    AdvertiseKeys,
    KeyBroadcast,
    MaskedInput,
    RoundConfig,
    ShareReceipt,
    UnmaskRequest,
    UnmaskShares,
    decode,
    default_neighbors,
    encode,
    neighbor_graph,
    pack_bits,
    unpack_bits,
)
from crypto.shamir import PRIME, lagrange_coefficients_at_zero, reconstruct, split
from crypto.signatures import generate_identity, identity_public_bytes, sign, verify

SESSION = bytes(range(32))


def rng(i: int = 0) -> Csprng:
    return Csprng(bytes([i]) * 32)


# -- key agreement ---------------------------------------------------------------------
def test_pair_keys_agree_and_are_purpose_separated() -> None:
    a, b = generate_x25519(rng(1)), generate_x25519(rng(2))
    kw = {"session_id": SESSION, "round_number": 3}
    k_ab = derive_pair_key(a, public_bytes(b), purpose=Purpose.PAIRWISE_MASK, me=0, peer=1, **kw)
    k_ba = derive_pair_key(b, public_bytes(a), purpose=Purpose.PAIRWISE_MASK, me=1, peer=0, **kw)
    assert k_ab == k_ba
    enc = derive_pair_key(a, public_bytes(b), purpose=Purpose.SHARE_ENCRYPTION, me=0, peer=1, **kw)
    other_round = derive_pair_key(
        a, public_bytes(b), purpose=Purpose.PAIRWISE_MASK, me=0, peer=1, session_id=SESSION, round_number=4
    )
    other_session = derive_pair_key(
        a, public_bytes(b), purpose=Purpose.PAIRWISE_MASK, me=0, peer=1, session_id=bytes(32), round_number=3
    )
    assert len({k_ab, enc, other_round, other_session}) == 4
    b_seed = bytes(32)
    assert derive_self_mask_seed(b_seed, session_id=SESSION, round_number=3, owner=0) != derive_self_mask_seed(
        b_seed, session_id=SESSION, round_number=3, owner=1
    )


def test_small_order_public_key_is_refused() -> None:
    with pytest.raises(CryptoError):
        x25519_shared_secret(generate_x25519(rng(1)), bytes(32))
    with pytest.raises(CryptoError):
        x25519_shared_secret(generate_x25519(rng(1)), bytes(31))


# -- AEAD ------------------------------------------------------------------------------
def test_aead_binds_parties_session_and_round() -> None:
    key = bytes(range(32))
    kw = {"session_id": SESSION, "round_number": 1, "sender": 2, "receiver": 5}
    ct = encrypt_share(key, b"share", rng=rng(), **kw)
    assert decrypt_share(key, ct, **kw) == b"share"
    bad_inputs = [
        (key, ct[:-1], kw),
        (key, ct[:10], kw),
        (key, ct[:20] + bytes([ct[20] ^ 1]) + ct[21:], kw),
        (bytes(32), ct, kw),
        (key, ct, {**kw, "sender": 3}),
        (key, ct, {**kw, "receiver": 2, "sender": 5}),
        (key, ct, {**kw, "round_number": 2}),
        (key, ct, {**kw, "session_id": bytes(32)}),
    ]
    for k, c, params in bad_inputs:
        with pytest.raises(DecryptionError) as info:
            decrypt_share(k, c, **params)
        assert str(info.value) == "decryption failed"  # opaque


# -- signatures ------------------------------------------------------------------------
def test_signatures_are_domain_separated() -> None:
    key = generate_identity(rng(7))
    pk = identity_public_bytes(key)
    sig = sign(key, b"msg", context=b"secagg-advertise")
    verify(pk, sig, b"msg", context=b"secagg-advertise")
    for args in [(pk, sig, b"msg", b"secagg-consistency"), (pk, sig, b"msh", b"secagg-advertise"),
                 (identity_public_bytes(generate_identity(rng(8))), sig, b"msg", b"secagg-advertise"),
                 (pk, sig[:-1] + bytes([sig[-1] ^ 1]), b"msg", b"secagg-advertise"), (pk, sig[:63], b"msg", b"x")]:
        with pytest.raises(CryptoError):
            verify(args[0], args[1], args[2], context=args[3])


def test_batch_verification_decides_each_entry_as_verify_does_for_every_thread_count() -> None:
    """verify_all answers entry by entry exactly as verify would (forged, wrong key, wrong
    message, truncated and non-bytes entries placed among valid ones), in order, for 1,
    2 and 3 threads and for batches below and above the per-thread minimum."""
    from crypto.signatures import verify_all

    keys = [generate_identity(rng(20 + i)) for i in range(5)]
    entries: list[tuple[bytes, bytes, bytes]] = []
    for i in range(41):
        key = keys[i % 5]
        msg = b"msg-%d" % i
        sig = sign(key, msg, context=b"secagg-consistency")
        pk = identity_public_bytes(key)
        kind = i % 6
        if kind == 1:
            sig = sig[:-1] + bytes([sig[-1] ^ 1])
        elif kind == 2:
            pk = identity_public_bytes(keys[(i + 1) % 5])
        elif kind == 3:
            msg += b"!"
        elif kind == 4 and i % 4 == 0:
            sig = sig[:63]
        entries.append((pk, sig, msg))
    entries.append(("not bytes", bytes(64), b"m"))  # type: ignore[arg-type]

    def one(pk: bytes, sig: bytes, msg: bytes) -> bool:
        try:
            verify(pk, sig, msg, context=b"secagg-consistency")
        except CryptoError:
            return False
        return True

    expected = [one(*e) for e in entries]
    assert True in expected and False in expected
    for size in (3, 16, len(entries)):
        for threads in (1, 2, 3):
            assert verify_all(entries[:size], context=b"secagg-consistency", threads=threads) == expected[:size]
    assert verify_all([], context=b"secagg-consistency") == []
    assert verify_all(entries, context=b"secagg-advertise", threads=2) == [False] * len(entries)
    with pytest.raises(LocalProtocolError, match="crypto threads"):
        verify_all(entries, context=b"secagg-consistency", threads=0)


def test_remembered_signatures_skip_repeated_work_and_never_accept_a_forgery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside remembering_valid_signatures a repeated valid triple costs no second OpenSSL
    verification, while every altered triple (flipped signature bit, other message, other
    key, other context) is still rejected, also after its valid original was remembered;
    outside the block nothing is remembered."""
    import crypto.signatures as signatures

    calls: list[bytes] = []
    real = signatures._public_key

    class Counting:
        def __init__(self, raw: bytes) -> None:
            self.key = real(raw)

        def verify(self, sig: bytes, data: bytes) -> None:
            calls.append(sig)
            self.key.verify(sig, data)

    monkeypatch.setattr(signatures, "_public_key", Counting)
    key, other = generate_identity(rng(30)), generate_identity(rng(31))
    pk, pk_other = identity_public_bytes(key), identity_public_bytes(other)
    sig = sign(key, b"survivors", context=b"secagg-consistency")
    forged = [(pk, sig[:-1] + bytes([sig[-1] ^ 1]), b"survivors"), (pk, sig, b"survivorz"), (pk_other, sig, b"survivors")]

    def decisions() -> list[bool]:
        return signatures.verify_all([(pk, sig, b"survivors"), *forged, (pk, sig, b"survivors")],
                                     context=b"secagg-consistency", threads=1)

    assert decisions() == [True, False, False, False, True] and len(calls) == 5  # off: every entry verified
    assert signatures._memo is None
    calls.clear()
    with signatures.remembering_valid_signatures():
        assert decisions() == [True, False, False, False, True]
        assert len(calls) == 4  # the repeated valid triple was not verified again; forgeries were
        calls.clear()
        with signatures.remembering_valid_signatures():  # nested: the same memo
            verify(pk, sig, b"survivors", context=b"secagg-consistency")
            for bad_pk, bad_sig, msg in forged:
                with pytest.raises(CryptoError):
                    verify(bad_pk, bad_sig, msg, context=b"secagg-consistency")
            with pytest.raises(CryptoError):  # the same triple under another purpose
                verify(pk, sig, b"survivors", context=b"secagg-advertise")
        assert len(calls) == 4
        assert signatures._memo is not None
    assert signatures._memo is None
    calls.clear()
    verify(pk, sig, b"survivors", context=b"secagg-consistency")
    assert len(calls) == 1


# -- Shamir ----------------------------------------------------------------------------
def test_prime_is_the_documented_prime() -> None:
    assert PRIME == 2**256 + 297
    # Miller-Rabin with fixed bases as an independent sanity check of primality
    d, s = PRIME - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        x = pow(a, d, PRIME)
        assert x in (1, PRIME - 1) or any(pow(x, 2**r, PRIME) == PRIME - 1 for r in range(1, s))


@pytest.mark.parametrize(("n", "t"), [(3, 2), (5, 3), (6, 4)])
def test_shamir_reconstructs_from_every_t_subset(n: int, t: int) -> None:
    secret = bytes(range(224, 256))  # > 2^255: needs the 256+ bit field
    shares = split(secret, threshold=t, xs=list(range(1, n + 1)), rng=rng(3))
    for subset in itertools.combinations(sorted(shares.items()), t):
        assert reconstruct(subset, threshold=t) == secret
    for subset in itertools.combinations(sorted(shares.items()), t + 1 if t < n else t):
        assert reconstruct(subset, threshold=t) == secret


def test_shamir_t_minus_one_shares_reveal_nothing() -> None:
    t, secret = 3, b"\x11" * 32
    shares = split(secret, threshold=t, xs=[1, 2, 3, 4], rng=rng(4))
    two = sorted(shares.items())[: t - 1]
    # interpolating t-1 shares as if t-1 sufficed gives a wrong value (or a non-secret)
    try:
        assert reconstruct(two, threshold=t - 1) != secret
    except CryptoError:
        pass
    # perfect secrecy: for ANY candidate secret there is a degree-(t-1) polynomial through
    # the t-1 shares and (0, candidate), so the shares are consistent with every secret
    for candidate in (bytes(32), b"\xff" * 32, secret):
        pts = [(0, int.from_bytes(candidate, "big")), *two]
        xs = [x for x, _ in pts]
        # the unique polynomial through these t points, evaluated at a third share point
        x3 = 4
        val = 0
        for j, (xj, yj) in enumerate(pts):
            num, den = 1, 1
            for m, xm in enumerate(xs):
                if m != j:
                    num = num * (x3 - xm) % PRIME
                    den = den * (xj - xm) % PRIME
            val = (val + yj * num * pow(den, -1, PRIME)) % PRIME
        # ...so a full t-sharing of `candidate` agrees with the t-1 shares we observed
        assert reconstruct([*two, (x3, val)], threshold=t) == candidate


def test_shamir_validates_indices_and_values() -> None:
    with pytest.raises(CryptoError):
        split(b"x" * 32, threshold=2, xs=[1, 1, 2], rng=rng())
    with pytest.raises(CryptoError):
        split(b"x" * 32, threshold=2, xs=[0, 1], rng=rng())
    with pytest.raises(CryptoError):
        split(b"x" * 31, threshold=2, xs=[1, 2], rng=rng())
    with pytest.raises(CryptoError):
        split(b"x" * 32, threshold=3, xs=[1, 2], rng=rng())
    shares = sorted(split(b"x" * 32, threshold=2, xs=[1, 2, 3], rng=rng()).items())
    with pytest.raises(CryptoError):
        reconstruct([shares[0], shares[0]], threshold=2)
    with pytest.raises(CryptoError):
        reconstruct(shares[:1], threshold=2)
    with pytest.raises(CryptoError):
        reconstruct([(1, PRIME), shares[1]], threshold=2)
    assert lagrange_coefficients_at_zero([1, 2]) == [2, PRIME - 1]


# -- wire ------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 3, 7, 8, 12, 16, 20, 31, 32, 33, 48, 62])
@pytest.mark.parametrize("count", [1, 63, 64, 65, 200])
def test_bit_packing_roundtrip_and_size(bits: int, count: int) -> None:
    values = Csprng(bytes([bits]) * 32).uniform_mod_pow2(count, bits=bits)
    packed = pack_bits(values, bits)
    assert len(packed) == (count * bits + 7) // 8
    assert np.array_equal(unpack_bits(packed, bits, count), values)


def test_bit_packing_layout_is_lsb_first() -> None:
    assert pack_bits(np.array([1, 2, 3], dtype=np.uint32), 3) == bytes([0b11010001, 0b0])
    with pytest.raises(CryptoError):  # non-zero padding bits
        unpack_bits(bytes([0b11010001, 0b10]), 3, 3)
    with pytest.raises(CryptoError):
        unpack_bits(bytes([0b11010001]), 3, 3)


def _msgs() -> list[object]:
    key = generate_identity(rng(1))
    adv = AdvertiseKeys(session_id=SESSION, round_number=0, sender=1, c_pk=b"a" * 32, s_pk=b"b" * 32,
                        signature=sign(key, b"x", context=b"c"))
    return [
        adv,
        KeyBroadcast(session_id=SESSION, round_number=0, recipient=2, keys=(adv,)),
        ShareReceipt(session_id=SESSION, round_number=0, sender=1, complaints=(0, 4)),
        UnmaskShares(session_id=SESSION, round_number=0, sender=1, self_mask_shares=((1, PRIME - 1),),
                     key_shares=((2, 5),)),
        UnmaskRequest(session_id=SESSION, round_number=0, recipient=1, survivors=(0, 1, 3),
                      signatures=((0, (1, 3), bytes([1]) * 64), (3, (), bytes([2]) * 64)),
                      mask_sets=((1, (0,), bytes([3]) * 64),)),
    ]


def test_wire_roundtrip_and_strict_decoding() -> None:
    for msg in _msgs():
        frame = encode(msg)  # type: ignore[arg-type]
        assert decode(frame) == msg
        for cut in (0, 5, 12, len(frame) - 1):
            with pytest.raises(RemoteProtocolError):
                decode(frame[:cut])
        with pytest.raises(RemoteProtocolError):
            decode(frame + b"\x00")
        for pos in range(0, len(frame), 7):  # flipped bytes: rejected or decoded to valid data
            mutated = frame[:pos] + bytes([frame[pos] ^ 0x55]) + frame[pos + 1 :]
            try:
                decode(mutated, sender=1)
            except RemoteProtocolError as exc:
                assert exc.sender is not None
    vec = np.arange(100, dtype=np.uint32) % 1024
    m = MaskedInput(session_id=SESSION, round_number=0, sender=0, bits=10, vector=vec)
    frame = encode(m)
    assert len(frame) < 100 * 10 // 8 + 80 + 64  # + the mask-set signature
    assert np.array_equal(decode(frame).vector, vec)  # type: ignore[attr-defined]
    from crypto.secagg.wire import VERSION

    for version in (VERSION - 1, VERSION + 1):  # v2 frames (pairs of signatures) are refused
        with pytest.raises(RemoteProtocolError, match="wire version"):
            decode(frame[:4] + bytes([version]) + frame[5:])


def test_masked_input_refuses_out_of_range_values() -> None:
    with pytest.raises(RemoteProtocolError):
        MaskedInput(session_id=SESSION, round_number=0, sender=0, bits=10,
                    vector=np.array([1024], dtype=np.uint32))
    with pytest.raises(RemoteProtocolError):
        MaskedInput(session_id=SESSION, round_number=0, sender=0, bits=10,
                    vector=np.array([1], dtype=np.int64))


# -- graph and configuration -------------------------------------------------------------
@pytest.mark.parametrize("n", [5, 30, 100])
def test_secagg_plus_graph_is_regular_symmetric_and_deterministic(n: int) -> None:
    k = default_neighbors(n)
    g = neighbor_graph(b"s" * 32, n, k)
    assert g == neighbor_graph(b"s" * 32, n, k)
    assert g != neighbor_graph(b"t" * 32, n, k) or k == n - 1
    for u, nb in enumerate(g):
        assert u not in nb
        assert len(nb) == min(k + k % 2, n - 1)
        assert all(u in g[v] for v in nb)
    assert default_neighbors(100) == 20
    assert neighbor_graph(b"s" * 32, 6, None)[0] == frozenset({1, 2, 3, 4, 5})


def test_round_config_enforces_majority_threshold() -> None:
    keys = tuple(identity_public_bytes(generate_identity(rng(i))) for i in range(5))
    base = {"session_id": SESSION, "round_number": 0, "bits": 16, "length": 4, "identity_keys": keys,
            "graph_seed": bytes(32)}
    RoundConfig(threshold=3, **base)  # type: ignore[arg-type]
    for t in (0, 2, 6):
        with pytest.raises(LocalProtocolError):
            RoundConfig(threshold=t, **base)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        RoundConfig(threshold=3, **{**base, "bits": 0})  # type: ignore[arg-type]


def test_blocked_mask_application_equals_full_masks() -> None:
    from crypto.secagg.client import MASK_BLOCK, apply_masks, expand_mask

    d = MASK_BLOCK + 1234  # crosses a block boundary
    for bits in (20, 32, 40):
        dtype = np.uint32 if bits <= 32 else np.uint64
        terms = [(bytes([i]) * 32, 1 if i % 2 else -1) for i in range(3)]
        acc = np.arange(d, dtype=dtype)
        apply_masks(acc, terms)
        ref = np.arange(d, dtype=dtype)
        for seed, sgn in terms:
            m = expand_mask(seed, d, bits).astype(dtype)
            ref = ref + m if sgn > 0 else ref - m
        assert np.array_equal(acc, ref)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 4096, (1 << 24) + 17])
def test_random_into_is_the_same_stream_as_random_bytes(n: int) -> None:
    ref = Csprng(bytes(32)).random_bytes(n + 8)
    gen = Csprng(bytes(32))
    buf = bytearray(n)
    gen.random_into(buf)
    assert bytes(buf) == ref[:n]
    assert gen.random_bytes(8) == ref[n:]  # the stream continues where it stopped


@pytest.mark.parametrize("n", [0, 1, 16, 4096, 4 * 65536])
def test_keystream_into_is_the_same_stream_and_needs_slack(n: int) -> None:
    ref = Csprng(bytes(32)).random_bytes(n + 8)
    gen = Csprng(bytes(32))
    buf = bytearray(n + 15)
    gen.keystream_into(buf, n)
    assert bytes(buf[:n]) == ref[:n] and bytes(buf[n:]) == bytes(15)  # the slack is untouched
    assert gen.random_bytes(8) == ref[n:]
    with pytest.raises(CryptoError):
        Csprng(bytes(32)).keystream_into(bytearray(n + 14), n)


def test_apply_masks_with_base_writes_base_plus_masks_and_leaves_base() -> None:
    from crypto.secagg.client import MASK_BLOCK, apply_masks, expand_mask

    d = 2 * MASK_BLOCK + 7
    base = np.arange(d, dtype=np.uint32)
    terms = [(bytes([9]) * 32, 1), (bytes([8]) * 32, -1)]
    out = np.empty_like(base)
    apply_masks(out, terms, base=base)
    assert np.array_equal(base, np.arange(d, dtype=np.uint32))
    assert np.array_equal(out, base + expand_mask(terms[0][0], d, 32) - expand_mask(terms[1][0], d, 32))
    empty = np.empty_like(base)
    apply_masks(empty, [], base=base)
    assert np.array_equal(empty, base)
    with pytest.raises(LocalProtocolError):
        apply_masks(np.empty(d, dtype=np.uint64), terms, base=base)


def test_lagrange_coefficients_match_the_direct_formula() -> None:
    xs = [3, 1, 9, 22, 5]
    for j, xj in enumerate(xs):
        num = den = 1
        for m, xm in enumerate(xs):
            if m != j:
                num, den = num * xm % PRIME, den * (xm - xj) % PRIME
        assert lagrange_coefficients_at_zero(xs)[j] == num * pow(den, -1, PRIME) % PRIME


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_threaded_mask_application_is_identical_to_one_thread(threads: int) -> None:
    """Each thread starts every generator at its range's keystream offset
    (:meth:`Csprng.at`), so the result does not depend on the thread count."""
    from crypto.secagg.client import MASK_BLOCK, apply_masks, expand_mask

    d = 5 * MASK_BLOCK + 321  # ranges that do not divide evenly into blocks
    for bits in (32, 40):
        dtype = np.uint32 if bits <= 32 else np.uint64
        terms = [(bytes([i + 1]) * 32, 1 if i % 2 else -1) for i in range(4)]
        base = np.arange(d, dtype=dtype)
        out = np.empty_like(base)
        apply_masks(out, terms, base=base, threads=threads)
        ref = base.copy()
        for seed, sgn in terms:
            m = expand_mask(seed, d, bits).astype(dtype)
            ref = ref + m if sgn > 0 else ref - m
        assert np.array_equal(out, ref)
        inplace = base.copy()
        apply_masks(inplace, terms, threads=threads)
        assert np.array_equal(inplace, ref)


def test_mask_thread_count_is_validated() -> None:
    from crypto.parallel import set_threads, threads
    from crypto.secagg.client import apply_masks

    before = threads()
    try:
        set_threads(1)
        assert threads() == 1
        for bad in (0, -1, 1.5, True):
            with pytest.raises(LocalProtocolError, match="crypto threads"):
                set_threads(bad)  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError, match="crypto threads"):
            apply_masks(np.zeros(4, dtype=np.uint32), [], threads=0)
    finally:
        set_threads(before)


def test_background_work_returns_its_result_or_its_error_for_every_thread_count() -> None:
    import hashlib
    import threading

    from crypto.parallel import background, set_threads, threads

    data = bytes(range(256)) * 1024
    before = threads()
    try:
        for count in (1, 2):
            set_threads(count)
            ran_in: list[str] = []

            def digest(b: bytes, ran_in: list[str] = ran_in) -> str:
                ran_in.append(threading.current_thread().name)
                return hashlib.sha256(b).hexdigest()

            assert background(digest, data)() == hashlib.sha256(data).hexdigest()
            assert (ran_in == [threading.current_thread().name]) == (count == 1)

            def fails() -> None:
                raise ValueError("boom")

            if count == 1:
                with pytest.raises(ValueError, match="boom"):
                    background(fails)
            else:
                wait = background(fails)
                with pytest.raises(ValueError, match="boom"):
                    wait()
    finally:
        set_threads(before)


def test_mask_thread_pool_is_rebuilt_in_a_forked_child() -> None:
    """A forked child has none of its parent's threads: it must not reuse the parent's pool."""
    import os

    from crypto.secagg.client import MASK_BLOCK, apply_masks, expand_mask

    d = 8 * MASK_BLOCK
    terms = [(bytes([5]) * 32, 1)]
    apply_masks(np.zeros(d, dtype=np.uint32), terms, threads=2)  # the parent's pool exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: would hang on a dead pool
        ok = False
        try:
            acc = np.zeros(d, dtype=np.uint32)
            apply_masks(acc, terms, threads=2)
            ok = bool(np.array_equal(acc, expand_mask(terms[0][0], d, 32)))
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    import select

    ready, _, _ = select.select([read], [], [], 30)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert ready, "the forked child hung on its parent's thread pool"
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)


def test_server_built_unmask_request_sets_every_field() -> None:
    """from_server lists the fields by hand: a field added to UnmaskRequest must be added there too."""
    import dataclasses
    import inspect

    from crypto.secagg.messages import UnmaskRequest

    params = set(inspect.signature(UnmaskRequest.from_server).parameters)
    assert params == {f.name for f in dataclasses.fields(UnmaskRequest)}


def test_server_built_unmask_request_skips_nothing_the_recipient_checks() -> None:
    """``UnmaskRequest.from_server`` equals the checked constructor on valid fields, and a
    request it builds from bad fields is still refused when the client decodes it."""
    from crypto.secagg.messages import UnmaskRequest
    from crypto.secagg.wire import decode, encode

    fields = {"session_id": bytes(32), "round_number": 0, "recipient": 2, "survivors": (0, 1, 2),
              "signatures": ((0, (1, 2), bytes(64)), (1, (0, 2), bytes(64)))}
    assert UnmaskRequest.from_server(**fields) == UnmaskRequest(**fields)  # type: ignore[arg-type]
    assert decode(encode(UnmaskRequest.from_server(**fields))) == UnmaskRequest(**fields)  # type: ignore[arg-type]
    bad = UnmaskRequest.from_server(**{**fields, "survivors": (2, 1)})  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError, match="survivors"):
        decode(encode(bad))
