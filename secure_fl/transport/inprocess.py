"""The in-process transport: simulated parties on a virtual clock.

It implements :class:`secure_fl.engine.transport.Transport` for parties that live in
this process or in a pool of worker processes, and only moves envelopes and time:

* **virtual clock**: a party's answer to a message arrives after
  ``download(bytes of the message) + train(samples_processed of the reply) +
  upload(bytes of the reply)`` seconds of its device profile (:mod:`secure_fl.devices`:
  compute, bandwidth, stragglers); an ``Exchange`` lasts until its slowest answer, or
  its ``timeout`` (``aggregation.timeout_s`` for training), after which the late parties
  count as not having answered. Posted messages (asynchronous training) are answered
  at their own arrival times, one :class:`NextReply` at a time. Hello, the memory-budget
  probe, evaluation and countersigning take no virtual time (they are outside the
  protocol being simulated).
* **dropouts at every stage**: in each aggregation a client goes silent with
  probability ``simulation.dropout``, from a stage drawn uniformly among the protocol's
  stages (SecAgg ``advertise``, ``share_keys``, ``masked_input``, ``unmask``; CKKS and
  plain ``upload``); or exactly as a :class:`~secure_fl.transport.dropouts.DropPlan`
  says. Draws come from a generator seeded by the public seed, in address order.
* **worker pool**: with ``workers > 1`` each party is pinned to one of ``workers``
  forked processes (address ``a`` to worker ``a mod workers``), which holds its engine
  and state; the messages of one exchange run there in parallel. Parties, model and
  data exist before the fork, so they reach the workers once; each batch of messages
  is pickled once per worker, so an array shared by many messages (the global model)
  crosses once. Every client-side random choice depends on the client's name and the
  aggregation (:mod:`secure_fl.engine.public`), never on the worker, so the results are
  the same for any number of workers.
* **shared verification**: the parties of one batch run in one process and verify the
  same cohort signatures (every neighbour's signed keys, the consistency quorum), so
  each valid signature is verified once per batch
  (:func:`crypto.signatures.remembering_valid_signatures`; a forged one still fails for
  every party). Every decision is the one each party would make alone; a deployed
  site, one per process, verifies everything it receives.

A party whose handler raises answers with ``refused`` and ``refusal = "error"`` (the
transport builds that envelope), so the engine always learns why.
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np

from crypto.signatures import remembering_valid_signatures
from secure_fl.devices import DeviceProfile
from secure_fl.engine.client import DictState, StateStore
from secure_fl.engine.transport import (
    SETUP,
    Envelope,
    Exchange,
    NextReply,
    Post,
)
from secure_fl.transport.dropouts import STAGE_ORDER, DropPlan, stage_order

__all__ = ["Handler", "InProcessTransport", "SimParty"]

FREE_STAGES = frozenset({"hello", "probe", "evaluate", "witness"})


class Handler(Protocol):
    def handle(self, kind: str, envelope: Envelope, state: StateStore) -> Envelope: ...


@dataclass
class SimParty:
    """One simulated party: its name, engine, device and state."""

    name: str
    engine: Handler
    profile: DeviceProfile
    role: str = "client"
    state: DictState = field(default_factory=DictState)


def _serve(party: SimParty, kind: str, env: Envelope) -> Envelope:
    try:
        return party.engine.handle(kind, env, party.state)
    except Exception as exc:  # the transport reports a crashed handler as a refusal
        return Envelope(fields={"refused": f"{type(exc).__name__}: {exc}"[:1000], "refusal": "error",
                                "site": party.name})


def _size(env: Envelope) -> int:
    """Bytes on the wire: frames, arrays, and each field's key and value (bytes and
    strings by length, numbers 8 bytes): never a ``repr``, whose length depends on the
    values of random bytes."""
    size = sum(len(f) for f in env.frames) + sum(int(np.asarray(a).nbytes) for a in env.arrays.values())
    for key, value in env.fields.items():
        items = value if isinstance(value, list) else [value]
        size += len(key) + sum(len(v) if isinstance(v, bytes | str) else 8 for v in items)
    return size


# -- the pinned worker pool ----------------------------------------------------------------------
_PARTIES: list[SimParty] = []  # inherited by forked workers (never pickled)


def _worker(conn: Connection, inherited: list[Connection]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # Close the parent's pipe ends this fork inherited: once the server process dies
    # (even by SIGKILL), recv() then sees EOF and the worker exits instead of waiting.
    for end in inherited:
        end.close()
    import torch

    from crypto.parallel import set_threads

    torch.set_num_threads(1)
    set_threads(1)  # one job per core already: masking and verification must not oversubscribe
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        if batch is None:
            return
        with remembering_valid_signatures():  # the parties of one batch share the cohort's signatures
            conn.send([(a, _serve(_PARTIES[a], kind, env)) for a, kind, env in batch])


class _PinnedPool:
    """``workers`` forked processes; party ``a`` always runs in worker ``a % workers``."""

    def __init__(self, parties: list[SimParty], workers: int) -> None:
        global _PARTIES
        _PARTIES = parties
        ctx = mp.get_context("fork")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, [*self.conns, parent]), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(self, batch: list[tuple[int, str, Envelope]]) -> dict[int, Envelope]:
        per: dict[int, list[tuple[int, str, Envelope]]] = {}
        for item in batch:
            per.setdefault(item[0] % len(self.conns), []).append(item)
        for w, items in per.items():
            self.conns[w].send(items)
        out: dict[int, Envelope] = {}
        for w in per:
            for a, env in self.conns[w].recv():
                out[a] = env
        return {a: out[a] for a in sorted(out)}

    def close(self, *, terminate: bool = False) -> None:
        for conn in self.conns:
            try:
                if not terminate:
                    conn.send(None)
                conn.close()
            except OSError:
                pass
        for proc in self.procs:
            if terminate:
                proc.terminate()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.conns, self.procs = [], []


class InProcessTransport:
    """Simulated parties at addresses ``0..len(parties)-1`` (see the module docstring).

    ``dropout``: per-aggregation probability of going silent; ``drop_plan`` replaces the
    draws; ``protocol`` names the stages; ``seed`` seeds the dropout draws.
    """

    def __init__(
        self,
        parties: Sequence[SimParty],
        *,
        protocol: str,
        dropout: float = 0.0,
        seed: int = 0,
        drop_plan: DropPlan | None = None,
        workers: int = 1,
    ) -> None:
        self.parties = list(parties)
        self.protocol = protocol
        self.dropout = dropout
        self.drop_plan = drop_plan
        self.rng = np.random.default_rng([seed, 0xD809])
        self.clock = 0.0
        self._aggregation: dict[int, int] = {}  # address -> aggregation it is in
        self._silent_from: dict[int, tuple[int, int]] = {}  # address -> (aggregation, stage position)
        self._posted: list[tuple[float, int, int, Envelope]] = []
        self._drawn: set[tuple[int, int]] = set()
        self._seq = 0
        self.on_exchange: Callable[[Exchange, dict[int, Envelope]], None] | None = None
        self._pool = _PinnedPool(self.parties, workers) if workers > 1 and "fork" in mp.get_all_start_methods() \
            else None

    # -- Transport --------------------------------------------------------------------------------
    def reachable(self) -> list[int]:
        return list(range(len(self.parties)))

    def now(self) -> float:
        return self.clock

    def exchange(self, command: Exchange) -> dict[int, Envelope]:
        live = self._deliverable(command.messages, command.stage)
        replies = self._run(live)
        if command.stage in FREE_STAGES:
            return replies
        elapsed: dict[int, float] = {a: self._seconds(a, live[a][1], env) for a, env in replies.items()}
        timeout = command.timeout
        if timeout is not None:
            late = [a for a, t in elapsed.items() if t > timeout]
            for a in late:
                replies.pop(a)
                elapsed.pop(a)
            if late or len(replies) < len(command.messages):
                self.clock += timeout
            else:
                self.clock += max(elapsed.values(), default=0.0)
        else:
            self.clock += max(elapsed.values(), default=0.0)
        return replies

    def post(self, command: Post) -> None:
        live = self._deliverable(command.messages, command.stage)
        replies = self._run(live)
        for a, env in sorted(replies.items()):
            arrival = self.clock + self._seconds(a, live[a][1], env)
            heapq.heappush(self._posted, (arrival, self._seq, a, env))
            self._seq += 1

    def next_reply(self, command: NextReply) -> tuple[int, Envelope] | None:
        if not self._posted:
            if command.timeout is not None:
                self.clock += command.timeout
            return None
        arrival = self._posted[0][0]
        if command.timeout is not None and arrival > self.clock + command.timeout:
            self.clock += command.timeout
            return None
        _, _, a, env = heapq.heappop(self._posted)
        self.clock = max(self.clock, arrival)
        return a, env

    def close(self, *, terminate: bool = False) -> None:
        if self._pool is not None:
            self._pool.close(terminate=terminate)
            self._pool = None

    # -- helpers ----------------------------------------------------------------------------------
    def _run(self, live: dict[int, tuple[str, Envelope]]) -> dict[int, Envelope]:
        batch = [(a, kind, env) for a, (kind, env) in sorted(live.items())]
        if self._pool is not None and len(batch) > 1:
            return self._pool.run(batch)
        with remembering_valid_signatures():
            return {a: _serve(self.parties[a], kind, env) for a, kind, env in batch}

    def _seconds(self, address: int, sent: Envelope, reply: Envelope) -> float:
        prof = self.parties[address].profile
        samples = reply.fields.get("samples_processed")
        train = prof.train_seconds(samples) if isinstance(samples, int) and not isinstance(samples, bool) else 0.0
        return prof.download_seconds(_size(sent)) + train + prof.upload_seconds(_size(reply))

    def _deliverable(self, messages: Any, stage: str) -> dict[int, tuple[str, Envelope]]:
        """The messages whose recipient is not silent at ``stage`` (dropouts drawn here)."""
        out: dict[int, tuple[str, Envelope]] = {}
        for a, (kind, env) in sorted(messages.items()):
            if not 0 <= a < len(self.parties):
                continue
            if kind == SETUP:
                version = env.fields.get("version")
                if isinstance(version, int):
                    self._aggregation[a] = version
                    if env.fields.get("aggregate") is True and (a, version) not in self._drawn:
                        self._drawn.add((a, version))
                        self._draw(a, version)
            if self._silent(a, stage):
                continue
            out[a] = (kind, env)
        return out

    def _draw(self, address: int, version: int) -> None:
        party = self.parties[address]
        if party.role != "client":
            return
        if self.drop_plan is not None:
            return
        stages = [s for s in ("advertise", "share_keys", "masked_input", "unmask")] if self.protocol == "secagg" \
            else ["upload"]
        if self.dropout > 0 and self.rng.random() < self.dropout:
            stage = str(self.rng.choice(stages))
            pos = stage_order(self.protocol, stage)
            if pos is not None:
                self._silent_from[address] = (version, pos)

    def _silent(self, address: int, stage: str) -> bool:
        pos = stage_order(self.protocol, stage)
        if pos is None:
            return False
        version = self._aggregation.get(address)
        if version is None:
            return False
        if self.drop_plan is not None:
            return self.drop_plan.silent(version, self.parties[address].name, stage)
        at = self._silent_from.get(address)
        return at is not None and at[0] == version and pos >= at[1]


_ = (STAGE_ORDER, os)
