"""The contract between the federated engine and a transport.

The engine (:mod:`secure_fl.engine`) holds every protocol, privacy and orchestration
decision; a transport only moves bytes and time. The server engine is *sans-I/O*: it
never opens a socket or reads a clock. It is written as a generator that yields
:data:`Command` objects and is resumed with their results (the events: replies from
parties, or nothing when a deadline passed); :func:`drive` is the only loop that
connects the two::

    engine command            transport does                     engine receives
    Exchange(messages, ...)   deliver, wait for replies or        {address: reply}
                              the deadline (virtual or real)      (missing = no answer)
    Post(messages)            deliver, do not wait                None
    NextReply(timeout)        wait for the next reply of a        (address, reply) or None
                              posted message, or the deadline     (None = deadline passed)
    Now()                     read the transport's clock          seconds since the start

Two transports implement :class:`Transport`:

* ``secure_fl.transport.inprocess``: simulated parties, a virtual clock from device
  profiles and message sizes, dropouts injected at every stage, a worker pool;
* ``secure_fl.transport.flower``: Flower's Grid (SuperLink/SuperNodes over TLS, or
  Flower's simulation runtime).

Addresses are opaque integers chosen by the transport (Flower node ids; simulated
party numbers). The engine learns who is behind an address from the party's own
``hello`` reply (name, role, identity key, proof of possession), never from the
transport.

A party that fails while handling a message answers with an envelope whose fields
carry ``refused`` (the reason) and ``refusal`` (``"budget"``, ``"rules"`` or
``"error"``); a transport that sees a party's handler crash builds that envelope
itself, so the engine always learns why.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "CKKS_DECRYPT",
    "EVALUATE",
    "HELLO",
    "KINDS",
    "PROBE",
    "PROTOCOL",
    "SETUP",
    "WITNESS",
    "Command",
    "Envelope",
    "Exchange",
    "FieldValue",
    "NextReply",
    "Now",
    "Post",
    "Transport",
    "drive",
]

# -- message kinds (a transport maps each onto its own message types) ------------------------
HELLO = "hello"
"""Server -> party: a fresh challenge; reply: name, role, identity key, proof of possession."""
PROBE = "probe"
"""Server -> client, once per run before the first aggregation (``sparsity.kind =
"memory_budget"``): the initial model and the candidate tensor subsets; the site trains
each on its own data and replies one validation accuracy per candidate, or refuses."""
SETUP = "setup"
"""Server -> client: an aggregation's public set-up (and the model); the client checks it
against its own rules, trains, encodes, starts its protocol client; reply: first frames."""
PROTOCOL = "protocol"
"""Server <-> client: later protocol frames of the running aggregation."""
WITNESS = "witness"
"""Server -> survivor: a ledger entry to check and countersign."""
EVALUATE = "evaluate"
"""Server -> client: a model to evaluate on the site's own test split (aggregates only)."""
CKKS_DECRYPT = "ckks_decrypt"
"""Server -> CKKS key holder: the aggregate ciphertext with the clients' signed receipts."""
KINDS = (HELLO, PROBE, SETUP, PROTOCOL, WITNESS, EVALUATE, CKKS_DECRYPT)

FieldValue = int | float | str | bytes | bool | list[int] | list[float] | list[str] | list[bytes] | list[bool]
"""Values a public field may take (what a Flower ``ConfigRecord`` can carry)."""


@dataclass(frozen=True)
class Envelope:
    """One message between the engine's parties: protocol frames, public scalar fields
    and public float arrays. Transports carry it as it is; nothing else travels."""

    frames: tuple[bytes, ...] = ()
    fields: Mapping[str, FieldValue] = field(default_factory=dict)
    arrays: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        """Field ``key``, checked to be of ``kind`` (``RemoteProtocolError`` otherwise)."""
        from secure_fl.errors import RemoteProtocolError

        value = self.fields.get(key)
        if value is None or (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise RemoteProtocolError(f"message field {key!r} is missing or not {kind}")
        return value

    def nbytes(self) -> int:
        """Payload size: frames, arrays and an estimate of the fields (for the clock)."""
        size = sum(len(f) for f in self.frames)
        size += sum(int(np.asarray(a).nbytes) for a in self.arrays.values())
        size += sum(len(k) + len(repr(v)) for k, v in self.fields.items())
        return size


# -- commands the engine yields -----------------------------------------------------------
@dataclass(frozen=True)
class Exchange:
    """Deliver ``messages`` (address -> (kind, envelope)) and wait for every reply or
    ``timeout`` seconds (``None``: the transport's own default). ``stage`` names the
    protocol stage, for dropout injection, progress and logs."""

    messages: Mapping[int, tuple[str, Envelope]]
    stage: str
    timeout: float | None = None


@dataclass(frozen=True)
class Post:
    """Deliver ``messages`` without waiting (asynchronous training); their replies come
    back one at a time through :class:`NextReply`."""

    messages: Mapping[int, tuple[str, Envelope]]
    stage: str


@dataclass(frozen=True)
class NextReply:
    """The next reply to a posted message, or ``None`` once ``timeout`` seconds passed
    (``None``: wait until one arrives or nothing is outstanding)."""

    timeout: float | None = None


@dataclass(frozen=True)
class Now:
    """Seconds since the transport started (virtual in-process, wall-clock on Flower)."""


Command = Exchange | Post | NextReply | Now


class Transport(Protocol):
    """What a transport provides; every method only moves bytes or reads time."""

    def reachable(self) -> list[int]:
        """Addresses of the parties currently connected (clients and a key holder)."""
        ...

    def exchange(self, command: Exchange) -> dict[int, Envelope]:
        """Replies by address; a party missing from the result did not answer in time."""
        ...

    def post(self, command: Post) -> None: ...

    def next_reply(self, command: NextReply) -> tuple[int, Envelope] | None: ...

    def now(self) -> float: ...


T = TypeVar("T")


def drive(engine: Generator[Command, Any, T], transport: Transport) -> T:
    """Run a sans-I/O engine generator over ``transport`` until it returns."""
    result: Any = None
    try:
        while True:
            command = engine.send(result)
            if isinstance(command, Exchange):
                result = transport.exchange(command)
            elif isinstance(command, Post):
                transport.post(command)
                result = None
            elif isinstance(command, NextReply):
                result = transport.next_reply(command)
            elif isinstance(command, Now):
                result = transport.now()
            else:  # pragma: no cover - a programming error in the engine
                raise TypeError(f"unknown engine command {command!r}")
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
