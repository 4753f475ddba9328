"""In-memory run of one real SecAgg / SecAgg+ round (clients + server, real bytes).

:func:`simulate_round` builds the cohort set-up (Ed25519 identities, session id,
graph seed), one :class:`~crypto.secagg.client.SecAggClient` per input and one
:class:`~crypto.secagg.server.SecAggServer`, and moves every message through
:func:`crypto.secagg.wire.encode` / :func:`~crypto.secagg.wire.decode`, so the byte
counts are those of the real encoding. The transport is authenticated (as TLS to
the server would be): the server learns which cohort member a frame came from.

Dropouts: ``drop[i] = "masked_input"`` makes client ``i`` go silent from that stage
on (it sends nothing belonging to it or a later stage; see
:class:`~crypto.secagg.stages.Stage` for the order). After each stage the transport
hands the server a :class:`~crypto.secagg.messages.Deadline` if it is still waiting.

A round completes iff at every stage every live client keeps at least ``t`` live
members of its holder set ``N(u) ∪ {u}`` (complete graph: ``t`` live clients), and
at unmasking ``t`` holders of each survivor (and of each dropped client with a
surviving neighbour) answer; otherwise :class:`~crypto.errors.RoundAbortedError`.

``interceptor`` (tests only) sees every frame on the wire and may rewrite it, to
model malicious clients (uploads) or a malicious server (downloads).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from crypto.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from crypto.key_agreement import hkdf_sha256
from crypto.parallel import background
from crypto.prg import Csprng, fresh_seed
from crypto.secagg.client import SecAggClient
from crypto.secagg.messages import Deadline, DownlinkMessage, MaskedInput, Message, RoundConfig
from crypto.secagg.server import SecAggServer
from crypto.secagg.stages import PROTOCOL_STAGES, Stage
from crypto.secagg.wire import decode, encode
from crypto.signatures import generate_identity, identity_public_bytes

__all__ = ["DROP_STAGES", "Interceptor", "RoundResult", "TranscriptRecord", "simulate_round"]

DROP_STAGES: dict[str, Stage] = {s.value: s for s in PROTOCOL_STAGES}
"""Accepted values of ``drop``: "advertise", "share_keys", "check_shares",
"masked_input", "consistency", "unmask"."""


@dataclass(frozen=True)
class TranscriptRecord:
    """One frame the server received: no plaintext, only its digest."""

    sender: int
    stage: str
    size: int
    sha256: str


@dataclass(frozen=True)
class RoundResult:
    """Outcome of :func:`simulate_round`."""

    total: npt.NDArray[np.unsignedinteger]
    survivors: list[int]
    upload_bytes: dict[int, int]
    download_bytes: dict[int, int]
    dropped: dict[str, list[int]]
    excluded: dict[int, str]
    transcript: list[TranscriptRecord]
    client_errors: dict[int, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    graph: tuple[frozenset[int], ...] = ()
    mask_sets: dict[int, frozenset[int]] = field(default_factory=dict)


class Interceptor:
    """Wire hook for adversarial tests; the default forwards everything unchanged."""

    def upload(self, sender: int, frame: bytes) -> list[tuple[int, bytes]]:
        """Frames to deliver to the server as ``(authenticated channel, bytes)``."""
        return [(sender, frame)]

    def download(self, recipient: int, message: DownlinkMessage) -> DownlinkMessage | None:
        """The message actually delivered to ``recipient`` (``None``: withhold it)."""
        return message


def _root_seed(seed: int | bytes | None) -> bytes:
    if seed is None:
        return fresh_seed()
    if isinstance(seed, bool) or not isinstance(seed, int | bytes):
        raise LocalProtocolError(f"seed must be an int, bytes or None, got {type(seed).__name__}")
    raw = seed if isinstance(seed, bytes) else seed.to_bytes((seed.bit_length() + 8) // 8, "big", signed=True)
    return hkdf_sha256(raw, info=b"secure-fl/secagg/v1/simulate-root")


def _derive(root: bytes, label: str, index: int = 0) -> bytes:
    return hkdf_sha256(root, info=b"secure-fl/secagg/v1/simulate/" + label.encode() + index.to_bytes(4, "big"))


def _validate_inputs(inputs: Sequence[npt.ArrayLike], bits: int) -> list[npt.NDArray[Any]]:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 62:
        raise LocalProtocolError(f"bits must be an integer in [1, 62], got {bits!r}")
    vecs = [np.asarray(x) for x in inputs]
    if len(vecs) < 2:
        raise LocalProtocolError("secure aggregation needs at least 2 inputs")
    d = vecs[0].size
    for i, v in enumerate(vecs):
        if v.ndim != 1 or v.size != d or d == 0:
            raise LocalProtocolError(f"input {i} must be a non-empty 1-D vector of length {d}")
        if v.dtype.kind not in "ui":
            raise LocalProtocolError(f"input {i} must hold integers in [0, 2**{bits})")
        if v.dtype.kind == "u" and v.dtype.itemsize * 8 <= bits:
            continue  # the dtype already bounds the values
        if int(v.min()) < 0 or int(v.max()) >> bits:
            raise LocalProtocolError(f"input {i} must hold integers in [0, 2**{bits})")
    return vecs


_BACKGROUND_DIGEST = 1 << 16
"""Frames above this size (masked uploads) are digested on a pool thread."""


def _hexdigest(frame: bytes) -> str:
    return hashlib.sha256(frame).hexdigest()


def simulate_round(
    inputs: Sequence[npt.ArrayLike],
    *,
    bits: int,
    threshold: int,
    neighbors: int | None = None,
    drop: Mapping[int, str] | None = None,
    seed: int | bytes | None = None,
    interceptor: Interceptor | None = None,
    observer: Callable[[int, npt.NDArray[np.unsignedinteger]], None] | None = None,
    max_colluders: int = 0,
) -> RoundResult:
    """Run one secure-aggregation round in memory and return the unmasked sum.

    ``inputs``: one integer vector per client, values in ``[0, 2**bits)``.
    ``threshold``: Shamir ``t``; with ``max_colluders = c`` (default 0) it must satisfy
    ``2t > k + 1 + c`` and ``k + 1 >= t + c`` (:mod:`crypto.secagg.parameters`).
    ``neighbors``: ``None`` (complete graph, SecAgg) or ``k`` (SecAgg+ graph).
    ``drop``: client index -> stage name at which it goes silent.
    ``observer``: called with (sender, masked vector) for every masked input the server
    accepts for decoding -- the server's own view, used by audits to test uniformity.
    ``seed``: makes the round deterministic (all keys, seeds, nonces); ``None`` uses
    fresh OS entropy.

    Returns ``.total`` (sum mod 2^bits over ``.survivors``, the clients whose masked
    input reached the server), per-client ``.upload_bytes``/``.download_bytes``,
    ``.dropped`` (stage -> indices), ``.excluded`` (index -> reason),
    ``.transcript`` (sender, stage, size, SHA-256 of every frame the server got),
    ``.client_errors`` (clients that refused and went silent), ``.timings`` (wall
    seconds per role and client stage, and the same as this process's CPU seconds under
    ``*_cpu_s`` keys: on a shared machine the CPU figure excludes time spent waiting for
    a core), and
    ``.graph`` / ``.mask_sets`` (the round's SecAgg+ graph, drawn from the joint seed,
    and every included client's mask partners).
    Raises a :class:`~crypto.errors.ProtocolError` subclass if the round cannot complete.
    """
    vecs = _validate_inputs(inputs, bits)
    n, d = len(vecs), vecs[0].size
    drops: dict[int, Stage] = {}
    for idx, name in (drop or {}).items():
        if not (isinstance(idx, int) and 0 <= idx < n) or name not in DROP_STAGES:
            raise LocalProtocolError(f"drop entry {idx!r}: {name!r} is not a client index and stage name")
        drops[idx] = DROP_STAGES[name]
    wire = interceptor or Interceptor()

    root = _root_seed(seed)
    identities = [generate_identity(Csprng(_derive(root, "identity", i))) for i in range(n)]
    config = RoundConfig(
        session_id=_derive(root, "session"),
        round_number=0,
        bits=bits,
        length=d,
        threshold=threshold,
        identity_keys=tuple(identity_public_bytes(k) for k in identities),
        graph_seed=_derive(root, "graph"),
        neighbors=neighbors,
        max_colluders=max_colluders,
    )
    # the caller chose the parameters for every client here: no floors beyond RoundConfig's
    clients = [
        SecAggClient(
            config,
            index=i,
            identity_key=identities[i],
            vector=vecs[i],
            rng=Csprng(_derive(root, "client", i)),
            min_cohort_size=2,
            min_threshold=1,
            min_neighbors=1,
        )
        for i in range(n)
    ]
    server = SecAggServer(config)
    upload = dict.fromkeys(range(n), 0)
    download = dict.fromkeys(range(n), 0)
    transcript: list[TranscriptRecord] = []
    silent: set[int] = set()
    client_errors: dict[int, str] = {}
    timings = {"server_s": 0.0, "clients_s": 0.0, "wire_s": 0.0, "server_cpu_s": 0.0, "clients_cpu_s": 0.0}
    stage_time = {f"client_{s.value}_s": 0.0 for s in PROTOCOL_STAGES}
    stage_time |= {f"client_{s.value}_cpu_s": 0.0 for s in PROTOCOL_STAGES}

    def online(i: int, stage: Stage) -> bool:
        return i not in silent and (i not in drops or stage.order < drops[i].order)

    def to_server(channel: int, frame: bytes) -> list[DownlinkMessage]:
        """The server side of the transport: count, digest, decode, authenticate, deliver."""
        t0 = time.perf_counter()
        if 0 <= channel < n:
            upload[channel] += len(frame)
        size = len(frame)
        # the digest of a large frame (a masked upload) is computed on another core
        # while the server decodes and folds it in; the record is written in order
        if size > _BACKGROUND_DIGEST:
            digest = background(_hexdigest, frame)
        else:
            small = _hexdigest(frame)
            digest = lambda: small  # noqa: E731
        msg_in: Message | None
        try:
            msg_in = decode(frame, sender=channel)
            label = msg_in.stage.value
        except RemoteProtocolError as exc:
            msg_in, label = None, "malformed"
            server.exclude(channel, f"malformed frame: {exc}")
        del frame
        t1, c1 = time.perf_counter(), time.process_time()
        timings["wire_s"] += t1 - t0
        try:
            if msg_in is None:
                return []
            if getattr(msg_in, "sender", channel) != channel:
                server.exclude(channel, "frame claims another sender (impersonation)")
                return []
            if observer is not None and isinstance(msg_in, MaskedInput):
                observer(channel, msg_in.vector)  # exactly what the server sees: masked data
            try:
                return server.receive(msg_in)
            except RemoteProtocolError:
                return []  # refused; the server has excluded the sender
            finally:
                timings["server_s"] += time.perf_counter() - t1
                timings["server_cpu_s"] += time.process_time() - c1
        finally:
            t2 = time.perf_counter()
            transcript.append(TranscriptRecord(channel, label, size, digest()))
            timings["wire_s"] += time.perf_counter() - t2

    # Each client's replies reach the server as soon as they are sent (so at most one
    # masked vector is in flight: memory stays O(d) as it would on a real server).
    outbox = server.start()
    while server.stage not in (Stage.DONE, Stage.ABORTED):
        stage = server.stage
        next_outbox: list[DownlinkMessage] = []
        for msg in outbox:
            i = msg.recipient
            if not online(i, msg.stage):
                continue
            delivered = wire.download(i, msg)
            if delivered is None:
                continue
            t0 = time.perf_counter()
            frame = encode(delivered)
            download[i] += len(frame)
            received = decode(frame)
            t1, c1 = time.perf_counter(), time.process_time()
            try:
                replies = clients[i].receive(received)
            except ProtocolError as exc:  # an honest client refuses and goes silent
                client_errors[i] = f"{type(exc).__name__}: {exc}"
                silent.add(i)
                replies = []
            t2, c2 = time.perf_counter(), time.process_time()
            timings["clients_s"] += t2 - t1
            timings["clients_cpu_s"] += c2 - c1
            stage_time[f"client_{msg.stage.value}_s"] += t2 - t1
            stage_time[f"client_{msg.stage.value}_cpu_s"] += c2 - c1
            timings["wire_s"] += t1 - t0
            for reply in replies:
                t3 = time.perf_counter()
                frames = wire.upload(i, encode(reply))
                timings["wire_s"] += time.perf_counter() - t3
                del reply
                for channel, data in frames:
                    next_outbox.extend(to_server(channel, data))
            del replies
        outbox = next_outbox
        if server.stage is stage:
            t0, c0 = time.perf_counter(), time.process_time()
            outbox.extend(
                server.receive(
                    Deadline(session_id=config.session_id, round_number=config.round_number, waiting_for=stage)
                )
            )
            timings["server_s"] += time.perf_counter() - t0
            timings["server_cpu_s"] += time.process_time() - c0

    dropped: dict[str, list[int]] = {}
    for i, s in sorted(drops.items()):
        dropped.setdefault(s.value, []).append(i)
    return RoundResult(
        total=server.total,
        survivors=list(server.survivors),
        upload_bytes=upload,
        download_bytes=download,
        dropped=dropped,
        excluded={i: r for i, r in server.excluded.items()},
        transcript=transcript,
        client_errors=client_errors,
        timings={**timings, **stage_time},
        graph=server.graph,
        mask_sets=server.mask_sets,
    )
