"""The Flower ServerApp: the server engine driven over Flower's Grid.

``main`` reads the run settings (:class:`~secure_fl.transport.flower.settings.DeploymentSettings`
from Flower's run configuration), builds the :class:`~secure_fl.engine.server.ServerEngine`
and runs it with :func:`~secure_fl.engine.transport.drive` over a
:class:`~secure_fl.transport.flower.grid.FlowerTransport`. The round loop, cohorts and
async buffers, the protocols (SecAgg+, CKKS with its key-holder party, plain), noise
provisioning, budgets, sparsity, evaluation, metrics, ledger and transcript are the
engine's -- the same code the in-process simulator runs. This module only moves files:
it writes the run directory (docs/architecture.md: ``config.toml``, ``ledger.jsonl`` +
``ledger_public_key.pem``, ``transcript.json``, ``metrics.jsonl``, ``progress.jsonl``,
``summary.json``, ``model.pt``, ``weights_initial.npy``/``weights_final.npy``) through
:class:`~secure_fl.engine.checkpoint.RunStore`, the same store ``secure-fl run`` uses: a
write-ahead checkpoint after every completed aggregation, so ``resume = true`` continues
a run whose server died from its last completed aggregation on one ledger chain.

Before the engine's authenticated hello the ServerApp waits until ``min-nodes``
SuperNodes are connected (``connect-timeout``). The model's input shape is the run
configuration's ``feature-shape`` when given, else the feature shape most parties
report in a first, unauthenticated hello (it only fixes the architecture; the engine's
hello then screens every party).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from audits.ledger import (
    LEDGER_FILENAME,
    PUBLIC_KEY_FILENAME,
    LedgerWriter,
)
from crypto.prg import Csprng
from secure_fl import __version__
from secure_fl.accounting import calibrate_config
from secure_fl.config import RunConfig, config_hash, load_config, to_toml
from secure_fl.engine.checkpoint import RunStore
from secure_fl.engine.transport import HELLO, Envelope, Exchange, drive
from secure_fl.errors import ConfigError, ProtocolError
from secure_fl.hello import new_challenge
from secure_fl.transport.flower.grid import Drops, FlowerTransport
from secure_fl.transport.flower.settings import DeploymentSettings

__all__ = ["DeploymentSettings", "app", "make_server_app", "run_deployment"]


def _wait_for_nodes(transport: FlowerTransport, settings: DeploymentSettings) -> list[int]:
    start = time.monotonic()
    nodes = transport.reachable()
    while len(nodes) < settings.min_nodes and time.monotonic() - start < settings.connect_timeout:
        time.sleep(min(1.0, settings.poll_interval * 4))
        nodes = transport.reachable()
    if len(nodes) < settings.min_nodes:
        raise ProtocolError(
            f"only {len(nodes)} SuperNodes connected within {settings.connect_timeout:g} s; "
            f"min-nodes is {settings.min_nodes}"
        )
    return nodes


def _feature_shape(transport: FlowerTransport, nodes: list[int], settings: DeploymentSettings) -> tuple[int, ...]:
    if settings.feature_shape is not None:
        return settings.feature_shape
    env = Envelope(fields={"challenge": new_challenge()})
    replies = transport.exchange(Exchange({n: (HELLO, env) for n in nodes}, stage="shape"))
    shapes: Counter[tuple[int, ...]] = Counter()
    for reply in replies.values():
        shape = reply.fields.get("feature_shape")
        if reply.fields.get("role", "client") == "client" and isinstance(shape, list) and shape:
            shapes[tuple(int(v) for v in shape)] += 1
    if not shapes:
        raise ProtocolError("no client reported a feature shape; set feature-shape in the run configuration")
    return shapes.most_common(1)[0][0]


def run_deployment(
    grid: Grid,
    settings: DeploymentSettings,
    *,
    log: Callable[[str], None] = print,
    drops: Drops | None = None,
) -> dict[str, Any]:
    """The federated job of ``settings`` over ``grid``; returns the summary.

    ``drops`` (tests): a :class:`secure_fl.transport.dropouts.DropPlan` the transport
    applies by withholding the messages of the named parties from the named stage on.
    """
    import torch

    from secure_fl.engine.server import ServerEngine
    from secure_fl.models import build_model, get_flat

    wall = time.perf_counter()
    config = calibrate_config(load_config(settings.config_file(), list(settings.overrides)))
    out = (settings.out_dir or Path("runs") / f"flower-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}").resolve()
    if settings.resume:
        if settings.out_dir is None:
            raise ConfigError("resume = true needs the out-dir of the run to continue", field="resume")
        # Verify key, checkpoint and ledger and repair them to the checkpoint first
        # (secure_fl.engine.checkpoint): nothing is sent for a directory that cannot resume.
        store = RunStore.open(out, config_sha256=config_hash(config), protocol=config.protocol, resume=True,
                              state_dir=settings.state_dir)
        log(f"secure-fl: resuming the run in {out}")
    else:
        if (out / "summary.json").exists():
            raise ConfigError(f"{out} already holds a finished run; choose another out-dir", field="out-dir")
        if (out / LEDGER_FILENAME).exists():
            raise ConfigError(f"{out} already holds an unfinished run; set resume = true to continue it, "
                              "or choose another out-dir", field="out-dir")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(to_toml(config), encoding="utf-8")
        store = RunStore.open(out, config_sha256=config_hash(config), protocol=config.protocol, resume=False,
                              state_dir=settings.state_dir)
        log(f"secure-fl: writing the run to {out}")
    progress = (out / "progress.jsonl").open("a", encoding="utf-8")

    def note(**event: Any) -> None:
        progress.write(json.dumps({"t": round(time.time(), 3), **event}) + "\n")
        progress.flush()

    if drops is None and settings.drop_plan is not None:
        from secure_fl.transport.dropouts import DropPlan

        drops = DropPlan(settings.drop_plan, protocol=config.protocol)
    transport = FlowerTransport(grid, settings, group=f"secure-fl/{out.name}", drops=drops,
                                on_stage=lambda stage: note(event="stage", stage=stage))
    try:
        nodes = _wait_for_nodes(transport, settings)
        shape = _feature_shape(transport, nodes, settings)
        torch.manual_seed(config.seed)
        model = build_model(config.model, shape, settings.num_classes)
        initial = get_flat(model).astype(np.float32).copy()
        if settings.resume and (out / "weights_initial.npy").exists():
            initial = np.load(out / "weights_initial.npy")
        np.save(out / "weights_initial.npy", initial)
        ledger = store.ledger
        transcript = store.transcript

        def sink(record: dict[str, Any]) -> None:
            store.metrics_sink(record)  # written after the checkpoint that carries it
            note(event="aggregated", version=record["version"], survivors=record["survivors"],
                 excluded=record["excluded"], aborted=record["aborted"])
            line = f"secure-fl: aggregation {record['version']}: survivors {record['survivors']}"
            for who, why in sorted(record["excluded"].items()):
                log(f"secure-fl: aggregation {record['version']}: {who} left out: {why}")
            for who, why in sorted(record["budget_refusals"].items()):
                log(f"secure-fl: aggregation {record['version']}: {who} refused: {why}")
            for stage, who_list in record["dropped"].items():
                for who in who_list:
                    log(f"secure-fl: aggregation {record['version']}: {who} left out: no answer to {stage} in time")
            log(line + (f" ABORTED {record['aborted']}" if record["aborted"] else ""))

        engine = ServerEngine(
            config, model, num_classes=settings.num_classes, ledger=ledger,
            transcript=transcript, metrics_sink=sink, rng=store.server_rng(_server_rng(config)),
            transport_name="flower", min_clients=2, resume=store.engine_resume,
        )
        store.attach(engine, reproducible=config.simulation.reproducible_noise)
        result = drive(engine.run(transport.reachable()), transport)
    finally:
        progress.close()
    for address, why in sorted(result.excluded_at_hello.items()):
        log(f"node {address}: excluded at hello: {why}")
    summary = _summary(config, result, engine, initial, wall, transcript.write(out / "transcript.json"), ledger)
    torch.save(model.state_dict(), out / "model.pt")
    np.save(out / "weights_final.npy", result.weights)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "arrivals.jsonl").write_text(
        "".join(json.dumps(a.__dict__) + "\n" for a in transport.arrivals), encoding="utf-8"
    )
    done = summary["aggregations_completed"]
    if done < config.aggregations:
        log(f"secure-fl: WARNING: only {done} of {config.aggregations} aggregations completed; "
            "the reasons are in the log above and under 'excluded' in metrics.jsonl and the ledger")
    log(f"secure-fl: done: {done} of {config.aggregations} aggregations completed: {out}")
    return summary


def _server_rng(config: RunConfig) -> Csprng:
    """The server's CSPRNG (central noise, Poisson draws): OS entropy, or derived from
    the seed under ``simulation.reproducible_noise`` exactly as the in-process runner does."""
    if config.simulation.reproducible_noise:
        return Csprng(hashlib.sha256(f"secure-fl/reproducible-noise/{config.seed}/server".encode()).digest())
    return Csprng.from_entropy()


def _summary(config: RunConfig, result: Any, engine: Any, initial: Any, wall: float, transcript_sha: str,
             ledger: LedgerWriter) -> dict[str, Any]:
    metrics = result.metrics
    accs = [m["test_accuracy"] for m in metrics if m["test_accuracy"] is not None]
    uploads = [m["upload_bytes_per_client"] for m in metrics]
    return {
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "final_loss": metrics[-1]["test_loss"] if metrics else None,
        **result.privacy.summary(),
        "noise_multiplier": config.dp.noise_multiplier if result.privacy.enabled else None,
        "protocol": config.protocol,
        "transport": "flower",
        "rounds": config.aggregations,
        "aggregations_completed": sum(1 for m in metrics if not m["aborted"]),
        "num_clients": len(result.clients),
        "sites": [p.name for p in result.clients],
        "key_holder": engine.key_holder.name if engine.key_holder is not None else None,
        "num_parameters": int(initial.size),
        "model_change_l2": float(np.linalg.norm(result.weights.astype(np.float64) - initial)),
        **({"memory_budget": engine.memory.report} if engine.memory is not None else {}),
        "upload_bytes_per_client_mean": float(np.mean(uploads)) if uploads else 0.0,
        "wall_time_s": round(time.perf_counter() - wall, 3),
        "virtual_time_s": None,
        "config_sha256": config_hash(config),
        "secure_fl_version": __version__,
        "transcript_sha256": transcript_sha,
        "ledger_entries": ledger.next_index,
        "ledger_head": ledger.head,
        "ledger_public_key": PUBLIC_KEY_FILENAME,
    }


def make_server_app(*, base_dir: str | os.PathLike[str] | None = None) -> ServerApp:
    """A ServerApp whose relative ``config`` path resolves against ``base_dir``.

    A Flower app directory exposes it as ``server = make_server_app(base_dir=Path(__file__).parent)``
    so that the secure-fl configuration ships inside the app bundle.
    """
    server_app = ServerApp()
    base = Path(base_dir).resolve() if base_dir is not None else None

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_deployment(grid, DeploymentSettings.from_run_config(dict(context.run_config), base_dir=base))

    return server_app


app = make_server_app()
"""The ServerApp with ``config`` paths relative to the SuperLink's working directory."""
