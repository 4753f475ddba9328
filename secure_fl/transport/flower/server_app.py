"""The Flower ServerApp: cohort set-up, SecAgg/SecAgg+ over Flower messages, ledger.

Each aggregation (server model version ``v``) of a deployment:

1. **cohort**: the sites that answered ``hello`` with a proof of possession of their
   identity key over a fresh challenge and data that fit the run
   (:mod:`secure_fl.hello`), and are still connected; ``n >= 2``. Each site checks the
   set-up against its own roster (:mod:`secure_fl.roster`).
2. **set-up** (``train.secure_fl_setup``): a fresh :class:`~crypto.secagg.RoundConfig`
   (random session id and graph seed, the sites' identity keys, threshold ``t``), the
   public DP parameters and round seed, the global model and each site's ``RoundStart``
   frame. Sites train, clip, add their discrete-Gaussian share and reply
   ``AdvertiseKeys``.
3. **SecAgg stages** (``query.secure_fl_secagg``): the frames of
   :class:`~crypto.secagg.SecAggServer` go out, the sites' reply frames come back, stage
   by stage; a site that does not answer within ``stage-timeout`` is dropped by a
   :class:`~crypto.secagg.Deadline`, exactly as in :func:`crypto.secagg.simulate_round`.
4. **unmasking**: the server learns only the sum mod 2^b of the survivors' vectors,
   decodes it, divides by the public sum of weights, applies the server optimizer.
5. **records**: a signed, hash-chained ledger entry (cohort, survivors, DP event,
   digests) that every survivor countersigns (``query.secure_fl_witness``,
   :mod:`secure_fl.witness`), the transcript (SHA-256 and size of every frame received, top-bit
   histograms of the masked uploads; never a vector), one ``metrics.jsonl`` line.

Run configuration (``[tool.flwr.app.config]`` or ``flwr run --run-config``):
``config`` (secure-fl TOML; relative paths resolve against the working directory of
the SuperLink), ``overrides`` (space-separated ``key=value``), ``out-dir``,
``min-nodes``, ``num-classes`` (the model's output size: nodes reporting more are
excluded at hello), ``connect-timeout``, ``train-timeout``, ``stage-timeout``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from audits.events_codec import encode_event
from audits.ledger import (
    LEDGER_FILENAME,
    PUBLIC_KEY_FILENAME,
    LedgerEntry,
    LedgerWriter,
    canonical_json,
    generate_server_key,
    save_public_key,
    verify_countersignature,
)
from audits.transcript import TranscriptWriter
from crypto.fixedpoint import decode as fixed_decode
from crypto.fixedpoint import max_scale
from crypto.prg import fresh_seed
from crypto.secagg import (
    Deadline,
    DownlinkMessage,
    MaskedInput,
    RoundConfig,
    SecAggServer,
    Stage,
    decode,
    default_neighbors,
    encode,
)
from crypto.secagg import (
    Message as ProtocolMessage,
)
from crypto.secagg.graph import effective_degree
from privacy.budget import ClientBudgets
from privacy.events import DPEvent, NonPrivateEvent
from secure_fl import __version__
from secure_fl.config import RunConfig, config_hash, load_config, to_toml
from secure_fl.errors import ConfigError, ProtocolError, RemoteProtocolError, SecureFLError
from secure_fl.hello import HelloReply, new_challenge, screen_hellos
from secure_fl.protocols import honest_shares
from secure_fl.transport.flower.client_app import (
    HELLO,
    SECAGG,
    SETUP,
    WITNESS,
    mechanism_for,
    round_config_fields,
)
from secure_fl.transport.flower.codec import Envelope, FieldValue, pack, unpack

__all__ = [
    "DeploymentSettings",
    "SecureSumResult",
    "app",
    "exchange",
    "make_server_app",
    "run_deployment",
    "secure_sum",
]


@dataclass(frozen=True)
class DeploymentSettings:
    """The ServerApp's settings (from Flower's run configuration)."""

    config_path: str | None = None
    base_dir: Path | None = None
    overrides: tuple[str, ...] = ()
    out_dir: Path | None = None
    min_nodes: int = 2
    connect_timeout: float = 120.0
    train_timeout: float = 300.0
    stage_timeout: float = 60.0
    poll_interval: float = 0.25
    num_classes: int = 2

    @classmethod
    def from_run_config(cls, rc: Mapping[str, Any], *, base_dir: Path | None = None) -> DeploymentSettings:
        """Read Flower's run configuration; a relative ``config`` path is taken
        against ``base_dir`` (the Flower app's directory) when given."""
        def num(key: str, default: float) -> float:
            value = rc.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"must be a positive number, got {value!r}", field=key)
            return float(value)

        cfg = rc.get("config", "")
        out = rc.get("out-dir", "")
        overrides = rc.get("overrides", "")
        if not all(isinstance(v, str) for v in (cfg, out, overrides)):
            raise ConfigError("config, out-dir and overrides must be strings", field="config")
        return cls(
            config_path=str(cfg) or None,
            base_dir=base_dir,
            overrides=tuple(shlex.split(str(overrides))),
            out_dir=Path(str(out)).expanduser() if out else None,
            min_nodes=max(2, int(num("min-nodes", 2))),
            connect_timeout=num("connect-timeout", 120.0),
            train_timeout=num("train-timeout", 300.0),
            stage_timeout=num("stage-timeout", 60.0),
            num_classes=_num_classes(rc.get("num-classes", 2)),
        )


def _num_classes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 100_000:
        raise ConfigError(f"must be an integer in [2, 100000], got {value!r}", field="num-classes")
    return value


# -- moving messages ---------------------------------------------------------------------------
def exchange(
    grid: Grid, messages: Sequence[Message], *, timeout: float, poll_interval: float = 0.25
) -> dict[int, Message]:
    """Push ``messages``; collect replies until all arrived or ``timeout`` (s) passed.

    Returns destination node id -> reply (an error reply if the node's ClientApp failed
    or the SuperLink declared the node gone). Missing nodes simply have no entry.
    Like ``Grid.send_and_receive`` but polling every ``poll_interval`` s, not 3 s.
    """
    dst = {}
    ids = []
    for mid, msg in zip(grid.push_messages(messages), messages, strict=True):
        if mid:
            ids.append(mid)
            dst[mid] = msg.metadata.dst_node_id
    waiting = set(ids)
    replies: dict[int, Message] = {}
    deadline = time.monotonic() + timeout
    while waiting:
        for reply in grid.pull_messages(list(waiting)):
            rid = reply.metadata.reply_to_message_id
            if rid in waiting:
                waiting.discard(rid)
                replies[dst[rid]] = reply
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll_interval)
    return replies


def _reply_envelope(reply: Message) -> Envelope:
    if reply.has_error():
        err = reply.error
        raise RemoteProtocolError(f"the site's ClientApp failed: {err.reason}")
    return unpack(reply.content)


@dataclass
class SecureSumResult:
    """What the server learned from one secure aggregation over Flower."""

    total: npt.NDArray[np.unsignedinteger] | None
    survivors: tuple[int, ...]
    excluded: dict[int, str]
    dropped: dict[str, list[int]]
    refused: dict[int, str]
    transcript: list[tuple[int, str, int, str]]
    upload_bytes: dict[int, int]
    download_bytes: dict[int, int]
    first_replies: dict[int, Envelope] = field(default_factory=dict)
    aborted: str | None = None
    refused_at: dict[int, str] = field(default_factory=dict)
    budget_refused: frozenset[int] = frozenset()

    def left_out(self, n: int) -> dict[int, str]:
        """Why each of the ``n`` cohort members whose input is not in the sum was left out.

        In order of precedence: the site's own refusal or failure (budget cap,
        ``require_dp``, a cohort its roster does not allow, unreadable data, a ClientApp error: its reason as
        the site sent it), an exclusion by the server (malformed or forged frames), the
        first stage it did not answer in time, or the round's abort.
        """
        out: dict[int, str] = {}
        for i in range(n):
            if i in self.survivors:
                continue
            if i in self.refused:
                out[i] = f"refused at {self.refused_at.get(i, 'set-up')}: {self.refused[i]}"
            elif i in self.excluded:
                out[i] = f"excluded by the server: {self.excluded[i]}"
            else:
                stages = [stage for stage, idx in self.dropped.items() if i in idx]
                if stages:
                    out[i] = f"no answer to {stages[0]} in time"
                elif self.aborted:
                    out[i] = "answered in time; the round was aborted"
                else:
                    out[i] = "dropped by the protocol"
        return out


def secure_sum(
    grid: Grid,
    *,
    cohort: Sequence[int],
    config: RoundConfig,
    first_message: Callable[[int, list[bytes]], Envelope],
    first_timeout: float,
    stage_timeout: float,
    group_id: str,
    poll_interval: float = 0.25,
    on_stage: Callable[[Stage], None] | None = None,
    observe: Callable[[int, ProtocolMessage], None] | None = None,
    on_refusal: Callable[[int, str, str], None] | None = None,
) -> SecureSumResult:
    """Run one :class:`SecAggServer` round over Flower with the sites ``cohort``.

    ``cohort[i]`` is the Flower node id of protocol index ``i``. The first stage's
    frames (``RoundStart``) travel inside ``first_message(i, frames)`` as a
    ``train.secure_fl_setup`` message; later frames as ``query.secure_fl_secagg``. The
    transport is authenticated by Flower (TLS to the SuperLink, node ids), so the
    server attributes a frame to the node it came from; the protocol's Ed25519
    signatures bind keys to the sites' identities on top of that.

    A site that refuses (its reply carries ``refused``: budget cap, ``require_dp``,
    a cohort its roster does not allow) or whose ClientApp fails is recorded with its reason and the stage
    (``refused``, ``refused_at``; ``on_refusal(i, stage, reason)`` is called at once);
    :meth:`SecureSumResult.left_out` names the reason of every member not in the sum.
    """
    index_of = {node: i for i, node in enumerate(cohort)}
    server = SecAggServer(config)
    up = dict.fromkeys(range(len(cohort)), 0)
    down = dict.fromkeys(range(len(cohort)), 0)
    transcript: list[tuple[int, str, int, str]] = []
    refused: dict[int, str] = {}
    refused_at: dict[int, str] = {}
    budget_refused: set[int] = set()
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

    first = True
    try:
        outbox = server.start()
        while server.stage not in (Stage.DONE, Stage.ABORTED):
            stage = server.stage
            frames: dict[int, list[bytes]] = {}
            for out in outbox:
                frames.setdefault(out.recipient, []).append(encode(out))
            messages = []
            for i, fs in sorted(frames.items()):
                down[i] += sum(len(f) for f in fs)
                if first:
                    env = first_message(i, fs)
                    mtype, timeout = SETUP, first_timeout
                else:
                    env, mtype, timeout = Envelope(frames=tuple(fs)), SECAGG, stage_timeout
                content = pack(frames=env.frames, fields=env.fields, arrays=env.arrays)
                messages.append(
                    Message(content, cohort[i], mtype, group_id=f"{group_id}/{stage.value}", ttl=timeout + 60.0)
                )
            if on_stage is not None:
                on_stage(stage)
            timeout = first_timeout if first else stage_timeout
            replies = exchange(grid, messages, timeout=timeout, poll_interval=poll_interval)
            outbox = []
            where = "set-up" if first else stage.value
            for node, reply in replies.items():
                i = index_of[node]
                try:
                    env = _reply_envelope(reply)
                except RemoteProtocolError as exc:
                    refused.setdefault(i, str(exc))
                    refused_at.setdefault(i, where)
                    if on_refusal is not None:
                        on_refusal(i, where, str(exc))
                    continue
                if first:
                    first_replies[i] = env
                if "refused" in env.fields:
                    why = str(env.fields["refused"])
                    refused.setdefault(i, why)
                    refused_at.setdefault(i, where)
                    if env.fields.get("refusal") == "budget":
                        budget_refused.add(i)
                    if on_refusal is not None:
                        on_refusal(i, where, why)
                for frame in env.frames:
                    outbox.extend(to_server(i, frame))
            for i in frames:
                if cohort[i] not in replies:
                    silent.setdefault(stage.value, []).append(i)
            first = False
            if server.stage is stage:
                outbox.extend(
                    server.receive(
                        Deadline(session_id=config.session_id, round_number=config.round_number, waiting_for=stage)
                    )
                )
    except ProtocolError as exc:
        return SecureSumResult(
            None, (), dict(server.excluded), silent, refused, transcript, up, down, first_replies,
            aborted=f"{type(exc).__name__}: {exc}", refused_at=refused_at, budget_refused=frozenset(budget_refused),
        )
    if server.stage is not Stage.DONE:
        return SecureSumResult(
            None, (), dict(server.excluded), silent, refused, transcript, up, down, first_replies,
            aborted="round aborted", refused_at=refused_at, budget_refused=frozenset(budget_refused),
        )
    return SecureSumResult(
        server.total, tuple(server.survivors), dict(server.excluded), silent, refused, transcript,
        up, down, first_replies, refused_at=refused_at, budget_refused=frozenset(budget_refused),
    )


# -- the federated job ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Site:
    node: int
    name: str
    identity_key: bytes
    feature_shape: tuple[int, ...]
    num_classes: int


def _hello(grid: Grid, settings: DeploymentSettings, log: Callable[[str], None]) -> list[_Site]:
    start = time.monotonic()
    nodes: list[int] = []
    while time.monotonic() - start < settings.connect_timeout:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= settings.min_nodes:
            break
        time.sleep(1.0)
    if len(nodes) < settings.min_nodes:
        raise ProtocolError(
            f"only {len(nodes)} SuperNodes connected within {settings.connect_timeout:g} s; "
            f"min-nodes is {settings.min_nodes}"
        )
    challenge = new_challenge()
    msgs = [
        Message(pack(fields={"challenge": challenge}), n, HELLO, group_id="hello", ttl=settings.stage_timeout + 60)
        for n in nodes
    ]
    replies = exchange(grid, msgs, timeout=settings.stage_timeout, poll_interval=settings.poll_interval)
    answers: list[HelloReply] = []
    for node in nodes:
        reply = replies.get(node)
        if reply is None:
            log(f"node {node}: no answer to hello; left out")
            continue
        try:
            env = _reply_envelope(reply)
            if "refused" in env.fields:
                raise RemoteProtocolError(str(env.fields["refused"]))
            answers.append(
                HelloReply(
                    node,
                    env.get("site", str),
                    env.get("identity_key", bytes),
                    env.get("signature", bytes),
                    tuple(int(v) for v in env.get("feature_shape", list)),
                    env.get("num_classes", int),
                )
            )
        except (RemoteProtocolError, TypeError, ValueError) as exc:
            log(f"node {node}: {exc}; left out")
    screen = screen_hellos(answers, challenge=challenge, num_classes=settings.num_classes)
    for node, why in sorted(screen.excluded.items()):
        log(f"node {node}: excluded at hello: {why}")
    sites = [_Site(r.node, r.name, r.identity_key, r.feature_shape, settings.num_classes) for r in screen.accepted]
    if len(sites) < settings.min_nodes:
        raise ProtocolError(f"only {len(sites)} sites passed hello; min-nodes is {settings.min_nodes}")
    return sites


def _countersignatures(
    grid: Grid, entry: LedgerEntry, survivors: Sequence[_Site], settings: DeploymentSettings,
    log: Callable[[str], None],
) -> dict[str, bytes]:
    """Ask every survivor to countersign ``entry`` (:mod:`secure_fl.witness`); keep the
    signatures that verify under the identity key the site proved at hello."""
    if not survivors:
        return {}
    fields: dict[str, FieldValue] = {
        "index": entry.index, "prev_hash": entry.prev_hash, "body": canonical_json(entry.body).decode("utf-8"),
    }
    msgs = [
        Message(pack(fields=fields), s.node, WITNESS, group_id=f"witness/{entry.index}", ttl=settings.stage_timeout + 60)
        for s in survivors
    ]
    replies = exchange(grid, msgs, timeout=settings.stage_timeout, poll_interval=settings.poll_interval)
    out: dict[str, bytes] = {}
    for s in survivors:
        reply = replies.get(s.node)
        why = "no answer in time"
        if reply is not None:
            try:
                env = _reply_envelope(reply)
                sig = env.fields.get("countersignature")
                if isinstance(sig, bytes) and verify_countersignature(entry.entry_hash, sig, s.identity_key):
                    out[s.name] = sig
                    continue
                why = str(env.fields.get("refused") or "invalid countersignature")
            except RemoteProtocolError as exc:
                why = str(exc)
        log(f"secure-fl: ledger entry {entry.index}: {s.name} did not countersign: {why} (the entry stays unwitnessed)")
    return out


def _check_config(config: RunConfig) -> None:
    if config.protocol != "secagg":
        raise ConfigError("the Flower transport runs protocol = 'secagg' (CKKS: not yet)", field="protocol")
    if config.aggregation.mode != "sync":
        raise ConfigError("the Flower transport runs synchronous rounds", field="aggregation.mode")
    if config.sparsity.kind != "none":
        raise ConfigError("the Flower transport sends dense updates", field="sparsity.kind")
    if config.dp.record_level:
        raise ConfigError("record-level DP-SGD is not wired into the Flower ClientApp", field="dp.record_level")


def _graph(config: RunConfig, n: int) -> tuple[int | None, int]:
    """(neighbors argument, threshold t) for ``n`` sites, as the in-process aggregator."""
    k = config.secagg.neighbors if config.secagg.neighbors is not None else default_neighbors(n)
    neighbors = None if k >= n - 1 else k
    degree = effective_degree(n, neighbors)
    t = config.secagg.threshold or (degree + 1) // 2 + 1
    return neighbors, min(t, degree + 1)


def run_deployment(grid: Grid, settings: DeploymentSettings, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The federated job of ``settings`` over ``grid``; returns the summary."""
    import torch

    from secure_fl.models import build_model, get_flat
    from secure_fl.server_opt import ServerOptimizer

    wall = time.perf_counter()
    path = Path(settings.config_path).expanduser() if settings.config_path else None
    if path is not None and not path.is_absolute() and settings.base_dir is not None:
        path = settings.base_dir / path
    config = load_config(path, list(settings.overrides))
    _check_config(config)
    out = settings.out_dir or Path("runs") / f"flower-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    out = out.resolve()
    if (out / "summary.json").exists():
        raise ConfigError(f"{out} already holds a finished run; choose another out-dir", field="out-dir")
    out.mkdir(parents=True, exist_ok=True)
    log(f"secure-fl: writing the run to {out}")
    progress = (out / "progress.jsonl").open("a", encoding="utf-8")

    def note(**event: Any) -> None:
        progress.write(json.dumps({"t": round(time.time(), 3), **event}) + "\n")
        progress.flush()

    sites = _hello(grid, settings, log)
    log(f"secure-fl: sites {[s.name for s in sites]}")
    note(event="hello", sites=[s.name for s in sites])
    shape = sites[0].feature_shape
    num_classes = settings.num_classes  # from the run configuration, never from the nodes
    torch.manual_seed(config.seed)
    model = build_model(config.model, shape, num_classes)
    weights = get_flat(model).astype(np.float32)
    initial = weights.copy()
    dim = int(weights.size)
    server_opt = ServerOptimizer(config.server)

    (out / "config.toml").write_text(to_toml(config), encoding="utf-8")
    server_key = generate_server_key()
    save_public_key(server_key, out / PUBLIC_KEY_FILENAME)
    ledger = LedgerWriter.create(out / LEDGER_FILENAME, server_key)
    transcript = TranscriptWriter(config.protocol)
    cfg_hash = config_hash(config)
    cfg_text = to_toml(config)
    run_tag = fresh_seed()[:8].hex()
    budgets = ClientBudgets(delta=config.dp.delta)
    metrics: list[dict[str, Any]] = []
    pending_eval: dict[str, Any] | None = None
    metrics_fh = (out / "metrics.jsonl").open("w", encoding="utf-8")
    by_node = {s.node: s for s in sites}

    def flush_metrics(evals: Iterable[Envelope]) -> None:
        nonlocal pending_eval
        if pending_eval is None:
            return
        n_total = acc = loss = 0.0
        for env in evals:
            n = env.fields.get("eval_samples")
            a, ls = env.fields.get("eval_accuracy"), env.fields.get("eval_loss")
            if isinstance(n, int) and n > 0 and isinstance(a, float) and isinstance(ls, float):
                n_total += n
                acc += a * n
                loss += ls * n
        pending_eval["test_accuracy"] = acc / n_total if n_total else None
        pending_eval["test_loss"] = loss / n_total if n_total else None
        metrics.append(pending_eval)
        metrics_fh.write(json.dumps(pending_eval) + "\n")
        metrics_fh.flush()
        pending_eval = None

    try:
        for version in range(1, config.rounds + 1):
            live = set(grid.get_node_ids())
            cohort_sites = [s for s in sites if s.node in live]
            n = len(cohort_sites)
            if n < 2:
                raise ProtocolError(f"aggregation {version}: fewer than 2 sites are connected")
            neighbors, t = _graph(config, n)
            wanted = config.dp.provisioned_survivors or math.ceil((1 - config.simulation.dropout) * n)
            # never above what the sites' roster check accepts: n minus the colluders
            provisioned = max(1, min(n - config.threat.max_colluders, wanted))
            mech = mechanism_for(config, dim=dim, num_clients=n, provisioned=provisioned)
            length = mech.padded_dim if mech is not None else dim + 1
            round_seed = fresh_seed()
            rc = RoundConfig(
                session_id=fresh_seed(),
                round_number=version,
                bits=config.secagg.bits,
                length=length,
                threshold=t,
                identity_keys=tuple(s.identity_key for s in cohort_sites),
                graph_seed=fresh_seed(),
                neighbors=neighbors,
            )
            public: dict[str, FieldValue] = {
                **round_config_fields(rc),
                "config_toml": cfg_text,
                "round_seed": round_seed,
                "weight": 1.0,  # synchronous rounds: staleness 0, public weight 1
                "provisioned": provisioned,
                "gamma": float(mech.gamma) if mech is not None else 0.0,
                "feature_shape": list(shape),
                "num_classes": num_classes,
                "run": run_tag,
            }

            def first_message(
                i: int,
                frames: list[bytes],
                public: dict[str, FieldValue] = public,
                model: npt.NDArray[np.float32] = weights,
            ) -> Envelope:
                return Envelope(tuple(frames), {**public, "index": i}, {"weights": model})

            def on_stage(stage: Stage, version: int = version) -> None:
                note(event="stage", version=version, stage=stage.value)

            def observe(i: int, msg: ProtocolMessage, version: int = version) -> None:
                if isinstance(msg, MaskedInput):  # histogram of the masked vector only
                    transcript.observe_masked_upload(version=version, sender=i, masked=msg.vector, bits=msg.bits)

            names = [s.name for s in cohort_sites]
            worst = ""
            if mech is not None:  # what each site checks against its own cap before joining
                probe = ClientBudgets(delta=config.dp.delta)
                probe.charge("site", mech.event(num_survivors=max(1, t - config.threat.max_colluders)))
                worst = f", each site charged up to epsilon {probe.epsilon('site'):.4g} (delta {config.dp.delta:g})"
            log(f"secure-fl: aggregation {version}: {n} sites, threshold {t}{worst}")

            def on_refusal(i: int, where: str, why: str, version: int = version, names: list[str] = names) -> None:
                log(f"secure-fl: aggregation {version}: {names[i]} refused at {where}: {why}")

            res = secure_sum(
                grid,
                cohort=[s.node for s in cohort_sites],
                config=rc,
                first_message=first_message,
                first_timeout=settings.train_timeout,
                stage_timeout=settings.stage_timeout,
                group_id=f"{run_tag}/v{version}",
                poll_interval=settings.poll_interval,
                on_stage=on_stage,
                observe=observe,
                on_refusal=on_refusal,
            )
            flush_metrics(res.first_replies.values())
            survivors = [names[i] for i in res.survivors]
            left_out = {names[i]: why for i, why in sorted(res.left_out(n).items())}
            for i, why in sorted(res.left_out(n).items()):
                if i not in res.refused:  # refusals were logged as they arrived
                    log(f"secure-fl: aggregation {version}: {names[i]} left out: {why}")
            budget_refusals = {names[i]: res.refused[i] for i in sorted(res.budget_refused)}
            dropped = {k: sorted(names[i] for i in v) for k, v in res.dropped.items()}
            aborted = res.aborted
            if aborted is not None and left_out:
                aborted += "; left out: " + "; ".join(f"{k}: {v}" for k, v in left_out.items())
            event: DPEvent = NonPrivateEvent()
            mean = None
            if res.total is not None:
                if mech is not None:
                    mean = mech.server_decode(res.total, round_seed=round_seed) / float(len(res.survivors))
                    # Against the server only the shares of survivors beyond the c assumed
                    # colluders count (zero-out relation; c = threat.max_colluders).
                    honest = honest_shares(config, len(res.survivors))
                    event = mech.event(num_survivors=honest) if honest >= 1 else NonPrivateEvent()
                else:
                    scale = max_scale(num_summands=n, max_abs=max(config.dp.clip, 1.0), bits=rc.bits)
                    total = fixed_decode(res.total, scale=scale, bits=rc.bits)
                    mean = total[:-1] / total[-1]
                weights = server_opt.step(weights, mean).astype(np.float32)
                if mech is not None:
                    for s in survivors:
                        try:
                            budgets.charge(s, event)
                        except SecureFLError as exc:
                            log(f"secure-fl: {exc}")
            # The audit's recipe (audits.server_view): the records exactly as transcript.json
            # holds them, sender = protocol index (the ledger's ``cohort`` names index i).
            records = [[i, stage, size, digest] for i, stage, size, digest in res.transcript]
            for i, stage, size, digest in res.transcript:
                transcript.add_message(version=version, sender=i, stage=stage, size=size, sha256=digest)
            enabled = mech is not None
            body = {
                "version": version,
                "config_sha256": cfg_hash,
                "protocol": config.protocol,
                "transport": "flower",
                "mode": "sync",
                "cohort": names,
                "survivors": survivors,
                "dropped": dropped,
                "excluded": left_out,
                "budget_refusals": budget_refusals,
                "staleness": dict.fromkeys(names, 0),
                "staleness_weights": dict.fromkeys(names, 1.0),
                "support": "dense",
                "dp_event": encode_event(event),
                "dp_mechanism": config.dp.mechanism,
                "clip": config.dp.clip,
                "field_bits": rc.bits,
                "measurements": {
                    "threshold": t,
                    "neighbors": neighbors,
                    "provisioned_survivors": provisioned,
                    "wrap_probability": float(mech.wrap_probability) if mech is not None else 0.0,
                    "round_seed": round_seed.hex(),
                    "session_id": rc.session_id.hex(),
                },
                "epsilon_per_client": {s: _finite(budgets.epsilon(s)) for s in survivors} if enabled else {},
                "epsilon_max": _finite(budgets.max_epsilon()) if enabled else None,
                "delta": config.dp.delta if enabled else None,
                "transcript_records_sha256": hashlib.sha256(json.dumps(records).encode()).hexdigest(),
                "messages": len(records),
                "aborted": aborted,
                "versions": {"secure_fl": __version__},
            }
            entry = ledger.prepare(body)
            released = [cohort_sites[i] for i in res.survivors] if res.total is not None else []
            ledger.commit(entry, countersignatures=_countersignatures(grid, entry, released, settings, log))
            transcript.write(out / "transcript.json")
            note(event="aggregated", version=version, survivors=survivors, excluded=left_out, aborted=aborted)
            log(f"secure-fl: aggregation {version}: survivors {survivors}" + (f" ABORTED {aborted}" if aborted else ""))
            up = sum(res.upload_bytes.values())
            pending_eval = {
                "version": version,
                "virtual_time_s": None,
                "wall_time_s": round(time.perf_counter() - wall, 3),
                "test_accuracy": None,
                "test_loss": None,
                "epsilon": _finite(budgets.max_epsilon()) if enabled else None,
                "cohort": names,
                "survivors": survivors,
                "excluded": left_out,
                "budget_refusals": budget_refusals,
                "dropped": dropped,
                "aborted": aborted,
                "upload_bytes": up,
                "upload_bytes_per_client": up / max(1, n),
                "download_bytes": sum(res.download_bytes.values()) + weights.nbytes * n,
            }
        # federated evaluation of the final model: sites report aggregate metrics only
        final = _final_evaluation(grid, by_node, weights, settings, shape, num_classes, cfg_text)
        flush_metrics(final)
    finally:
        metrics_fh.close()
        progress.close()

    accs = [m["test_accuracy"] for m in metrics if m["test_accuracy"] is not None]
    torch.save(_state_dict(config, shape, num_classes, weights), out / "model.pt")
    np.save(out / "weights_initial.npy", initial)
    np.save(out / "weights_final.npy", weights)
    summary: dict[str, Any] = {
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "epsilon": _finite(budgets.max_epsilon()) if config.dp.mechanism != "none" else None,
        **_claims(config, budgets.max_epsilon() if config.dp.mechanism != "none" else None),
        "delta": config.dp.delta,
        "accountant": "rdp",
        "unit_of_privacy": "site (user-level: one site's whole update per aggregation)",
        "protocol": config.protocol,
        "transport": "flower",
        "rounds": config.rounds,
        "aggregations_completed": sum(1 for m in metrics if not m["aborted"]),
        "num_clients": len(sites),
        "sites": [s.name for s in sites],
        "num_parameters": dim,
        "model_change_l2": float(np.linalg.norm(weights.astype(np.float64) - initial)),
        "upload_bytes_per_client_mean": float(np.mean([m["upload_bytes_per_client"] for m in metrics]))
        if metrics
        else 0.0,
        "wall_time_s": round(time.perf_counter() - wall, 3),
        "virtual_time_s": None,
        "config_sha256": cfg_hash,
        "secure_fl_version": __version__,
        "transcript_sha256": transcript.write(out / "transcript.json"),
        "ledger_entries": ledger.next_index,
        "ledger_head": ledger.head,
        "ledger_public_key": PUBLIC_KEY_FILENAME,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    done = summary["aggregations_completed"]
    if done < config.rounds:
        log(f"secure-fl: WARNING: only {done} of {config.rounds} aggregations completed; "
            "the reasons are in the log above and under 'excluded' in metrics.jsonl and the ledger")
    log(f"secure-fl: done: {done} of {config.rounds} aggregations completed: {out}")
    return summary


def _claims(config: RunConfig, epsilon: float | None) -> dict[str, Any]:
    """The privacy keys of DESIGN.md section 7 for a Flower run: what each figure means.

    Every site joins every aggregation (no sampling), the noise is distributed
    (zero-out relation) and ``threat.max_colluders`` shares are assumed the server's.
    Figures this transport does not compute yet are null with the reason, never guessed.
    """
    missing = "not computed by the Flower transport; recompute it with `secure-fl audit`"
    claims: dict[str, Any] = {
        "neighbouring_relation": "zero-out",
        "colluding_clients_assumed": config.threat.max_colluders,
        "cohort_sampling": "fixed",
        "epsilon_against_server": epsilon if epsilon is not None and math.isfinite(epsilon) else None,
        "epsilon_against_server_replace_one": None,
        "epsilon_against_server_replace_one_reason": missing,
        "epsilon_released_model": None,
        "epsilon_released_model_reason": "every site joins every aggregation (no sampling "
        "amplification analysed for this transport); " + missing,
    }
    if epsilon is None:
        claims["epsilon_against_server_reason"] = "no differential privacy (dp.mechanism = none)"
    elif not math.isfinite(epsilon):
        claims["epsilon_against_server_reason"] = (
            "an aggregation released a sum with no share beyond the assumed colluders' "
            "(survivors <= threat.max_colluders)"
        )
    return claims


def _final_evaluation(
    grid: Grid,
    by_node: Mapping[int, _Site],
    weights: npt.NDArray[np.float32],
    settings: DeploymentSettings,
    shape: tuple[int, ...],
    num_classes: int,
    cfg_text: str,
) -> list[Envelope]:
    live = [n for n in sorted(grid.get_node_ids()) if n in by_node]
    fields: dict[str, FieldValue] = {"config_toml": cfg_text, "feature_shape": list(shape), "num_classes": num_classes}
    msgs = [
        Message(pack(fields=fields, arrays={"weights": weights}), n, EVALUATE, group_id="final-eval",
                ttl=settings.stage_timeout + 60)
        for n in live
    ]
    out = []
    for reply in exchange(grid, msgs, timeout=settings.stage_timeout, poll_interval=settings.poll_interval).values():
        try:
            out.append(_reply_envelope(reply))
        except RemoteProtocolError:
            continue
    return out


def _state_dict(config: RunConfig, shape: tuple[int, ...], num_classes: int, weights: npt.NDArray[np.float32]) -> Any:
    from secure_fl.models import build_model, set_flat

    model = build_model(config.model, shape, num_classes)
    set_flat(model, weights)
    return model.state_dict()


def _finite(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "inf" if x > 0 else "-inf"


EVALUATE = "evaluate.secure_fl_eval"

def make_server_app(*, base_dir: str | os.PathLike[str] | None = None) -> ServerApp:
    """A ServerApp whose relative ``config`` path resolves against ``base_dir``.

    A Flower app directory exposes it as ``server = make_server_app(base_dir=Path(__file__).parent)``
    so that the secure-fl configuration can ship inside the app bundle.
    """
    server_app = ServerApp()
    base = Path(base_dir).resolve() if base_dir is not None else None

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_deployment(grid, DeploymentSettings.from_run_config(dict(context.run_config), base_dir=base))

    return server_app


app = make_server_app()
"""The ServerApp with ``config`` paths relative to the SuperLink's working directory."""
