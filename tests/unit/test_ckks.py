"""CKKS aggregation: correctness against the plaintext sum, strict parsing, key roles."""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.ckks import (
    DEFAULT_PARAMS,
    NVFLARE_PARAMS,
    Aggregator,
    CkksBackend,
    CkksClient,
    CkksParams,
    EncryptedAggregate,
    EncryptedVector,
    KeyHolder,
    PublicContext,
    SignedContext,
    TenSEALBackend,
    encrypt_vector,
    simulate_ckks_round,
)
from crypto.errors import (
    CryptoError,
    DecryptionError,
    FieldOverflowError,
    LocalProtocolError,
    RemoteProtocolError,
    RoundAbortedError,
)
from crypto.prg import Csprng

SLOTS = DEFAULT_PARAMS.slots
DIM = 2 * SLOTS + 37  # three chunks, the last one partial
TOL = 1e-6  # the CKKS target (benchmarks/RESULTS.md): aggregate error relative to the update's scale


CLIENT_KEYS = [Ed25519PrivateKey.generate() for _ in range(100)]
MEMBERS = [k.public_key().public_bytes_raw() for k in CLIENT_KEYS]


@pytest.fixture
def key_holder() -> KeyHolder:
    """A fresh key per test: each key decrypts once."""
    return KeyHolder.generate(members=MEMBERS)


def _signed_aggregate(kh: KeyHolder, xs: list[np.ndarray], *, round: int, bound: float = 1.0) -> Aggregator:
    """The accountable flow: clients of CLIENT_KEYS encrypt under the signed context."""
    signed = kh.signed_context()
    agg = Aggregator(kh.public_context(), int(xs[0].size), bound=bound, round=round, session_id=signed.session_id)
    for i, x in enumerate(xs):
        client = CkksClient(signed, key_holder=kh.identity_public_key, identity_key=CLIENT_KEYS[i])
        blob, receipt = client.encrypt(x, bound=bound, round=round)
        agg.add(blob, sender=i, receipt=receipt)
    return agg


@pytest.fixture
def pub(key_holder: KeyHolder) -> PublicContext:
    return PublicContext.from_bytes(key_holder.public_context_bytes(), DEFAULT_PARAMS)


def _inputs(n: int, d: int, *, bound: float = 1.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-bound, bound, d) for _ in range(n)]


def _rel_err(total: np.ndarray, ref: np.ndarray, bound: float) -> float:
    return float(np.max(np.abs(total - ref)) / bound)


# -- parameters ------------------------------------------------------------------------
def test_default_params_are_128_bit_and_single_data_prime() -> None:
    p = DEFAULT_PARAMS
    assert p.slots == 2048
    assert sum(p.coeff_mod_bit_sizes) <= 109  # HE standard, N = 4096, 128-bit
    assert len(p.coeff_mod_bit_sizes) == 2  # one data prime + TenSEAL's special prime
    assert p.max_summands == 2047
    assert NVFLARE_PARAMS.data_modulus_bits == 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"poly_modulus_degree": 3000},
        {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (50,)},
        {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (61, 40)},
        {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (60, 50)},  # 110 > 109
        {"poly_modulus_degree": 2048, "coeff_mod_bit_sizes": (30, 30)},  # 60 > 54
        {"coeff_mod_bit_sizes": [50, 40]},  # not a tuple
        {"scale_bits": 49},  # no room for two summands in 50 bits
        {"scale_bits": 10},
    ],
)
def test_invalid_params_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(CryptoError):
        CkksParams(**kwargs)  # type: ignore[arg-type]


def test_backend_satisfies_protocol() -> None:
    assert isinstance(TenSEALBackend(), CkksBackend)


# -- correctness -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 10, 100])
def test_aggregate_matches_plaintext_sum(key_holder: KeyHolder, n: int) -> None:
    d = DIM if n <= 10 else SLOTS + 11
    xs = _inputs(n, d, seed=n)
    r = simulate_ckks_round(xs, key_holder=key_holder, client_keys=CLIENT_KEYS[:n], round=1000 + n)
    assert r.survivors == tuple(range(n))
    assert r.excluded == {}
    assert r.total.shape == (d,)
    assert _rel_err(r.total, np.sum(xs, axis=0), 1.0) <= TOL


@pytest.mark.parametrize("bound", [1e-3, 25.0])
def test_error_is_relative_to_the_public_bound(key_holder: KeyHolder, bound: float) -> None:
    xs = _inputs(10, 500, bound=bound, seed=7)
    r = simulate_ckks_round(xs, key_holder=key_holder, client_keys=CLIENT_KEYS[: len(xs)], bound=bound,
                            round=2000 + int(bound))
    assert _rel_err(r.total, np.sum(xs, axis=0), bound) <= TOL


def test_bytes_per_parameter(pub: PublicContext) -> None:
    d = 8 * SLOTS
    blob = encrypt_vector(pub, _inputs(1, d)[0]).to_bytes()
    assert len(blob) / d <= 33  # the bytes-per-parameter target (benchmarks/RESULTS.md; measured ~28.8)


def test_no_tenseal_long_vector_warning(
    pub: PublicContext, capfd: pytest.CaptureFixture[str]
) -> None:
    encrypt_vector(pub, np.zeros(3 * SLOTS + 1))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_encrypt_rejects_out_of_bound_and_nonfinite(pub: PublicContext) -> None:
    with pytest.raises(FieldOverflowError):
        encrypt_vector(pub, np.array([0.5, 1.5]))
    with pytest.raises(FieldOverflowError):
        encrypt_vector(pub, np.array([0.5, np.nan]))
    with pytest.raises(CryptoError):
        encrypt_vector(pub, np.zeros((2, 2)))


# -- roles and keys --------------------------------------------------------------------
def test_server_public_context_cannot_decrypt(key_holder: KeyHolder, pub: PublicContext) -> None:
    assert not pub.can_decrypt
    vec = encrypt_vector(pub, np.ones(10))
    backend = TenSEALBackend()
    with pytest.raises(CryptoError):
        backend.decrypt(pub._handle, vec._cts[0])
    # the distributed bytes carry no secret key: loading them as a secret context fails
    with pytest.raises(CryptoError):
        backend.load_context(key_holder.public_context_bytes(), DEFAULT_PARAMS, secret=True)


def test_public_context_validation(key_holder: KeyHolder, tmp_path: Path) -> None:
    with pytest.raises(CryptoError):
        PublicContext.from_bytes(key_holder.public_context_bytes(), NVFLARE_PARAMS)
    with pytest.raises(CryptoError):
        PublicContext.from_bytes(b"", DEFAULT_PARAMS)
    with pytest.raises(CryptoError):
        PublicContext.from_bytes(os.urandom(1000), DEFAULT_PARAMS)
    path = tmp_path / "sk"
    key_holder.save_secret(path)
    with pytest.raises(CryptoError):  # a context holding the secret key is not public
        PublicContext.from_bytes(path.read_bytes(), DEFAULT_PARAMS)


def test_secret_saved_0600_and_reloadable(
    key_holder: KeyHolder, pub: PublicContext, tmp_path: Path
) -> None:
    path = tmp_path / "ckks.secret"
    key_holder.save_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        key_holder.save_secret(path)
    kh2 = KeyHolder.load_secret(path, DEFAULT_PARAMS, members=MEMBERS)
    assert kh2.key_id == key_holder.key_id
    agg = _signed_aggregate(kh2, [np.full(5, 0.25)] * 2, round=1)
    assert np.allclose(kh2.decrypt_aggregate(agg.result()), 0.5, atol=1e-6)
    path.chmod(0o644)
    with pytest.raises(CryptoError):
        KeyHolder.load_secret(path, DEFAULT_PARAMS)


def test_key_holder_policy() -> None:
    kh = KeyHolder.generate(min_summands=2, members=MEMBERS)
    one = _signed_aggregate(kh, [np.ones(8)], round=1)
    with pytest.raises(LocalProtocolError):  # an individual update is never decrypted
        kh.decrypt_aggregate(one.result())
    two = _signed_aggregate(kh, [np.ones(8)] * 2, round=2)
    res = two.result()
    assert np.allclose(kh.decrypt_aggregate(res), 2.0, atol=1e-6)
    with pytest.raises(LocalProtocolError, match="decrypts once"):
        kh.decrypt_aggregate(res)
    # wire round trip of the server -> key holder message, receipts included
    back = EncryptedAggregate.from_bytes(res.to_bytes())
    assert (back.count, back.dim, back.bound, back.round) == (2, 8, 1.0, 2)
    assert back.receipts == res.receipts and len(back.receipts) == 2
    with pytest.raises(DecryptionError):
        EncryptedAggregate.from_bytes(res.to_bytes()[:-1])
    with pytest.raises(LocalProtocolError, match="no roster"):  # fails closed without members
        kh_open = KeyHolder.generate()
        kh_open.decrypt_aggregate(_signed_aggregate(kh_open, [np.ones(8)] * 2, round=1).result())


# -- the accountable key holder (issue 14, problem 3) ---------------------------------------
def test_round_number_replay_is_refused() -> None:
    """The same key decrypted a single victim's ciphertext at round 0, then again at
    round 1. Now: each key decrypts once, whatever round the server declares."""
    kh = KeyHolder.generate(members=MEMBERS)
    agg = _signed_aggregate(kh, [np.full(8, 0.5)] * 2, round=0)
    res = agg.result()
    kh.decrypt_aggregate(res)
    replay = EncryptedAggregate(res.ciphertext, res.count, res.dim, res.bound, 1, res.receipts)
    with pytest.raises(LocalProtocolError, match="decrypts once"):
        kh.decrypt_aggregate(replay)


def test_inflated_declared_count_is_refused() -> None:
    """One victim's ciphertext declared as count = 2 (with or without a forged receipt)."""
    kh = KeyHolder.generate(members=MEMBERS)
    victim = _signed_aggregate(kh, [np.full(8, 0.5)], round=3).result()
    inflated = EncryptedAggregate(victim.ciphertext, 2, victim.dim, victim.bound, victim.round, victim.receipts)
    with pytest.raises(LocalProtocolError, match="1 distinct roster member"):
        kh.decrypt_aggregate(inflated)
    # the victim's receipt twice, a Sybil's receipt (not a member), a receipt for another round
    sybil = Ed25519PrivateKey.generate()
    signed = kh.signed_context()
    _, sybil_receipt = CkksClient(signed, key_holder=kh.identity_public_key, identity_key=sybil).encrypt(
        np.zeros(8), round=3
    )
    _, stale = CkksClient(signed, key_holder=kh.identity_public_key, identity_key=CLIENT_KEYS[5]).encrypt(
        np.zeros(8), round=2
    )
    for extra in (victim.receipts[0], sybil_receipt, stale):
        forged = EncryptedAggregate(victim.ciphertext, 2, victim.dim, victim.bound, 3, (*victim.receipts, extra))
        assert kh.signed_count(forged) == 1
        with pytest.raises(LocalProtocolError, match="policy minimum is 2"):
            kh.decrypt_aggregate(forged)
    # a correct count of 2 from the receipts but a declared 3: refused as inconsistent
    two = _signed_aggregate(kh, [np.ones(8)] * 2, round=4).result()
    with pytest.raises(LocalProtocolError, match="declares 3 summands but 2"):
        kh.decrypt_aggregate(EncryptedAggregate(two.ciphertext, 3, two.dim, two.bound, 4, two.receipts))


def test_server_made_context_is_refused_by_clients() -> None:
    """The server generates its own key pair and hands clients its public context:
    a client pinning the key holder's identity (or key id) refuses it."""
    real = KeyHolder.generate(members=MEMBERS)
    server_kh = KeyHolder.generate(members=MEMBERS)  # the server's own key holder
    forged = server_kh.signed_context()
    with pytest.raises(CryptoError, match="not signed by the pinned key holder"):
        CkksClient(forged, key_holder=real.identity_public_key, identity_key=CLIENT_KEYS[0])
    # claiming the real key holder's identity does not help: the signature fails
    relabelled = SignedContext(forged.context, forged.session_id, real.identity_public_key, forged.signature)
    with pytest.raises(CryptoError):
        CkksClient(relabelled, key_holder=real.identity_public_key, identity_key=CLIENT_KEYS[0])
    # a real, signed context with another key id than the pinned one
    with pytest.raises(CryptoError, match="key id"):
        CkksClient(real.signed_context(), key_holder=real.identity_public_key, identity_key=CLIENT_KEYS[0],
                   key_id=server_kh.key_id)
    ok = CkksClient(real.signed_context(), key_holder=real.identity_public_key, identity_key=CLIENT_KEYS[0],
                    key_id=real.key_id)
    assert ok.context.key_id == real.key_id
    # the wire form round-trips
    assert SignedContext.from_bytes(real.signed_context().to_bytes()) == real.signed_context()


def test_upload_without_valid_receipt_is_excluded() -> None:
    kh = KeyHolder.generate(members=MEMBERS)
    signed = kh.signed_context()
    agg = Aggregator(kh.public_context(), 8, round=1, session_id=signed.session_id)
    client = CkksClient(signed, key_holder=kh.identity_public_key, identity_key=CLIENT_KEYS[0])
    blob, receipt = client.encrypt(np.ones(8), round=1)
    with pytest.raises(RemoteProtocolError, match="receipt"):
        agg.add(blob, sender=0)
    with pytest.raises(RemoteProtocolError, match="receipt"):
        agg.add(blob[:-1] + b"\x00", sender=0, receipt=receipt)
    agg.add(blob, sender=0, receipt=receipt)
    blob2, receipt2 = client.encrypt(np.ones(8), round=1)
    with pytest.raises(RemoteProtocolError, match="one client identity"):
        agg.add(blob2, sender=1, receipt=receipt2)


def test_key_holder_rejects_aggregate_with_foreign_key_summand(key_holder: KeyHolder) -> None:
    # A summand encrypted under another key but relabelled with our key id passes the
    # server's checks (RLWE ciphertexts are indistinguishable); its decryption is noise
    # far outside count * bound, which the key holder detects and refuses.
    ctx = key_holder.public_context()
    other = KeyHolder.generate().public_context()
    signed = key_holder.signed_context()
    agg = Aggregator(ctx, 64, round=77, session_id=signed.session_id)
    clients = [CkksClient(signed, key_holder=key_holder.identity_public_key, identity_key=CLIENT_KEYS[i])
               for i in range(2)]
    blob, receipt = clients[0].encrypt(np.zeros(64), round=77)
    agg.add(blob, sender=0, receipt=receipt)
    forged = _relabel(encrypt_vector(other, np.zeros(64)).to_bytes(), ctx.key_id)
    # client 1 signs a receipt for the relabelled ciphertext (e.g. it is malicious)
    agg.add(forged, sender=1, receipt=clients[1].sign_upload(forged, round=77))
    with pytest.raises(DecryptionError):
        key_holder.decrypt_aggregate(agg.result())


# -- strict parsing of uploads ---------------------------------------------------------
_HEAD = struct.Struct("<7sB32sQdI")


def _relabel(blob: bytes, key_id: bytes) -> bytes:
    magic, ver, _, dim, bound, n = _HEAD.unpack_from(blob, 0)
    return _HEAD.pack(magic, ver, key_id, dim, bound, n) + blob[_HEAD.size :]


def _drop_last_chunk(blob: bytes) -> bytes:
    magic, ver, kid, dim, bound, n = _HEAD.unpack_from(blob, 0)
    off = _HEAD.size
    for _ in range(n - 1):
        (ln,) = struct.unpack_from("<I", blob, off)
        off += 4 + ln
    return _HEAD.pack(magic, ver, kid, dim, bound, n - 1) + blob[_HEAD.size : off]


def _malformed_cases(pub: PublicContext) -> dict[str, Callable[[bytes], bytes]]:
    other = KeyHolder.generate().public_context()
    nv = KeyHolder.generate(NVFLARE_PARAMS).public_context()
    x = _inputs(1, DIM, seed=3)[0]
    return {
        "empty": lambda b: b"",
        "random bytes": lambda b: os.urandom(len(b)),
        "truncated": lambda b: b[: len(b) // 2],
        "one byte short": lambda b: b[:-1],
        "trailing bytes": lambda b: b + b"\x00",
        "bad magic": lambda b: b"X" + b[1:],
        "wrong chunk count": _drop_last_chunk,
        "wrong dim": lambda b: encrypt_vector(pub, x[:-1]).to_bytes(),
        "wrong bound": lambda b: encrypt_vector(pub, x / 2, bound=0.5).to_bytes(),
        "scale forged": lambda b: _patch_bound(encrypt_vector(pub, x / 2, bound=0.5).to_bytes()),
        "another key": lambda b: encrypt_vector(other, x).to_bytes(),
        "foreign params relabelled": lambda b: _relabel(
            encrypt_vector(nv, x).to_bytes(), pub.key_id
        ),
        "chunk garbage": lambda b: b[: _HEAD.size + 4] + os.urandom(len(b) - _HEAD.size - 4),
    }


def _patch_bound(blob: bytes) -> bytes:
    magic, ver, kid, dim, _, n = _HEAD.unpack_from(blob, 0)
    return _HEAD.pack(magic, ver, kid, dim, 1.0, n) + blob[_HEAD.size :]


def test_malformed_uploads_rejected_opaquely(pub: PublicContext) -> None:
    good = encrypt_vector(pub, _inputs(1, DIM, seed=4)[0]).to_bytes()
    cases = _malformed_cases(pub)
    assert len(cases) >= 6
    agg = Aggregator(pub, DIM, round=5)
    for sender, (name, mutate) in enumerate(cases.items()):
        bad = mutate(good)
        with pytest.raises(DecryptionError) as info:
            EncryptedVector.from_bytes(pub, bad, dim=DIM)
        assert str(info.value) == "decryption failed", name  # one opaque message
        with pytest.raises(RemoteProtocolError) as rinfo:
            agg.add(bad, sender=sender)
        assert rinfo.value.sender == sender, name
        assert isinstance(rinfo.value.__cause__, CryptoError), name
    assert agg.count == 0
    agg.add(good, sender=99)
    with pytest.raises(RemoteProtocolError):  # replayed / duplicate sender
        agg.add(good, sender=99)
    assert agg.senders == (99,)


def test_round_completes_without_offenders(key_holder: KeyHolder, pub: PublicContext) -> None:
    n = 10
    xs = _inputs(n, DIM, seed=11)
    cases = list(_malformed_cases(pub).values())
    tamper = {i: cases[i] for i in (1, 4, 6)}
    r = simulate_ckks_round(xs, key_holder=key_holder, client_keys=CLIENT_KEYS[:n], drop={8: "upload"},
                            tamper=tamper, round=6)
    expect = [i for i in range(n) if i not in (1, 4, 6, 8)]
    assert r.survivors == tuple(expect)
    assert set(r.excluded) == {1, 4, 6}
    assert 8 not in r.upload_bytes
    assert _rel_err(r.total, np.sum([xs[i] for i in expect], axis=0), 1.0) <= TOL


def test_round_aborts_below_minimum(key_holder: KeyHolder) -> None:
    with pytest.raises(RoundAbortedError):
        simulate_ckks_round(_inputs(3, 10), key_holder=key_holder, client_keys=CLIENT_KEYS[:3], drop=[0, 1],
                            round=7)


@pytest.mark.slow
def test_one_million_parameters(key_holder: KeyHolder) -> None:
    d, n = 1_000_000, 3
    xs = _inputs(n, d, seed=21)
    r = simulate_ckks_round(xs, key_holder=key_holder, client_keys=CLIENT_KEYS[:n], round=8)
    assert _rel_err(r.total, np.sum(xs, axis=0), 1.0) <= TOL
    assert max(r.upload_bytes.values()) / d <= 33


def test_key_holder_floods_released_decryptions(pub: PublicContext) -> None:
    # Li-Micciancio (EUROCRYPT 2021): the exact decryption leaks linear equations in the
    # secret key to whoever holds the ciphertext. The released sum carries fresh noise.
    outs = []
    for flood in (25, None):
        kh = KeyHolder.generate(flood_bits=flood, rng=Csprng(bytes(32)), members=MEMBERS)
        xs = _inputs(2, SLOTS, seed=5)
        agg = _signed_aggregate(kh, xs, round=1)
        outs.append(kh.decrypt_aggregate(agg.result()) - np.sum(xs, axis=0))
    flooded, exact = (float(np.std(o)) for o in outs)
    assert exact < 2e-8  # decryption noise of 2 fresh ciphertexts at scale 2^38
    assert 2.5e-8 < flooded < 3.5e-8  # sigma = 2^-25 ~ 2.98e-8 dominates
