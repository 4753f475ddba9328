"""Ed25519 signatures (RFC 8032) with a domain-separation prefix.

SecAgg against an active server (Bonawitz et al. CCS'17, section 4, "active
adversary") needs signed public keys (otherwise the server could substitute its own
keys and decrypt every share) and signed survivor sets (the consistency check). Each
signature is over

    "secure-fl/v1/" || context || 0x00 || message

with a distinct ``context`` per use ("secagg-advertise", "secagg-consistency", ...), so
a signature produced for one purpose is never valid for another (cross-protocol
replay). Verification failures raise :class:`~crypto.errors.CryptoError`;
:func:`verify_all` checks a batch on several cores (OpenSSL's Ed25519 verification
releases the GIL) and says which entries fail.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crypto import parallel
from crypto.errors import CryptoError
from crypto.prg import Csprng

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "generate_identity",
    "identity_public_bytes",
    "remembering_valid_signatures",
    "sign",
    "verify",
    "verify_all",
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
    if not _valid(public_key, signature, _framed(context, message)):
        raise CryptoError(_BAD)


_MIN_PER_THREAD = 8
"""A thread gets at least this many verifications (~0.1 ms each): below it, handing work
to a thread costs more than it saves."""


_MEMO_CAPACITY = 1 << 16
_memo: set[bytes] | None = None
"""Digests of (key, signature, framed message) triples this process found valid, while
:func:`remembering_valid_signatures` is on; ``None`` (off) by default."""


@contextlib.contextmanager
def remembering_valid_signatures() -> Iterator[None]:
    """Within the block, this process verifies each valid signature once.

    Ed25519 verification is a deterministic function of (public key, signature,
    message), so a triple found valid is valid again: inside the block a repeated valid
    triple is accepted from a memo of SHA-256 digests of the length-prefixed triple
    (a forged or altered signature is never in it: that would take a SHA-256 collision
    with a valid triple). Every decision is the one :func:`verify` makes; only the
    repeated work goes.

    For simulations that run many parties in one process (the in-process transport's
    workers), where each party verifies the same cohort signatures: each real site, one
    per process, still verifies every signature it receives. The memo holds at most
    65,536 digests (2 MiB) and is emptied when full. Nesting is allowed.
    """
    global _memo
    outer = _memo
    if outer is None:
        _memo = set()
    try:
        yield
    finally:
        _memo = outer


def _triple_digest(public_key: bytes, signature: bytes, framed: bytes) -> bytes:
    return hashlib.sha256(
        len(public_key).to_bytes(2, "big") + public_key + len(signature).to_bytes(2, "big") + signature + framed
    ).digest()


def _valid(public_key: bytes, signature: bytes, framed: bytes) -> bool:
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        return False
    memo = _memo
    if memo is None:
        return _openssl_valid(public_key, signature, framed)
    key = _triple_digest(public_key, signature, framed)
    if key in memo:
        return True
    if not _openssl_valid(public_key, signature, framed):
        return False
    if len(memo) >= _MEMO_CAPACITY:
        memo.clear()
    memo.add(key)
    return True


def _openssl_valid(public_key: bytes, signature: bytes, framed: bytes) -> bool:
    try:
        _public_key(public_key).verify(signature, framed)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_all(
    entries: Sequence[tuple[bytes, bytes, bytes]], *, context: bytes, threads: int | None = None
) -> list[bool]:
    """For each ``(public_key, signature, message)``: is the signature valid for the framed
    message? The same decision as :func:`verify`, entry by entry.

    The batch is split into contiguous chunks verified on up to ``threads`` threads
    (default :func:`crypto.parallel.threads`) of the shared pool; each chunk is
    verified one signature at a time (``cryptography`` offers no batch verification),
    so this saves wall-clock time, not work. The answer does not depend on ``threads``.
    """
    framed = [(pk, sig, _framed(context, msg)) for pk, sig, msg in entries]
    workers = parallel.threads() if threads is None else parallel.check_threads(threads)
    workers = max(1, min(workers, len(framed) // _MIN_PER_THREAD))
    if workers == 1:
        return [_valid(*e) for e in framed]
    per = -(-len(framed) // workers)
    chunks = [framed[lo:lo + per] for lo in range(0, len(framed), per)]

    def check(chunk: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
        return [_valid(*e) for e in chunk]

    return [ok for part in parallel.run_all([functools.partial(check, c) for c in chunks]) for ok in part]
