"""Ed25519 identity keys of simulated clients.

In a deployment each site holds its own identity key (``keys_dir/identity.key``,
:mod:`secure_fl.transport.flower.site`) and the federation roster lists the public
halves (:mod:`secure_fl.roster`). The in-process simulator gives every simulated client
the same kind of key, so the steps that rest on client signatures run for real in
simulation too: CKKS upload receipts counted by the key holder (:mod:`crypto.ckks`) and
the countersigned ledger (:mod:`secure_fl.witness`). Keys come from fresh OS entropy
(never from the run's seed): they are secrets of the clients, not simulation state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.prg import Csprng
from crypto.signatures import generate_identity, identity_public_bytes
from secure_fl.errors import ConfigError

__all__ = ["ClientIdentities"]


class ClientIdentities:
    """Client id -> Ed25519 identity key (the simulated clients' own keys)."""

    def __init__(self, keys: Mapping[int, Ed25519PrivateKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def generate(cls, client_ids: Iterable[int], *, rng: Csprng | None = None) -> ClientIdentities:
        """One fresh key per client id (``rng``: fresh OS entropy unless given)."""
        source = rng or Csprng.from_entropy()
        return cls({int(c): generate_identity(source) for c in client_ids})

    def key(self, client_id: int) -> Ed25519PrivateKey:
        """The identity key of ``client_id`` (held by that client only)."""
        try:
            return self._keys[client_id]
        except KeyError:
            raise ConfigError(f"client {client_id} has no identity key", field="clients.num") from None

    def public_key(self, client_id: int) -> bytes:
        return identity_public_bytes(self.key(client_id))

    def public_keys(self) -> dict[str, bytes]:
        """Roster view: client id (as the ledger names it, a string) -> public key."""
        return {str(c): identity_public_bytes(k) for c, k in sorted(self._keys.items())}
