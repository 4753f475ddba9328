"""X25519 key agreement and HKDF-SHA256 key derivation with purpose labels.

Secure aggregation (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS'17, section 4) needs three kinds of
symmetric keys, derived from two Diffie-Hellman key pairs per client:

* ``c_uv = HKDF(X25519(c_sk_u, c_pk_v), info = label("share-encryption") || ctx)``:
  the AEAD key that protects the Shamir shares ``u`` sends ``v`` through the server;
* ``s_uv = HKDF(X25519(s_sk_u, s_pk_v), info = label("pairwise-mask") || ctx)``:
  the PRG seed of the pairwise mask shared by ``u`` and ``v``;
* ``HKDF(b_u, info = label("self-mask") || ctx)``: the PRG seed of ``u``'s self mask.

``ctx = len(session) || session || round || min(u, v) || max(u, v)`` (fixed-width,
big-endian), so a key is bound to one purpose, one session, one round and one
unordered pair: a key derived for encryption can never equal a mask seed, and keys
do not repeat across rounds even if a client re-uses its key pair (Flower's SecAgg+
runs HKDF without any purpose label; this module exists so that we do not).

X25519 is RFC 7748 as implemented by ``cryptography``/OpenSSL; HKDF is RFC 5869 with
SHA-256. An all-zero shared secret (a small-order peer key) is rejected, and
:func:`validate_x25519_public` refuses, before any key agreement, a public key that
is not canonically encoded (u-coordinate ``>= p = 2^255 - 19``, or the ignored top
bit set) or has small order on the curve or its twist (X25519 of it with any clamped
scalar is all-zero; Bernstein's Curve25519 page lists these points). A SecAgg client
that advertises such a key is excluded; an honest client skips the peer instead of
failing its own round.
"""

from __future__ import annotations

import enum
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import CryptoError
from crypto.prg import Csprng

__all__ = [
    "KEY_BYTES",
    "Purpose",
    "derive_pair_key",
    "derive_self_mask_seed",
    "generate_x25519",
    "hkdf_sha256",
    "public_bytes",
    "x25519_private_from_bytes",
    "x25519_public_from_bytes",
    "x25519_shared_secret",
    "validate_x25519_public",
]

KEY_BYTES = 32
_LABEL_PREFIX = b"secure-fl/secagg/v1/"
_P = (1 << 255) - 19
_SMALL_ORDER = frozenset(
    {
        0,
        1,
        _P - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)


class Purpose(enum.Enum):
    """What a derived key is for; each value is a distinct HKDF ``info`` label."""

    SHARE_ENCRYPTION = b"share-encryption"
    PAIRWISE_MASK = b"pairwise-mask"
    SELF_MASK = b"self-mask"


def hkdf_sha256(ikm: bytes, *, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
    """RFC 5869 HKDF-SHA256 (extract then expand) of ``ikm``, as ``cryptography`` computes it."""
    if not isinstance(ikm, bytes | bytearray):
        raise CryptoError("HKDF input keying material must be bytes")
    if not 1 <= length <= 255 * 32:
        raise CryptoError(f"HKDF-SHA256 output length must be in [1, 8160], got {length}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(bytes(ikm))


def _context(purpose: Purpose, session_id: bytes, round_number: int, a: int, b: int) -> bytes:
    if not isinstance(session_id, bytes) or not 1 <= len(session_id) <= 255:
        raise CryptoError("session id must be 1..255 bytes")
    for name, value in (("round", round_number), ("party", a), ("party", b)):
        if not 0 <= value < 1 << 32:
            raise CryptoError(f"{name} index {value} is outside [0, 2**32)")
    return (
        _LABEL_PREFIX
        + purpose.value
        + bytes([len(session_id)])
        + session_id
        + struct.pack(">III", round_number, a, b)
    )


def generate_x25519(rng: Csprng) -> X25519PrivateKey:
    """A fresh X25519 private key drawn from the injected CSPRNG (32 keystream bytes)."""
    return X25519PrivateKey.from_private_bytes(rng.random_bytes(KEY_BYTES))


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32-byte raw public key of ``key``."""
    return key.public_key().public_bytes_raw()


def x25519_private_from_bytes(raw: bytes) -> X25519PrivateKey:
    """Load a 32-byte raw X25519 private key (e.g. one reconstructed from Shamir shares)."""
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise CryptoError("an X25519 private key is exactly 32 bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def x25519_public_from_bytes(raw: bytes) -> X25519PublicKey:
    """Load a 32-byte raw X25519 public key, checking type and length at the boundary."""
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise CryptoError("an X25519 public key is exactly 32 bytes")
    return X25519PublicKey.from_public_bytes(raw)


def validate_x25519_public(raw: bytes) -> None:
    """Raise :class:`~crypto.errors.CryptoError` unless ``raw`` is a valid X25519 public key.

    Valid: 32 bytes, little-endian ``u < p`` with bit 255 clear (canonical), not one of
    the canonical u-coordinates of small order on the curve or its twist
    (``0, 1, p - 1`` and the two points of order 8: X25519 of them with any clamped
    scalar is all-zero; the list of Bernstein's Curve25519 page and libsodium's
    blocklist). Points of the quadratic twist are accepted: X25519 is twist-secure
    (Bernstein, "Curve25519", PKC 2006: the twist's order is 4 times a prime, so
    apart from the blocklisted points of order dividing 4 a twist point leaks nothing
    about the private scalar). Cost: an integer compare and a set lookup (~1 us),
    against ~150 us for an on-curve test by modular exponentiation in Python.
    """
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise CryptoError("an X25519 public key is exactly 32 bytes")
    u = int.from_bytes(raw, "little")
    if u >= _P:
        raise CryptoError("X25519 public key is not canonically encoded (u >= 2^255 - 19 or top bit set)")
    if u in _SMALL_ORDER:
        raise CryptoError("X25519 public key has small order")


def x25519_shared_secret(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """RFC 7748 X25519(private, peer_public); small-order peer keys are refused."""
    try:
        shared = private.exchange(x25519_public_from_bytes(peer_public))
    except ValueError as exc:  # OpenSSL refuses an all-zero output
        raise CryptoError("X25519 key agreement failed (small-order public key)") from exc
    if shared == bytes(KEY_BYTES):
        raise CryptoError("X25519 key agreement failed (small-order public key)")
    return shared


def derive_pair_key(
    private: X25519PrivateKey,
    peer_public: bytes,
    *,
    purpose: Purpose,
    session_id: bytes,
    round_number: int,
    me: int,
    peer: int,
) -> bytes:
    """32-byte key for the unordered pair {me, peer}: HKDF(X25519(sk, pk), info=ctx).

    Both parties obtain the same key because the context orders the pair as
    ``(min, max)``. The salt is the session id (RFC 5869 section 3.1: a non-secret
    random salt strengthens extraction).
    """
    if purpose is Purpose.SELF_MASK:
        raise CryptoError("the self-mask seed is not derived from a key agreement")
    if me == peer:
        raise CryptoError("a pair key needs two distinct parties")
    info = _context(purpose, session_id, round_number, min(me, peer), max(me, peer))
    return hkdf_sha256(x25519_shared_secret(private, peer_public), info=info, salt=session_id)


def derive_self_mask_seed(
    b_seed: bytes, *, session_id: bytes, round_number: int, owner: int
) -> bytes:
    """PRG seed of the self mask ``PRG(b_u)``: HKDF(b_u, info=label("self-mask") || ctx)."""
    if not isinstance(b_seed, bytes) or len(b_seed) != KEY_BYTES:
        raise CryptoError("a self-mask seed b_u is exactly 32 bytes")
    info = _context(Purpose.SELF_MASK, session_id, round_number, owner, owner)
    return hkdf_sha256(b_seed, info=info, salt=session_id)
