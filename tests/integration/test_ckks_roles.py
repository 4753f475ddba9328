"""CKKS roles talking only through bytes, as they would across machines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.ckks import (
    DEFAULT_PARAMS,
    Aggregator,
    CkksClient,
    EncryptedAggregate,
    KeyHolder,
    PublicContext,
    SignedContext,
)


def test_key_holder_server_clients_over_bytes(tmp_path: Path) -> None:
    clients = [Ed25519PrivateKey.generate() for _ in range(5)]
    roster = [k.public_key().public_bytes_raw() for k in clients]  # the sites' roster
    holder_identity = Ed25519PrivateKey.generate()
    pinned = holder_identity.public_key().public_bytes_raw()  # in each client's configuration
    # key holder: explicit key generation; the secret stays in its own 0600 file
    secret = tmp_path / "keyholder" / "ckks.secret"
    secret.parent.mkdir()
    KeyHolder.generate(DEFAULT_PARAMS).save_secret(secret)
    key_holder = KeyHolder.load_secret(secret, DEFAULT_PARAMS, members=roster, identity_key=holder_identity)
    published = key_holder.signed_context().to_bytes()

    # server and clients receive only the signed public context bytes
    signed = SignedContext.from_bytes(published)
    server_ctx = PublicContext.from_bytes(signed.context, DEFAULT_PARAMS)
    assert not server_ctx.can_decrypt
    d, bound, rnd = 3000, 0.5, 3
    rng = np.random.default_rng(1)
    updates = [rng.uniform(-1, 1, d) * bound for _ in range(5)]
    weights = [1.0, 0.5, 1 / 3, 0.25, 0.2]  # staleness weights, applied by each client
    agg = Aggregator(server_ctx, d, bound=bound, round=rnd, session_id=signed.session_id)
    for i, (u, w) in enumerate(zip(updates, weights, strict=True)):
        client = CkksClient(SignedContext.from_bytes(published), key_holder=pinned, identity_key=clients[i])
        blob, receipt = client.encrypt(w * u, bound=bound, round=rnd)
        agg.add(blob, sender=i, receipt=receipt)

    # only the summed ciphertext (with the clients' receipts) travels to the key holder
    message = agg.result().to_bytes()
    total = key_holder.decrypt_aggregate(EncryptedAggregate.from_bytes(message))
    ref = sum(w * u for u, w in zip(updates, weights, strict=True))
    assert np.max(np.abs(total - ref)) / bound <= 1e-6
    assert len(message) < 30 * d + 64 * 1024
