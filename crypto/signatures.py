"""Ed25519 signatures (RFC 8032) with a domain-separation prefix.

SecAgg against an active server (Bonawitz et al. CCS'17, section 4, "active
adversary") needs signed public keys (otherwise the server could substitute its own
keys and decrypt every share) and signed survivor sets (the consistency check). Each
signature is over

    "secure-fl/v1/" || context || 0x00 || message

with a distinct ``context`` per use ("secagg-advertise", "secagg-consistency", ...), so
a signature produced for one purpose is never valid for another (cross-protocol
replay). Verification failures raise :class:`~crypto.errors.CryptoError`.
"""

from __future__ import annotations

import functools

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crypto.errors import CryptoError
from crypto.prg import Csprng

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "generate_identity",
    "identity_public_bytes",
    "sign",
    "verify",
]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_PREFIX = b"secure-fl/v1/"
_BAD = "signature verification failed"


def _framed(context: bytes, message: bytes) -> bytes:
    if not isinstance(context, bytes) or not context or b"\x00" in context:
        raise CryptoError("a signature context is non-empty bytes without NUL")
    return _PREFIX + context + b"\x00" + message


@functools.lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    """The parsed key object for a 32-byte public key (parsed once: a cohort's keys are
    verified against many times per round). Raises ValueError for an invalid encoding."""
    return Ed25519PublicKey.from_public_bytes(raw)


def generate_identity(rng: Csprng) -> Ed25519PrivateKey:
    """An Ed25519 identity key drawn from the injected CSPRNG."""
    return Ed25519PrivateKey.from_private_bytes(rng.random_bytes(32))


def identity_public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte raw public key of an identity key."""
    return key.public_key().public_bytes_raw()


def sign(key: Ed25519PrivateKey, message: bytes, *, context: bytes) -> bytes:
    """Ed25519 signature of the domain-separated message (64 bytes)."""
    return key.sign(_framed(context, message))


def verify(public_key: bytes, signature: bytes, message: bytes, *, context: bytes) -> None:
    """Raise :class:`~crypto.errors.CryptoError` (opaque) unless ``signature`` is valid for the framed message."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        raise CryptoError(_BAD)
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise CryptoError(_BAD)
    try:
        _public_key(public_key).verify(signature, _framed(context, message))
    except (InvalidSignature, ValueError) as exc:
        raise CryptoError(_BAD) from exc
