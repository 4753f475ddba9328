"""Authenticated encryption of Shamir shares (ChaCha20-Poly1305, RFC 8439).

In SecAgg (Bonawitz et al. CCS'17, round 1 "ShareKeys") client ``u`` sends each
neighbour ``v`` its shares of ``b_u`` and ``s_sk_u`` *through the server*, encrypted
under ``c_uv`` (see :mod:`crypto.key_agreement`). The associated data binds the
ciphertext to

    AD = "secure-fl/secagg/v1/share" || len(session) || session || round || sender || receiver

so the server cannot redirect a ciphertext to another receiver, swap senders, or
replay it into another round or session: each of those fails authentication.

Ciphertext layout: ``nonce (12 bytes) || ChaCha20-Poly1305(key, nonce, pt, AD)``. The
nonce is drawn from the injected CSPRNG (each key encrypts at most two messages, one
per direction, so random 96-bit nonces never collide in practice). Every failure
(wrong key, truncated or modified bytes, wrong AD) raises the same opaque
:class:`~crypto.errors.DecryptionError`.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto.errors import CryptoError, DecryptionError
from crypto.prg import Csprng

__all__ = ["NONCE_BYTES", "TAG_BYTES", "decrypt_share", "encrypt_share", "share_ad"]

NONCE_BYTES = 12
TAG_BYTES = 16
_AD_LABEL = b"secure-fl/secagg/v1/share"


def share_ad(*, session_id: bytes, round_number: int, sender: int, receiver: int) -> bytes:
    """The associated data binding a share ciphertext to its session, round and parties."""
    if not isinstance(session_id, bytes) or not 1 <= len(session_id) <= 255:
        raise CryptoError("session id must be 1..255 bytes")
    if not all(0 <= x < 1 << 32 for x in (round_number, sender, receiver)):
        raise CryptoError("round and party indices must be in [0, 2**32)")
    return (
        _AD_LABEL
        + bytes([len(session_id)])
        + session_id
        + struct.pack(">III", round_number, sender, receiver)
    )


def encrypt_share(
    key: bytes,
    plaintext: bytes,
    *,
    session_id: bytes,
    round_number: int,
    sender: int,
    receiver: int,
    rng: Csprng,
) -> bytes:
    """``nonce || ChaCha20-Poly1305(key, nonce, plaintext, AD)`` with AD from :func:`share_ad`."""
    if not isinstance(key, bytes) or len(key) != 32:
        raise CryptoError("a share encryption key is exactly 32 bytes")
    ad = share_ad(session_id=session_id, round_number=round_number, sender=sender, receiver=receiver)
    nonce = rng.random_bytes(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def decrypt_share(
    key: bytes,
    ciphertext: bytes,
    *,
    session_id: bytes,
    round_number: int,
    sender: int,
    receiver: int,
) -> bytes:
    """Inverse of :func:`encrypt_share`; any failure raises the opaque DecryptionError."""
    try:
        if not isinstance(ciphertext, bytes) or len(ciphertext) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError()
        if not isinstance(key, bytes) or len(key) != 32:
            raise DecryptionError()
        ad = share_ad(
            session_id=session_id, round_number=round_number, sender=sender, receiver=receiver
        )
        return ChaCha20Poly1305(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], ad)
    except (InvalidTag, CryptoError, ValueError, TypeError) as exc:
        raise DecryptionError() from exc
