"""CKKS roles talking only through bytes, as they would across machines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crypto.ckks import (
    DEFAULT_PARAMS,
    Aggregator,
    EncryptedAggregate,
    KeyHolder,
    PublicContext,
    encrypt_vector,
)


def test_key_holder_server_clients_over_bytes(tmp_path: Path) -> None:
    # key holder: explicit key generation; the secret stays in its own 0600 file
    secret = tmp_path / "keyholder" / "ckks.secret"
    secret.parent.mkdir()
    KeyHolder.generate(DEFAULT_PARAMS).save_secret(secret)
    key_holder = KeyHolder.load_secret(secret, DEFAULT_PARAMS)
    public = key_holder.public_context_bytes()

    # server and clients receive only the public context bytes
    server_ctx = PublicContext.from_bytes(public, DEFAULT_PARAMS)
    assert not server_ctx.can_decrypt
    d, bound = 3000, 0.5
    rng = np.random.default_rng(1)
    updates = [rng.uniform(-1, 1, d) * bound for _ in range(5)]
    weights = [1.0, 0.5, 1 / 3, 0.25, 0.2]  # staleness weights, applied by each client
    agg = Aggregator(server_ctx, d, bound=bound, round=3)
    for i, (u, w) in enumerate(zip(updates, weights, strict=True)):
        client_ctx = PublicContext.from_bytes(public, DEFAULT_PARAMS)
        agg.add(encrypt_vector(client_ctx, w * u, bound=bound).to_bytes(), sender=i)

    # only the summed ciphertext travels to the key holder
    message = agg.result().to_bytes()
    total = key_holder.decrypt_aggregate(EncryptedAggregate.from_bytes(message))
    ref = sum(w * u for u, w in zip(updates, weights, strict=True))
    assert np.max(np.abs(total - ref)) / bound <= 1e-6
    assert len(message) < 30 * d + 64 * 1024
