"""A scripted malicious server with colluding clients, driving honest SecAggClients
through the real wire format, and what their union of released shares reveals
(test helper for the issue-13 attack tests and the hypothesis property)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from secagg_harness import Harness

from crypto.errors import ProtocolError
from crypto.secagg import (
    ConsistencyRequest,
    ConsistencySignature,
    DownlinkMessage,
    MaskedInput,
    MaskRequest,
    Message,
    SecAggClient,
    ShareReceipt,
    Stage,
    UnmaskRequest,
    UnmaskShares,
    UplinkMessage,
    decode,
    encode,
)
from crypto.secagg.client import CONSISTENCY_CONTEXT
from crypto.secagg.messages import consistency_payload
from crypto.signatures import sign


def wire(msg: Message) -> Message:
    """Through the real byte encoding."""
    return decode(encode(msg))


@dataclass
class Knowledge:
    """Shares the adversary (server + colluders) holds, and what they reconstruct."""

    threshold: int
    colluders: frozenset[int]
    b: dict[int, set[int]] = field(default_factory=dict)  # owner -> holders whose b-share is known
    s: dict[int, set[int]] = field(default_factory=dict)  # owner -> holders whose s_sk-share is known

    def add_release(self, msg: UnmaskShares) -> None:
        for owner, _ in msg.self_mask_shares:
            self.b.setdefault(owner, set()).add(msg.sender)
        for owner, _ in msg.key_shares:
            self.s.setdefault(owner, set()).add(msg.sender)

    def add_colluder_state(self, clients: list[SecAggClient]) -> None:
        for c in self.colluders:
            cl = clients[c]
            owners = set(cl._held) | ({c} if cl._b_seed else set())
            for owner in owners:
                self.b.setdefault(owner, set()).add(c)
                self.s.setdefault(owner, set()).add(c)

    def knows_b(self, u: int) -> bool:
        return u in self.colluders or len(self.b.get(u, ())) >= self.threshold

    def knows_s(self, u: int) -> bool:
        return u in self.colluders or len(self.s.get(u, ())) >= self.threshold

    def exposed(self, clients: list[SecAggClient], masked: Iterable[int]) -> set[int]:
        """Honest clients whose masked input the server holds and can unmask alone:
        it knows b_u and, for every partner v in M_u, s_sk_u or s_sk_v."""
        out = set()
        for u in masked:
            if u in self.colluders:
                continue
            if self.knows_b(u) and all(self.knows_s(u) or self.knows_s(v) for v in clients[u]._mask_set):
                out.add(u)
        return out


def deliver(
    clients: list[SecAggClient], msg: DownlinkMessage, errors: dict[int, str]
) -> list[UplinkMessage]:
    """One downlink to an honest client; a refusal is recorded and the client goes silent."""
    i = msg.recipient
    if i in errors:
        return []
    try:
        return clients[i].receive(wire(msg))  # type: ignore[arg-type]
    except ProtocolError as exc:
        errors[i] = f"{type(exc).__name__}: {exc}"
        return []


@dataclass
class SplitViewServer:
    """Honest server up to the share check, then a scripted one.

    ``include[i]`` (optional) rewrites the included set sent to client ``i``;
    ``view[i]`` is the survivor set shown to client ``i`` (default: those who sent a
    masked input). Colluders sign every view; every signature over a view and every
    signed mask set is forwarded to each client shown that view.
    """

    h: Harness
    colluders: frozenset[int]
    include: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    view: Callable[[int, set[int]], tuple[int, ...]] | None = None
    errors: dict[int, str] = field(default_factory=dict)
    complaints: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    def run(self) -> tuple[Knowledge, set[int]]:
        """``complaints[c]`` (colluders only) replaces colluder c's share-check receipt:
        false accusations, which the (honest up to here) server processes."""
        h = self.h
        cfg = h.config

        def accuse(msg: UplinkMessage) -> UplinkMessage:
            if isinstance(msg, ShareReceipt) and msg.sender in self.complaints:
                assert msg.sender in self.colluders, "only colluders lie"
                return dataclasses.replace(msg, complaints=self.complaints[msg.sender])
            return msg

        h.run_until(Stage.MASKED_INPUT, up=accuse)
        masked: dict[int, MaskedInput] = {}
        for msg in h.outbox:
            assert isinstance(msg, MaskRequest)
            if msg.recipient in self.include:
                msg = dataclasses.replace(msg, included=self.include[msg.recipient])
            for r in deliver(h.clients, msg, self.errors):
                assert isinstance(r, MaskedInput)
                masked[r.sender] = r
        alive = set(masked)
        views = {i: (self.view(i, alive) if self.view else tuple(sorted(alive))) for i in alive}
        sigs: dict[tuple[int, ...], dict[int, tuple[tuple[int, ...], bytes]]] = {}
        for i in sorted(alive):
            req = ConsistencyRequest(session_id=cfg.session_id, round_number=cfg.round_number, recipient=i,
                                     survivors=views[i])
            for r in deliver(h.clients, req, self.errors):
                assert isinstance(r, ConsistencySignature)
                sigs.setdefault(views[i], {})[i] = (masked[i].mask_set, r.signature)
        for view in set(views.values()):  # colluders sign anything
            for c in self.colluders:
                seed = h.clients[c]._joint_seed
                members = masked[c].mask_set if c in masked else ()
                payload = consistency_payload(cfg.session_id, cfg.round_number, seed, view, members)
                sigs.setdefault(view, {})[c] = (members, sign(h.identities[c], payload, context=CONSISTENCY_CONTEXT))
        know = Knowledge(cfg.threshold, self.colluders)
        for i in sorted(alive):
            view = views[i]
            over = sigs.get(view, {})
            fallback = tuple(
                (o, masked[o].mask_set, masked[o].mask_signature)
                for o in sorted(set(view) & set(masked))
                if o != i and o not in over
            )
            req = UnmaskRequest(session_id=cfg.session_id, round_number=cfg.round_number, recipient=i,
                                survivors=view, signatures=tuple((w, *over[w]) for w in sorted(over)),
                                mask_sets=fallback)
            for r in deliver(h.clients, req, self.errors):
                assert isinstance(r, UnmaskShares)
                know.add_release(r)
        know.add_colluder_state(h.clients)
        return know, set(masked)


def drive(
    h: Harness,
    colluders: frozenset[int] = frozenset(),
    up: Callable[[UplinkMessage], UplinkMessage] | None = None,
) -> tuple[Knowledge, set[int], dict[int, str]]:
    """Run the honest server to the end with ``up`` rewriting uploads (malicious clients).

    Returns what the server + colluders learn, who sent a masked input, and the
    honest clients' refusals. The server's own errors (RoundAbortedError) propagate.
    """
    errors: dict[int, str] = {}
    know = Knowledge(h.config.threshold, colluders)
    masked: set[int] = set()
    while h.server.stage not in (Stage.DONE, Stage.ABORTED):
        stage = h.server.stage
        replies: list[UplinkMessage] = []
        for msg in h.outbox:
            replies.extend(deliver(h.clients, msg, errors))
        h.outbox = []
        for r in replies:
            if up is not None:
                r = up(r)
            if isinstance(r, UnmaskShares):
                know.add_release(r)
            if isinstance(r, MaskedInput):
                masked.add(r.sender)
            try:
                h.outbox.extend(h.server.receive(wire(r)))
            except ProtocolError:
                pass  # refused and excluded by the server
        if h.server.stage is stage:
            h.outbox.extend(h.server.receive(h.deadline(stage)))
    know.add_colluder_state(h.clients)
    return know, masked, errors
