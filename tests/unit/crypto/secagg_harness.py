"""In-test driver that stops a round at a chosen server stage (test helper)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.prg import Csprng
from crypto.secagg import (
    Deadline,
    DownlinkMessage,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    Stage,
    UplinkMessage,
    decode,
    encode,
)
from crypto.signatures import generate_identity, identity_public_bytes


@dataclass
class Harness:
    config: RoundConfig
    identities: list[Ed25519PrivateKey]
    clients: list[SecAggClient]
    server: SecAggServer
    inputs: list[np.ndarray]
    outbox: list[DownlinkMessage]

    def step(self, up: Callable[[UplinkMessage], UplinkMessage] | None = None) -> None:
        """Deliver the outbox, feed every reply (rewritten by ``up``) to the server, close the stage."""
        stage = self.server.stage
        replies = []
        for msg in self.outbox:
            replies.extend(self.clients[msg.recipient].receive(decode(encode(msg))))
        self.outbox = []
        for r in replies:
            self.outbox.extend(self.server.receive(decode(encode(up(r) if up else r))))
        if self.server.stage is stage:
            self.outbox.extend(self.server.receive(self.deadline(stage)))

    def run_until(self, stage: Stage, up: Callable[[UplinkMessage], UplinkMessage] | None = None) -> Harness:
        while self.server.stage is not stage:
            self.step(up)
        return self

    def deadline(self, stage: Stage) -> Deadline:
        return Deadline(session_id=self.config.session_id, round_number=self.config.round_number, waiting_for=stage)

    def to(self, client: int) -> DownlinkMessage:
        return next(m for m in self.outbox if m.recipient == client)


def make(
    n: int = 5,
    t: int = 3,
    d: int = 64,
    bits: int = 16,
    neighbors: int | None = None,
    seed: int = 0,
    **config: object,
) -> Harness:
    ids = [generate_identity(Csprng(bytes([seed]) + i.to_bytes(2, "big") + bytes(29))) for i in range(n)]
    cfg = RoundConfig(
        session_id=bytes([seed]) * 32,
        round_number=1,
        bits=bits,
        length=d,
        threshold=t,
        identity_keys=tuple(identity_public_bytes(k) for k in ids),
        graph_seed=bytes(32),
        neighbors=neighbors,
        **config,  # type: ignore[arg-type]
    )
    gen = np.random.default_rng(seed)  # simulation data only, not a mask path
    xs = [gen.integers(0, 2**bits, size=d, dtype=np.uint32) for _ in range(n)]
    # the test chose the parameters: no client floors beyond RoundConfig's own checks
    floors = (
        {"min_cohort_size": 2, "min_threshold": 1, "min_neighbors": 1}
        if "min_cohort_size" in inspect.signature(SecAggClient).parameters
        else {}
    )
    clients = [
        SecAggClient(cfg, index=i, identity_key=ids[i], vector=xs[i],
                     rng=Csprng(bytes([seed, 1]) + i.to_bytes(2, "big") + bytes(28)), **floors)  # type: ignore[arg-type]
        for i in range(n)
    ]
    server = SecAggServer(cfg)
    return Harness(cfg, ids, clients, server, xs, server.start())


def graph_of(h: Harness) -> tuple[frozenset[int], ...]:
    """The round's graph (known once the advertisements are in)."""
    if hasattr(h.server, "graph"):
        return h.server.graph
    return tuple(h.config.neighbours(u) for u in range(h.config.n))  # type: ignore[attr-defined]
