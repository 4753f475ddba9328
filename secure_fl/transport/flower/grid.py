"""The Flower transport: the engine's commands over a Flower ``Grid``.

:class:`FlowerTransport` implements :class:`secure_fl.engine.transport.Transport` on
``flwr.serverapp.Grid`` (a SuperLink with SuperNodes over TLS, or Flower's simulation
runtime). It moves bytes and reads a clock, nothing else: every protocol, privacy and
orchestration decision is the engine's (:mod:`secure_fl.engine`).

* ``reachable()`` = ``grid.get_node_ids()`` (the SuperLink's connected SuperNodes);
* ``exchange`` pushes one Flower message per address and polls the replies every
  ``poll_interval`` s until all arrived or the timeout passed (``Exchange.timeout``, or
  the settings' ``train-timeout`` for set-up and ``stage-timeout`` for the rest);
* ``post`` pushes and returns; ``next_reply`` polls the posted messages and delivers
  their replies one at a time in arrival order (``None`` at the deadline, or when
  nothing is outstanding);
* ``now()`` = monotonic wall-clock seconds since the transport was built.

Engine message kinds map onto Flower message types (a ClientApp registers one handler
per type, :mod:`~secure_fl.transport.flower.client_app`): ``hello``, ``witness``,
``protocol`` and ``ckks_decrypt`` are ``query.secure_fl_<kind>``; ``setup`` is
``train.secure_fl_setup`` and ``probe`` ``train.secure_fl_probe`` (both train, so both
wait up to ``train-timeout``); ``evaluate`` is ``evaluate.secure_fl_evaluate``.

A reply that Flower marks as an error (the party's ClientApp raised, or the SuperLink
declared the node gone) or whose content is not an envelope becomes an envelope with
``refused`` (the reason) and ``refusal = "error"``, so the engine always learns why.

For tests, a :class:`~secure_fl.transport.dropouts.DropPlan` (``drops``) withholds the
messages of a named party from a stage of an aggregation on: the same dropouts the
in-process transport injects (a withheld message is never delivered, so the party
never answers it).
The transport learns a party's name only from the public ``site`` field of its hello
reply, for this and for the arrival log (:attr:`FlowerTransport.arrivals`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from flwr.app import Message
from flwr.serverapp import Grid

from secure_fl.engine.transport import (
    CKKS_DECRYPT,
    EVALUATE,
    HELLO,
    KINDS,
    PROBE,
    PROTOCOL,
    SETUP,
    WITNESS,
    Envelope,
    Exchange,
    NextReply,
    Post,
)
from secure_fl.errors import RemoteProtocolError
from secure_fl.transport.flower.codec import pack, unpack
from secure_fl.transport.flower.settings import DeploymentSettings

__all__ = ["MESSAGE_TYPES", "Arrival", "FlowerTransport", "kind_of", "message_type"]

MESSAGE_TYPES: Mapping[str, str] = {
    HELLO: "query.secure_fl_hello",
    WITNESS: "query.secure_fl_witness",
    PROTOCOL: "query.secure_fl_protocol",
    CKKS_DECRYPT: "query.secure_fl_ckks_decrypt",
    SETUP: "train.secure_fl_setup",
    PROBE: "train.secure_fl_probe",
    EVALUATE: "evaluate.secure_fl_evaluate",
}
"""Engine message kind -> Flower message type."""

_KIND_OF = {v: k for k, v in MESSAGE_TYPES.items()}
TTL_MARGIN = 60.0
"""Seconds a pushed message outlives its timeout at the SuperLink (then it expires)."""


def message_type(kind: str) -> str:
    """The Flower message type that carries engine message ``kind``."""
    try:
        return MESSAGE_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown engine message kind {kind!r}; expected one of {KINDS}") from None


def kind_of(mtype: str) -> str:
    """The engine message kind a Flower message type carries (``ValueError`` if none)."""
    try:
        return _KIND_OF[mtype]
    except KeyError:
        raise ValueError(f"not a secure-fl message type: {mtype!r}") from None


class Drops(Protocol):
    """What the transport asks a drop plan (:class:`secure_fl.transport.dropouts.DropPlan`)."""

    def silent(self, version: int, name: str, stage: str) -> bool: ...


@dataclass(frozen=True)
class Arrival:
    """One reply as it arrived: seconds since start, address, the party's name (if it
    said hello), the stage of the command it answers."""

    t: float
    address: int
    name: str | None
    stage: str


def error_envelope(reason: str) -> Envelope:
    """The envelope of a party that failed: ``refused`` = reason, ``refusal`` = ``error``."""
    return Envelope(fields={"refused": reason[:1000], "refusal": "error"})


class FlowerTransport:
    """:class:`~secure_fl.engine.transport.Transport` over a Flower ``Grid``."""

    def __init__(
        self,
        grid: Grid,
        settings: DeploymentSettings | None = None,
        *,
        group: str = "secure-fl",
        drops: Drops | None = None,
        on_stage: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grid = grid
        self.settings = settings or DeploymentSettings()
        self.group = group
        self.drops = drops
        self.on_stage = on_stage
        self._sleep = sleep
        self._clock = clock
        self._start = clock()
        self.names: dict[int, str] = {}
        """Address -> the name its party gave in its hello reply."""
        self.arrivals: list[Arrival] = []
        """Every reply in arrival order (what an in-process replay needs)."""
        self._pending: dict[str, tuple[int, str, float]] = {}  # message id -> (address, stage, expiry)
        self._arrived: deque[tuple[int, Envelope]] = deque()
        self._aggregation: dict[int, int] = {}  # address -> aggregation of its latest set-up

    # -- Transport -------------------------------------------------------------------------
    def reachable(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def now(self) -> float:
        return self._clock() - self._start

    def exchange(self, command: Exchange) -> dict[int, Envelope]:
        timeout = self._timeout(command.timeout, command.messages)
        ids = self._push(command.messages, command.stage, timeout)
        waiting = dict(ids)
        replies: dict[int, Envelope] = {}
        deadline = self._clock() + timeout
        while waiting:
            for mid, env in self._pull(list(waiting)):
                address = waiting.pop(mid)
                replies[address] = env
                self._note(address, env, command.stage)
            if not waiting or self._clock() >= deadline:
                break
            self._sleep(min(self.settings.poll_interval, max(0.0, deadline - self._clock())))
        return replies

    def post(self, command: Post) -> None:
        timeout = self._timeout(None, command.messages)
        expiry = self._clock() + timeout + TTL_MARGIN
        for mid, address in self._push(command.messages, command.stage, timeout).items():
            self._pending[mid] = (address, command.stage, expiry)

    def next_reply(self, command: NextReply) -> tuple[int, Envelope] | None:
        deadline = None if command.timeout is None else self._clock() + command.timeout
        while True:
            if self._arrived:
                return self._arrived.popleft()
            now = self._clock()
            for mid, (_, _, expiry) in list(self._pending.items()):
                if now >= expiry:  # expired at the SuperLink too: the party never answered
                    del self._pending[mid]
            if not self._pending:
                return None
            for mid, env in self._pull(list(self._pending)):
                address, stage, _ = self._pending.pop(mid)
                self._note(address, env, stage)
                self._arrived.append((address, env))
            if self._arrived:
                continue
            if deadline is not None and self._clock() >= deadline:
                return None
            wait = self.settings.poll_interval
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - self._clock()))
            self._sleep(wait)

    # -- internals -------------------------------------------------------------------------
    def _timeout(self, timeout: float | None, messages: Mapping[int, tuple[str, Envelope]]) -> float:
        if timeout is not None:
            if not timeout >= 0:
                raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
            return float(timeout)
        if any(kind in (SETUP, PROBE) for kind, _ in messages.values()):
            return self.settings.train_timeout
        return self.settings.stage_timeout

    def _withheld(self, address: int, kind: str, env: Envelope, stage: str) -> bool:
        """True when the drop plan silences this party at this stage of the aggregation
        it is in (the aggregation of the latest set-up it was sent, as in-process)."""
        if self.drops is None:
            return False
        if kind == SETUP:
            version = env.fields.get("version")
            if isinstance(version, int) and not isinstance(version, bool):
                self._aggregation[address] = version
        version = self._aggregation.get(address)
        name = self.names.get(address)
        return version is not None and name is not None and self.drops.silent(version, name, stage)

    def _push(
        self, messages: Mapping[int, tuple[str, Envelope]], stage: str, timeout: float
    ) -> dict[str, int]:
        if self.on_stage is not None:
            self.on_stage(stage)
        out: list[Message] = []
        addresses: list[int] = []
        for address, (kind, env) in sorted(messages.items()):
            if self._withheld(address, kind, env, stage):
                continue
            content = pack(frames=env.frames, fields=env.fields, arrays=env.arrays)
            out.append(
                Message(content, int(address), message_type(kind), group_id=f"{self.group}/{stage}",
                        ttl=timeout + TTL_MARGIN)
            )
            addresses.append(address)
        if not out:
            return {}
        ids: dict[str, int] = {}
        for mid, address in zip(self.grid.push_messages(out), addresses, strict=True):
            if mid:  # an empty id: the SuperLink did not accept the message
                ids[str(mid)] = address
        return ids

    def _pull(self, ids: list[str]) -> list[tuple[str, Envelope]]:
        wanted = set(ids)
        out: list[tuple[str, Envelope]] = []
        for reply in self.grid.pull_messages(ids):
            mid = str(reply.metadata.reply_to_message_id)
            if mid in wanted:
                wanted.discard(mid)
                out.append((mid, _envelope(reply)))
        return out

    def _note(self, address: int, env: Envelope, stage: str) -> None:
        name = env.fields.get("site")
        if isinstance(name, str) and address not in self.names:
            self.names[address] = name
        self.arrivals.append(Arrival(round(self.now(), 6), address, self.names.get(address), stage))


def _envelope(reply: Message) -> Envelope:
    """A reply as an envelope; a Flower error or unreadable content as an error envelope."""
    if reply.has_error():
        return error_envelope(f"the party's ClientApp failed: {reply.error.reason}")
    try:
        return unpack(reply.content)
    except RemoteProtocolError as exc:
        return error_envelope(f"unreadable reply: {exc}")
