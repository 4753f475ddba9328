"""SecAgg / SecAgg+ over engine messages: the server half and the client half.

Server half (:func:`secure_sum`): one :class:`crypto.secagg.SecAggServer` round driven
stage by stage. The first stage's frames (``RoundStart``) travel inside the ``SETUP``
message of each member, later frames as ``PROTOCOL`` messages; a member that does not
answer a stage before its deadline is dropped by a :class:`crypto.secagg.Deadline`
event, exactly as :func:`crypto.secagg.simulate_round` does in memory. The server
attributes a frame to the address it came from (the transport authenticates
addresses); the protocol's Ed25519 signatures bind keys to the members' identities on
top of that. It learns only the sum mod 2^b of the survivors' vectors.

Client half (:class:`SecAggSession`): a :class:`crypto.secagg.SecAggClient` whose
state between messages is *replayable*: the store keeps the round's secret inputs (the
encoded noisy vector, a private 32-byte seed) and the server frames received so far;
a fresh process (a Flower SuperNode runs a new ClientApp per message) rebuilds the state
machine from them and feeds the frames again. The client is deterministic in (inputs,
seed, frames), so the replay reproduces exactly the state the previous process ended
in. A process that keeps the live object (the in-process transport) skips the replay.
The secrets are dropped once the round is over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from crypto.prg import Csprng
from crypto.secagg import (
    Deadline,
    DownlinkMessage,
    MaskedInput,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    Stage,
    UnmaskRequest,
    decode,
    encode,
)
from crypto.secagg import Message as ProtocolMessage
from crypto.secagg.graph import effective_degree
from crypto.secagg.parameters import secagg_parameters
from secure_fl.config import RunConfig
from secure_fl.engine.transport import PROTOCOL, SETUP, Command, Envelope, Exchange, FieldValue

__all__ = [
    "STAGES",
    "SecAggSession",
    "SecureSum",
    "graph_parameters",
    "round_config_fields",
    "round_config_from",
    "secure_sum",
]

STAGES: tuple[str, ...] = ("advertise", "share_keys", "masked_input", "unmask")
"""Stages at which a simulated member may go silent (``simulation.dropout`` draws)."""


def graph_parameters(config: RunConfig, n: int) -> tuple[int | None, int]:
    """(neighbors argument, threshold t) of a cohort of ``n`` for ``c = threat.max_colluders``
    (:func:`crypto.secagg.parameters.secagg_parameters`; raises
    :class:`~crypto.errors.LocalProtocolError` when no admissible t exists)."""
    k = config.secagg.neighbors
    t = config.secagg.threshold
    if t is not None:  # a cohort smaller than configured (async buffer): cap t at k + 1
        t = min(t, effective_degree(n, None if k is None or k >= n - 1 else k) + 1)
    params = secagg_parameters(n, max_colluders=config.threat.max_colluders, threshold=t, neighbors=k)
    return params.neighbors, params.threshold


def round_config_fields(config: RoundConfig) -> dict[str, FieldValue]:
    """The cohort set-up's :class:`RoundConfig` as public message fields."""
    return {
        "session_id": config.session_id,
        "round_number": config.round_number,
        "bits": config.bits,
        "length": config.length,
        "threshold": config.threshold,
        "identity_keys": list(config.identity_keys),
        "graph_seed": config.graph_seed,
        "neighbors": -1 if config.neighbors is None else config.neighbors,
        "max_colluders": config.max_colluders,
    }


def round_config_from(env: Envelope | Mapping[str, FieldValue]) -> RoundConfig:
    """The inverse of :func:`round_config_fields` (``RemoteProtocolError`` when invalid)."""
    env = env if isinstance(env, Envelope) else Envelope(fields=env)
    neighbors = env.get("neighbors", int)
    keys = env.get("identity_keys", list)
    if not all(isinstance(k, bytes) for k in keys):
        raise RemoteProtocolError("identity_keys must be a list of bytes")
    try:
        return RoundConfig(
            session_id=env.get("session_id", bytes),
            round_number=env.get("round_number", int),
            bits=env.get("bits", int),
            length=env.get("length", int),
            threshold=env.get("threshold", int),
            identity_keys=tuple(keys),
            graph_seed=env.get("graph_seed", bytes),
            neighbors=None if neighbors < 0 else neighbors,
            max_colluders=env.get("max_colluders", int),
        )
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"invalid cohort set-up: {exc}") from exc


# -- server half -------------------------------------------------------------------------------
@dataclass
class SecureSum:
    """What the server learned from one secure aggregation (indices are protocol indices)."""

    total: npt.NDArray[np.unsignedinteger] | None
    survivors: tuple[int, ...]
    excluded: dict[int, str]
    dropped: dict[str, list[int]]
    refused: dict[int, str]
    refusal_kind: dict[int, str]
    transcript: list[tuple[int, str, int, str]]
    upload_bytes: dict[int, int]
    download_bytes: dict[int, int]
    first_replies: dict[int, Envelope] = field(default_factory=dict)
    aborted: str | None = None
    refused_at: dict[int, str] = field(default_factory=dict)


def secure_sum(
    *,
    addresses: list[int],
    config: RoundConfig,
    first_message: Callable[[int, tuple[bytes, ...]], Envelope],
    first_timeout: float | None,
    stage_timeout: float | None,
    observe: Callable[[int, ProtocolMessage], None] | None = None,
) -> Generator[Command, Any, SecureSum]:
    """Run one :class:`SecAggServer` round with ``addresses[i]`` as protocol index ``i``.

    A member whose reply carries ``refused`` (budget cap, ``require_dp``, a cohort its
    rules do not allow, a failure) is recorded with its reason, kind and stage and
    answers nothing more.
    """
    index_of = {a: i for i, a in enumerate(addresses)}
    server = SecAggServer(config)
    up = dict.fromkeys(range(len(addresses)), 0)
    down = dict.fromkeys(range(len(addresses)), 0)
    transcript: list[tuple[int, str, int, str]] = []
    refused: dict[int, str] = {}
    kinds: dict[int, str] = {}
    refused_at: dict[int, str] = {}
    silent: dict[str, list[int]] = {}
    first_replies: dict[int, Envelope] = {}

    def to_server(i: int, frame: bytes) -> list[DownlinkMessage]:
        up[i] += len(frame)
        try:
            msg = decode(frame, sender=i)
            label = msg.stage.value
        except RemoteProtocolError as exc:
            transcript.append((i, "malformed", len(frame), hashlib.sha256(frame).hexdigest()))
            server.exclude(i, f"malformed frame: {exc}")
            return []
        transcript.append((i, label, len(frame), hashlib.sha256(frame).hexdigest()))
        if getattr(msg, "sender", i) != i:
            server.exclude(i, "frame claims another sender (impersonation)")
            return []
        if observe is not None:
            observe(i, msg)
        try:
            return server.receive(msg)
        except RemoteProtocolError:
            return []  # refused; the server has excluded the sender

    def result(total: Any, survivors: tuple[int, ...], aborted: str | None) -> SecureSum:
        return SecureSum(
            total, survivors, dict(server.excluded), silent, refused, kinds, transcript, up, down,
            first_replies, aborted=aborted, refused_at=refused_at,
        )

    first = True
    try:
        outbox = server.start()
        while server.stage not in (Stage.DONE, Stage.ABORTED):
            stage = server.stage
            frames: dict[int, list[bytes]] = {}
            for out in outbox:
                frames.setdefault(out.recipient, []).append(encode(out))
            messages: dict[int, tuple[str, Envelope]] = {}
            for i, fs in sorted(frames.items()):
                if i in refused:
                    continue
                down[i] += sum(len(f) for f in fs)
                env = first_message(i, tuple(fs)) if first else Envelope(frames=tuple(fs))
                messages[addresses[i]] = (SETUP if first else PROTOCOL, env)
            replies: dict[int, Envelope] = yield Exchange(
                messages, stage=stage.value, timeout=first_timeout if first else stage_timeout
            )
            outbox = []
            where = "set-up" if first else stage.value
            for address, env in sorted(replies.items()):
                if address not in index_of or address not in messages:
                    continue
                i = index_of[address]
                if first:
                    first_replies[i] = env
                if "refused" in env.fields:
                    refused.setdefault(i, str(env.fields["refused"]))
                    kinds.setdefault(i, str(env.fields.get("refusal", "error")))
                    refused_at.setdefault(i, where)
                for frame in env.frames:
                    outbox.extend(to_server(i, frame))
            for address in messages:
                if address not in replies:
                    silent.setdefault(stage.value, []).append(index_of[address])
            first = False
            if server.stage is stage:
                outbox.extend(
                    server.receive(
                        Deadline(session_id=config.session_id, round_number=config.round_number, waiting_for=stage)
                    )
                )
    except ProtocolError as exc:
        return result(None, (), f"{type(exc).__name__}: {exc}")
    if server.stage is not Stage.DONE:
        return result(None, (), "round aborted")
    return result(server.total, tuple(server.survivors), None)


# -- client half -------------------------------------------------------------------------------
SESSION_KEY = "secagg"


class SecAggSession:
    """The client half: start on an encoded vector, then step on each server frame batch.

    ``store`` is the site's :class:`~secure_fl.engine.client.StateStore`; ``live`` an
    optional per-process cache of the running state machine (skips the replay).
    """

    def __init__(
        self,
        store: Any,
        identity_key: Ed25519PrivateKey,
        *,
        floors: tuple[int, int, int],
        max_colluders: int,
        live: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.identity_key = identity_key
        self.floors = floors
        self.max_colluders = max_colluders
        self.live = live if live is not None else {}

    def start(
        self,
        config: RoundConfig,
        *,
        index: int,
        vector: npt.NDArray[Any],
        seed: bytes,
        first_frames: tuple[bytes, ...],
        extra: Mapping[str, FieldValue] | None = None,
    ) -> tuple[list[bytes], list[ProtocolMessage]]:
        """Keep the replay state, feed the first frames; return (reply frames, replies)."""
        values: dict[str, FieldValue] = {
            **round_config_fields(config),
            "index": index,
            "seed": seed,
            "vector": np.ascontiguousarray(vector).tobytes(),
            "dtype": str(np.asarray(vector).dtype),
            "downlinks": [],
            **(extra or {}),
        }
        self.store.put(SESSION_KEY, values)
        self.live.pop(SESSION_KEY, None)
        return self.step(first_frames)

    def values(self) -> dict[str, FieldValue] | None:
        values: dict[str, FieldValue] | None = self.store.get(SESSION_KEY)
        return values

    def _client(self, values: Mapping[str, FieldValue]) -> SecAggClient:
        env = Envelope(fields=values)
        config = round_config_from(env)
        min_n, min_t, min_k = self.floors
        client = SecAggClient(
            config,
            index=env.get("index", int),
            identity_key=self.identity_key,
            vector=np.frombuffer(env.get("vector", bytes), dtype=np.dtype(env.get("dtype", str))),
            rng=Csprng(env.get("seed", bytes)),
            min_cohort_size=min_n,
            min_threshold=min_t,
            min_neighbors=min_k,
            max_colluders=self.max_colluders,
        )
        for frame in values.get("downlinks") or []:  # type: ignore[union-attr]
            if isinstance(frame, bytes):
                client.receive(decode(frame))
        return client

    def step(self, frames: tuple[bytes, ...]) -> tuple[list[bytes], list[ProtocolMessage]]:
        values = self.store.get(SESSION_KEY)
        if values is None:
            raise LocalProtocolError("no secure aggregation round in progress at this site")
        history = [f for f in values.get("downlinks") or [] if isinstance(f, bytes)]
        cached = self.live.get(SESSION_KEY)
        if cached is not None and cached[1] == len(history) and cached[2] == values.get("session_id"):
            client = cached[0]
        else:
            client = self._client(values)
        replies: list[ProtocolMessage] = []
        for frame in frames:
            replies.extend(client.receive(decode(frame)))
        history.extend(frames)
        over = client.stage in (Stage.DONE, Stage.ABORTED) or any(
            isinstance(decode(f), UnmaskRequest) for f in frames
        )
        if over:
            self.store.drop(SESSION_KEY)  # the round is over: forget its secrets
            self.live.pop(SESSION_KEY, None)
        else:
            self.store.put(SESSION_KEY, {**values, "downlinks": history})
            self.live[SESSION_KEY] = (client, len(history), values.get("session_id"))
        return [encode(r) for r in replies], replies


def is_masked_input(message: ProtocolMessage) -> bool:
    return isinstance(message, MaskedInput)


def client_encode(
    u: npt.NDArray[np.float64],
    *,
    weight: float,
    mech: Any,
    n: int,
    clip: float,
    bits: int,
    round_seed: bytes,
    rng: Csprng,
) -> npt.NDArray[Any]:
    """The client's vector in Z_2^b.

    Without DP: fixed point ``[u, w]`` at the largest scale whose sum of ``n`` cannot
    wrap (:func:`crypto.fixedpoint.max_scale`, ``max_abs = max(C, 1)``), the secret weight
    secure-summed as the last coordinate. With ``discrete_gaussian`` / ``skellam``: the
    distributed mechanism (rotation with the public round seed, scaling, conditional
    randomized rounding, integer noise share, mod 2^b; :mod:`privacy.mechanisms.distributed`).
    """
    from crypto.fixedpoint import encode as fixed_encode
    from crypto.fixedpoint import max_scale

    if mech is None:
        scale = max_scale(num_summands=n, max_abs=max(clip, 1.0), bits=bits)
        return fixed_encode(np.concatenate([u, [weight]]), scale=scale, bits=bits, rng=rng)
    out: npt.NDArray[Any] = mech.client_encode(u, round_seed=round_seed, rng=rng)
    return out


def server_decode(
    total: npt.NDArray[np.unsignedinteger], *, mech: Any, n: int, clip: float, bits: int, round_seed: bytes
) -> npt.NDArray[np.float64]:
    """The inverse of :func:`client_encode` on the sum (no DP: ``[sum w u, sum w]``)."""
    from crypto.fixedpoint import decode as fixed_decode
    from crypto.fixedpoint import max_scale

    if mech is None:
        scale = max_scale(num_summands=n, max_abs=max(clip, 1.0), bits=bits)
        return np.asarray(fixed_decode(total, scale=scale, bits=bits), dtype=np.float64)
    return np.asarray(mech.server_decode(total, round_seed=round_seed), dtype=np.float64)
