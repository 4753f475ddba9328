"""One federated job in simulation: the engine over the in-process transport.

``run(config)`` is what ``secure-fl run`` calls. It is a composition
(docs/architecture.md): load the data and build the model; one
:class:`~secure_fl.engine.client.Site` per data partition (named by its number, with
its own identity key, budget cap ``dp.site_caps`` / ``dp.budget_cap`` and device
profile) and, under ``protocol = "ckks"``, the key holder as its own party; a
:class:`~secure_fl.engine.server.ServerEngine` (cohorts or async buffers, protocol,
accounting, ledger) and an :class:`~secure_fl.transport.inprocess.InProcessTransport`
(virtual clock, dropouts at every stage, ``simulation.workers`` processes); then
:func:`~secure_fl.engine.transport.drive` and the run directory of the public contract.

:func:`make_aggregator` builds the one-call in-memory aggregators of
:mod:`secure_fl.protocols` (audit re-runs, sweeps, benchmarks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from audits.ledger import (
    PUBLIC_KEY_FILENAME,
    LedgerEntry,
    LedgerWriter,
)
from audits.transcript import TranscriptWriter
from crypto.prg import Csprng
from crypto.signatures import generate_identity
from secure_fl import __version__
from secure_fl.accounting import calibrate_config
from secure_fl.aggregation import Aggregator, PlainAggregator
from secure_fl.clip_control import ClipController
from secure_fl.config import RunConfig, config_hash, to_toml
from secure_fl.data import (
    FederatedData,
    SiteSource,
    federated_data_from_sites,
    load_federated_data,
)
from secure_fl.devices import draw_profiles
from secure_fl.engine import public
from secure_fl.engine.checkpoint import (
    CRASH_ENV,
    RunStore,
    crash_point,
    generator_from_state,
    generator_state,
)
from secure_fl.engine.client import (
    WITNESS_KEY,
    ClientEngine,
    MemoryBudget,
    Site,
    SiteRules,
)
from secure_fl.engine.roles.ckks import KeyHolderEngine
from secure_fl.engine.server import ServerEngine
from secure_fl.engine.transport import Envelope, Exchange, drive
from secure_fl.errors import ConfigError
from secure_fl.identities import ClientIdentities
from secure_fl.memory_budget import subset_memory, tensor_layout
from secure_fl.models import ModelFn, build_model, num_parameters, set_flat
from secure_fl.personalization import LocalLayers
from secure_fl.progress import Progress
from secure_fl.protocols import CkksAggregator, SecAggAggregator, check_colluder_provisioning
from secure_fl.training import Evaluation, LossFn, evaluate
from secure_fl.transport.dropouts import DropPlan
from secure_fl.transport.inprocess import InProcessTransport, SimParty
from secure_fl.witness import write_run_roster
from secure_fl.workers import resolved_workers, single_torch_thread

__all__ = ["RunResult", "make_aggregator", "run"]

RUN_FILES = (
    "config.toml",
    "metrics.jsonl",
    "summary.json",
    "ledger.jsonl",
    "transcript.json",
    "model.pt",
    "roster.toml",
)


@dataclass
class RunResult:
    """What a run produced: its directory, per-aggregation metrics and summary."""

    out_dir: Path | None
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    weights: npt.NDArray[np.float32]
    model: nn.Module = field(repr=False)


def make_aggregator(
    config: RunConfig, *, dim: int, rng: Csprng | None = None, identities: ClientIdentities | None = None
) -> Aggregator:
    """The aggregation factory: validated settings in, a protocol object out.

    ``rng`` is the CSPRNG for clients' noise and rounding (fresh OS entropy by default);
    ``identities`` the clients' identity keys (CKKS upload receipts).
    """
    rng = rng or Csprng.from_entropy()

    dp = config.dp
    check_colluder_provisioning(config)
    if config.protocol == "plain":
        if dp.mechanism == "none":
            return PlainAggregator()
        if dp.mechanism != "gaussian":
            raise ConfigError(
                f"{dp.mechanism!r} is a distributed integer mechanism and needs protocol = 'secagg'",
                field="dp.mechanism",
            )
        clipper = ClipController(config, expected_clients=config.cohort_size)
        return PlainAggregator(clipper=clipper, noise_multiplier=dp.noise_multiplier, rng=rng)
    if config.protocol == "ckks":
        if config.dp.mechanism not in ("none", "gaussian"):
            raise ConfigError(
                f"{config.dp.mechanism!r} noise is integer-valued and needs protocol = 'secagg'; "
                "CKKS uses the continuous 'gaussian' mechanism",
                field="dp.mechanism",
            )
        return CkksAggregator(config, dim=dim, rng=rng, identities=identities)
    if config.protocol == "secagg":
        if dp.mechanism == "gaussian":
            raise ConfigError(
                "secagg sums integers: use the exact integer mechanisms 'discrete_gaussian' or "
                "'skellam' (continuous Gaussian noise cannot be summed exactly in Z_2^b)",
                field="dp.mechanism",
            )
        return SecAggAggregator(config, dim=dim, rng=rng)
    raise ConfigError(
        f"protocol {config.protocol!r} is not available in this build yet", field="protocol"
    )


def _default_out_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / stamp


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and (out_dir / "summary.json").exists():
        raise ConfigError(f"{out_dir} already holds a finished run; choose another --out")
    if out_dir.is_dir() and any((out_dir / name).exists() for name in (*RUN_FILES, PUBLIC_KEY_FILENAME)):
        raise ConfigError(
            f"{out_dir} already holds an unfinished run; choose another --out or use --resume"
        )
    out_dir.mkdir(parents=True, exist_ok=True)


def run(
    config: RunConfig,
    *,
    out_dir: str | Path | None = None,
    model_fn: ModelFn | None = None,
    write: bool = True,
    progress: bool = True,
    sites: Sequence[SiteSource] | None = None,
    loss_fn: LossFn | None = None,
    drop_plan: Mapping[int, Mapping[str, str]] | None = None,
    resume: str | Path | None = None,
    state_dir: str | Path | None = None,
) -> RunResult:
    """Run one federated job described by ``config``.

    ``model_fn(feature_shape, num_classes)`` plugs in any ``torch.nn.Module``;
    ``sites`` brings each site's own data, one client per entry, as ``(x, y)`` arrays or
    a map-style dataset of ``(x, y)`` (:func:`secure_fl.data.federated_data_from_sites`;
    ``config.data`` then only supplies ``test_fraction``, ``client_test_fraction`` and
    ``standardize``); ``loss_fn(logits, targets)`` replaces the cross-entropy in local
    training and evaluation; ``write=False`` keeps everything in memory (no run
    directory). Clients' local training and DP encoding run in ``simulation.workers``
    processes (:mod:`secure_fl.workers`); torch uses one thread in each, and in this
    process for the duration of the run unless ``OMP_NUM_THREADS`` chooses otherwise.
    ``drop_plan`` (``{aggregation: {client name: stage}}``,
    :class:`secure_fl.transport.dropouts.DropPlan`) replaces the random
    ``simulation.dropout`` draws with exactly these dropouts (equivalence tests).

    ``resume=DIR`` continues the interrupted run in ``DIR`` after its last completed
    aggregation (:mod:`secure_fl.engine.checkpoint`): ``config`` must be the run's own
    (``DIR/config.toml``), and ``model_fn``/``sites``/``loss_fn`` the same as before.
    ``state_dir`` is the server's private state directory (ledger key, simulated
    clients' key seed; default ``DIR.server`` beside the run directory).
    """
    threads = contextlib.nullcontext() if os.environ.get("OMP_NUM_THREADS") else single_torch_thread()
    with threads:
        return _run(
            config,
            out_dir=out_dir,
            model_fn=model_fn,
            write=write,
            progress=progress,
            sites=sites,
            loss_fn=loss_fn,
            drop_plan=drop_plan,
            resume=resume,
            state_dir=state_dir,
        )


def build_parties(
    config: RunConfig,
    data: FederatedData,
    model: nn.Module,
    identities: ClientIdentities,
    *,
    loss_fn: LossFn | None = None,
) -> tuple[list[SimParty], KeyHolderEngine | None]:
    """The simulated parties of a run: one :class:`Site` per data partition (named by its
    number), and the CKKS key holder as its own party under ``protocol = "ckks"``."""
    profiles = draw_profiles(config.clients.num, config.simulation, seed=config.seed)
    holder_rng = (
        Csprng(public.public_seed(config, "key-holder")) if config.simulation.reproducible_noise else Csprng.from_entropy()
    )
    holder_key = generate_identity(holder_rng) if config.protocol == "ckks" else None
    rules = SiteRules(
        roster=None,
        require_dp=False,
        max_colluders=config.threat.max_colluders,
        min_cohort=2,
        min_threshold=1,
        min_neighbors=1,
        key_holder=holder_key.public_key().public_bytes_raw() if holder_key is not None else None,
        allow_unnoised_metrics=True,  # one party: the run configuration decides (the probe checks it)
    )
    dp = config.dp
    parties: list[SimParty] = []
    for cid, client in enumerate(data.clients):
        name = str(cid)
        cap = dp.site_caps.get(cid, dp.budget_cap) if dp.mechanism != "none" else None
        site = Site(
            name=name,
            identity_key=identities.key(cid),
            data=client,
            rules=rules,
            budget=MemoryBudget(cap=float(cap) if cap else math.inf, delta=dp.delta, name=name),
            model=model,
            loss_fn=loss_fn,
            global_test=(data.x_test, data.y_test),
        )
        parties.append(SimParty(name, ClientEngine(site), profiles[cid]))
    holder: KeyHolderEngine | None = None
    if holder_key is not None:
        holder = KeyHolderEngine(
            name="key-holder",
            identity_key=holder_key,
            members=[identities.public_key(c) for c in range(config.clients.num)],
        )
        parties.append(SimParty("key-holder", holder, profiles[0], role="key-holder"))
    return parties, holder


def _run(
    config: RunConfig,
    *,
    out_dir: str | Path | None,
    model_fn: ModelFn | None,
    write: bool,
    progress: bool,
    sites: Sequence[SiteSource] | None,
    loss_fn: LossFn | None,
    drop_plan: Mapping[int, Mapping[str, str]] | None = None,
    resume: str | Path | None = None,
    state_dir: str | Path | None = None,
) -> RunResult:
    wall_start = time.perf_counter()
    config = calibrate_config(config)
    public.check_run_config(config)
    store: RunStore | None = None
    resume_dir = Path(resume) if resume is not None else None
    if resume_dir is not None:
        if not write:
            raise ConfigError("resuming a run needs its run directory (write=True)", field="resume")
        if out_dir is not None and Path(out_dir).resolve() != resume_dir.resolve():
            raise ConfigError("--out and --resume name different directories", field="resume")
        # Verify key, checkpoint and ledger and repair them to the checkpoint first:
        # nothing is built for a run directory that cannot be resumed.
        store = RunStore.open(
            resume_dir, config_sha256=config_hash(config), protocol=config.protocol, resume=True, state_dir=state_dir
        )
    torch.manual_seed(config.seed)
    data: FederatedData = (
        load_federated_data(config) if sites is None else federated_data_from_sites(sites, config)
    )
    model = (model_fn or (lambda s, c: build_model(config.model, s, c)))(
        data.feature_shape, data.num_classes
    )
    dim = num_parameters(model)
    server_rng = (
        Csprng(hashlib.sha256(f"secure-fl/reproducible-noise/{config.seed}/server".encode()).digest())
        if config.simulation.reproducible_noise
        else Csprng.from_entropy()
    )
    layout = tensor_layout(model, data.feature_shape)
    full_memory = subset_memory(
        layout, frozenset(range(len(layout))), batch_size=config.train.batch_size
    )
    path: Path | None = None
    if store is None and write:
        path = Path(out_dir) if out_dir is not None else _default_out_dir()
        _prepare_out_dir(path)
        (path / "config.toml").write_text(to_toml(config), encoding="utf-8")
        # The run directory holds the public key so anyone can verify the ledger; the
        # signing key and the clients' key seed go to the server's private state
        # directory beside it (never into the run directory), so a crashed run resumes
        # with the same key and one hash chain (secure_fl.engine.checkpoint).
        store = RunStore.open(
            path, config_sha256=config_hash(config), protocol=config.protocol, resume=False, state_dir=state_dir
        )
    elif store is not None:
        path = store.run_dir
    server_rng = store.server_rng(server_rng) if store is not None else server_rng
    # Each client's own identity key: derived from the public seed under reproducible
    # noise (research: then two runs, or two transports, sign the same bytes); otherwise,
    # for a run with a directory, from a secret seed kept in the server's private state
    # directory (the simulation's stand-in for the sites' own disks), so resumed clients
    # countersign with the roster's keys.
    id_rng: Csprng | None = None
    if config.simulation.reproducible_noise:
        id_rng = Csprng(public.public_seed(config, "identities"))
    elif store is not None:
        id_rng = Csprng(store.client_seed(create=store.resumed is None))
    identities = ClientIdentities.generate(range(config.clients.num), rng=id_rng)
    ledger: LedgerWriter | None = None
    if store is not None:
        ledger = store.ledger
        if store.resumed is None:
            write_run_roster(store.run_dir, identities)  # the clients' public keys: who countersigns
    transcript = store.transcript if store is not None else TranscriptWriter(config.protocol)
    bar = Progress(
        config.aggregations,
        desc=f"secure-fl {config.protocol} ({config.aggregation.mode})",
        enabled=progress,
    )

    def sink(record: dict[str, Any]) -> None:
        # Metrics are the server's aggregate view only: never an individual update. The
        # store writes the line after the checkpoint that carries it.
        if store is not None:
            store.metrics_sink(record)

    def on_progress(version: int, record: dict[str, Any]) -> None:
        bar.update(version, acc=record["test_accuracy"], loss=record["test_loss"], eps=record["epsilon"])
        if record["aborted"]:
            bar.note(f"aggregation {version} aborted: {record['aborted']}")

    def evaluator(weights: npt.NDArray[np.float32]) -> Evaluation:
        set_flat(model, weights)
        return evaluate(model, data.x_test, data.y_test, loss_fn=loss_fn)

    local_enabled = LocalLayers(model).enabled
    engine = ServerEngine(
        config,
        model,
        num_classes=data.num_classes,
        evaluator=evaluator,
        ledger=ledger,
        transcript=transcript,
        metrics_sink=sink,
        rng=server_rng,
        on_progress=on_progress,
        client_memory_bytes=full_memory,
        resume=store.engine_resume if store is not None else None,
    )
    saved: Mapping[str, Any] = store.saved if store is not None else {}
    privacy = engine.privacy
    parties, _holder = build_parties(config, data, model, identities, loss_fn=loss_fn)
    if store is not None and saved:
        # The simulated sites' own budgets and countersigning positions, from the entries
        # they countersigned (before the worker pool forks, so the workers hold them).
        _replay_sites(parties, store.committed_entries(), (store.resumed.run_id if store.resumed else None) or engine.run_tag)
    # Client state that lives in the parent's model (FedBN layers are kept in each site's
    # state, so workers are fine); one process when asked for one.
    transport = InProcessTransport(
        parties,
        protocol=config.protocol,
        dropout=config.simulation.dropout,
        seed=config.seed,
        drop_plan=DropPlan(drop_plan, protocol=config.protocol) if drop_plan is not None else None,
        workers=resolved_workers(config),
    )
    _ = local_enabled
    if saved:
        moved = saved["transport"]
        transport.clock = float(moved["clock"])
        transport.rng = generator_from_state(moved["rng"])
        transport._seq = int(moved["seq"])
    if store is not None:
        store.attach(
            engine,
            reproducible=config.simulation.reproducible_noise,
            extra_state=lambda: {
                "transport": {"clock": transport.clock, "rng": generator_state(transport.rng), "seq": transport._seq}
            },
        )
    driven: Any = _CrashingTransport(transport, engine.version) if os.environ.get(CRASH_ENV) else transport
    try:
        result = drive(engine.run(transport.reachable()), driven)
    except BaseException:
        transport.close(terminate=True)
        raise
    finally:
        transport.close()
        bar.close()
    if privacy.enabled and engine.stopped:
        bar.note("stopped early: every site's privacy budget is spent")
    metrics = result.metrics
    weights = result.weights
    memory = engine.memory
    set_flat(model, weights)
    accs = [m["test_accuracy"] for m in metrics if m["test_accuracy"] is not None]
    uploads = [m["upload_bytes_per_client"] for m in metrics if m["upload_bytes"]]
    summary: dict[str, Any] = {
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "final_loss": metrics[-1]["test_loss"] if metrics else None,
        **privacy.summary(),
        "noise_multiplier": config.dp.noise_multiplier if privacy.enabled else None,
        "protocol": config.protocol,
        "transport": "inprocess",
        "rounds": config.aggregations,
        "aggregations_completed": sum(1 for m in metrics if not m["aborted"]),
        "num_clients": config.clients.num,
        **({"data_source": f"python ({len(sites)} sites)"} if sites is not None else {}),
        "num_parameters": dim,
        "client_memory_bytes_full_model": full_memory,
        **({"memory_budget": memory.report} if memory is not None else {}),
        "upload_bytes_per_client_mean": float(np.mean(uploads)) if uploads else 0.0,
        "wall_time_s": round(time.perf_counter() - wall_start, 3),
        "virtual_time_s": round(result.virtual_time, 6),
        "config_sha256": config_hash(config),
        "secure_fl_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if path is not None and ledger is not None:
        summary["transcript_sha256"] = transcript.write(path / "transcript.json")
        summary["ledger_entries"] = ledger.next_index
        summary["ledger_head"] = ledger.head
        summary["ledger_public_key"] = PUBLIC_KEY_FILENAME
        torch.save(model.state_dict(), path / "model.pt")
        (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return RunResult(path, metrics, summary, weights, model)


def _replay_sites(parties: Sequence[SimParty], entries: Sequence[LedgerEntry], run_id: str) -> None:
    """Rebuild each simulated site's own state from the committed ledger: its budget
    (a simulated site is charged, when it countersigns, the event the entry records;
    the same rule, ``ClientEngine._charge_released``, is applied here) and the index of
    the last entry it countersigned. Entries it did not countersign charged it nothing;
    an interrupted aggregation has no entry and charged nothing."""
    notice = Envelope(fields={"run": run_id})
    for party in parties:
        engine = party.engine
        if not isinstance(engine, ClientEngine):
            continue
        last = -1
        for entry in entries:
            if engine.site.name in entry.countersignatures:
                last = entry.index
                engine._charge_released(entry.body, notice)
        if last >= 0:
            party.state.put(WITNESS_KEY, {"last_index": last})


class _CrashingTransport:
    """Fault injection for the crash tests (``SECURE_FL_TEST_CRASH=stage:NAME:VERSION``):
    SIGKILL this process when the engine starts exchange ``NAME`` of aggregation
    ``VERSION``, i.e. in the middle of that aggregation."""

    def __init__(self, inner: InProcessTransport, version: int) -> None:
        self._inner = inner
        self._version = version  # the last completed aggregation

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def exchange(self, command: Exchange) -> dict[int, Any]:
        if command.stage == "train":
            self._version += 1
        crash_point(f"stage:{command.stage}", self._version)
        return self._inner.exchange(command)

