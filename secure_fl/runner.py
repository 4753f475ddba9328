"""One federated job: data, clients, aggregations, metrics and the run directory.

``run(config)`` is the engine behind ``secure-fl run``. Each aggregation (server model
version) of the synchronous mode:

1. the server samples a cohort of ``clients.per_round`` clients;
2. each cohort member downloads the global model, trains locally and forms its update
   ``delta = w_local - w_global`` (a simulated client may drop at any protocol stage);
3. the configured :class:`~secure_fl.aggregation.Aggregator` (plain / secagg / ckks)
   returns the weighted mean of the updates that arrived, never an individual one;
4. the server optimizer applies it; the global model is evaluated; one line goes to
   ``metrics.jsonl``.

Virtual time comes from device profiles and the real message sizes
(:mod:`secure_fl.devices`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from audits.events_codec import encode_event
from audits.ledger import (
    LEDGER_FILENAME,
    PUBLIC_KEY_FILENAME,
    LedgerWriter,
    generate_server_key,
    save_public_key,
)
from audits.transcript import TranscriptWriter
from crypto.prg import Csprng
from privacy.events import NonPrivateEvent
from secure_fl import __version__
from secure_fl.accounting import RunPrivacy, calibrate_config, unnoised_statistics_allowed
from secure_fl.aggregation import AggregateOutcome, Aggregator, PlainAggregator
from secure_fl.client_jobs import ClientTrainer, TrainJob
from secure_fl.clip_control import ClipController
from secure_fl.config import RunConfig, config_hash, to_toml
from secure_fl.data import (
    FederatedData,
    SiteSource,
    federated_data_from_sites,
    load_federated_data,
)
from secure_fl.devices import draw_profiles
from secure_fl.errors import ConfigError
from secure_fl.identities import ClientIdentities
from secure_fl.memory_budget import (
    TensorInfo,
    feasible_subsets,
    subset_indices,
    subset_memory,
    tensor_layout,
)
from secure_fl.models import ModelFn, build_model, get_flat, num_parameters, set_flat
from secure_fl.personalization import LocalLayers
from secure_fl.progress import Progress
from secure_fl.protocols import CkksAggregator, SecAggAggregator, check_colluder_provisioning
from secure_fl.server_opt import ServerOptimizer
from secure_fl.simulator import CohortPlan, Simulator, TrainResult
from secure_fl.sparsity import MagnitudePruner, Support, full_support, random_k_support
from secure_fl.staleness import staleness_weight
from secure_fl.training import Evaluation, LossFn, evaluate, train_local
from secure_fl.witness import Witness, witness_and_commit, write_run_roster
from secure_fl.workers import WorkerPool, resolved_workers, single_torch_thread

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


@dataclass(frozen=True)
class _MemoryChoice:
    support: Support
    frozen: npt.NDArray[np.bool_]
    memory_bytes: int
    report: dict[str, Any]


def _choose_memory_subset(
    config: RunConfig, model: nn.Module, data: FederatedData, layout: list[TensorInfo]
) -> _MemoryChoice:
    """Accuracy-aware search over the maximal tensor subsets that fit the budget
    (:mod:`secure_fl.memory_budget`): each candidate is scored by local training of that
    subset on a sample of clients from the initial model, evaluated on the clients' own
    validation splits; the best mean validation accuracy wins.

    In a deployment each probe client reports one scalar (its validation accuracy); these
    probe scalars carry no noise and are not covered by the DP guarantee. Under DP the
    probe therefore runs only with ``dp.allow_unnoised_site_metrics`` (the summary and the
    audit then list it as a hazard); otherwise the choice uses no client data: the
    feasible subset that trains the most parameters wins.
    """
    batch = config.train.batch_size
    candidates = feasible_subsets(layout, budget_fraction=config.sparsity.density, batch_size=batch)
    dim = sum(t.size for t in layout)
    w0 = get_flat(model)
    rng = np.random.default_rng([config.seed, 0x3E3])
    probe = sorted(
        int(c) for c in rng.choice(config.clients.num, min(10, config.clients.num), replace=False)
    )
    scores: list[float] = []
    if not unnoised_statistics_allowed(config):
        probe = []
        scores = [float(len(subset_indices(layout, cand))) for cand in candidates]
    for cand in candidates if probe else ():
        frozen = np.ones(dim, dtype=bool)
        frozen[subset_indices(layout, cand)] = False
        accs = []
        for cid in probe:
            client = data.clients[cid]
            set_flat(model, w0)
            train_local(
                model,
                client.x_train,
                client.y_train,
                config.train,
                seed=config.seed + cid,
                frozen=frozen,
            )
            x_val, y_val = (
                (client.x_test, client.y_test)
                if client.y_test.size
                else (client.x_train, client.y_train)
            )
            accs.append(evaluate(model, x_val, y_val).accuracy)
        scores.append(float(np.mean(accs)))
    set_flat(model, w0)
    best = int(np.argmax(scores))
    chosen = candidates[best]
    idx = subset_indices(layout, chosen)
    frozen = np.ones(dim, dtype=bool)
    frozen[idx] = False
    memory = subset_memory(layout, chosen, batch_size=batch)
    full = subset_memory(layout, frozenset(range(len(layout))), batch_size=batch)
    report = {
        "budget_fraction": config.sparsity.density,
        "full_training_memory_bytes": full,
        "chosen_memory_bytes": memory,
        "chosen_tensors": [layout[i].name for i in sorted(chosen)],
        "trained_parameters": int(idx.size),
        "candidates": [
            {
                "tensors": [layout[i].name for i in sorted(c)],
                "memory_bytes": subset_memory(layout, c, batch_size=batch),
                ("probe_accuracy" if probe else "trained_parameters"): sc,
            }
            for c, sc in zip(candidates, scores, strict=True)
        ],
        "probe_clients": probe,
        "selection": "probe accuracy on clients' validation splits (unnoised)"
        if probe
        else "most trained parameters (no client data used)",
    }
    desc = {"kind": "memory_budget", "density": idx.size / dim, "tensors": report["chosen_tensors"]}
    return _MemoryChoice(Support(idx, dim, desc), frozen, memory, report)


def _make_pruner(config: RunConfig, model: nn.Module, dim: int) -> MagnitudePruner | None:
    if config.sparsity.kind != "prune":
        return None
    # Weight matrices and kernels are pruned; biases (1-D tensors) are kept dense.
    prunable = np.concatenate(
        [np.full(p.numel(), p.dim() > 1) for p in model.parameters() if p.requires_grad]
    )
    end = max(1, int(0.6 * config.rounds))
    return MagnitudePruner(
        dim=dim, density=config.sparsity.density, start=0, end=end, prunable=prunable
    )


def _support_for(
    config: RunConfig, version: int, dim: int, pruner: MagnitudePruner | None
) -> Support:
    """The public support of aggregation ``version``."""
    kind = config.sparsity.kind
    if kind == "random_k":
        seed = hashlib.sha256(f"secure-fl/random-k/{config.seed}/{version}".encode()).digest()
        return random_k_support(dim, density=config.sparsity.density, round_seed=seed)
    if pruner is not None:
        return pruner.support()
    return full_support(dim)


def _library_versions() -> dict[str, str]:
    # Installed distributions' versions, read from their metadata: importing opacus only
    # to read its version would cost seconds of start-up in every run.
    from importlib.metadata import PackageNotFoundError, version

    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "unknown"

    return {
        "secure_fl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cryptography": installed("cryptography"),
        "opacus": installed("opacus"),
        "tenseal": installed("tenseal"),
    }


def _finite(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "inf" if x > 0 else "-inf"


def _ledger_body(
    config: RunConfig,
    cfg_hash: str,
    version: int,
    plan: CohortPlan,
    outcome: AggregateOutcome,
    support: Support,
    refused: dict[int, str],
    privacy: RunPrivacy,
    versions: dict[str, str],
) -> dict[str, Any]:
    """One ledger entry: everything an auditor needs about an aggregation, and nothing
    about any individual update (message digests only, public staleness weights)."""
    st = config.staleness
    records = [[r.sender, r.stage, r.size, r.sha256] for r in outcome.transcript]
    return {
        "version": version,
        "config_sha256": cfg_hash,
        "protocol": config.protocol,
        "mode": config.aggregation.mode,
        "cohort": list(outcome.cohort),
        "survivors": list(outcome.survivors),
        "dropped": outcome.dropped,
        "excluded": {str(k): v for k, v in outcome.excluded.items()},
        "rejected_stale": {str(k): v for k, v in plan.rejected.items()},
        "budget_refusals": {str(k): v for k, v in refused.items()},
        "staleness": {str(k): v for k, v in plan.staleness.items()},
        "staleness_weights": {
            str(k): staleness_weight(v, fn=st.fn, a=st.a, b=st.b) for k, v in plan.staleness.items()
        },
        "support": support.description,
        "dp_event": encode_event(outcome.dp_event),
        "dp_mechanism": config.dp.mechanism,
        "clip": outcome.measurements.get("clip"),
        "field_bits": config.secagg.bits if config.protocol == "secagg" else None,
        "measurements": {
            k: v for k, v in outcome.measurements.items() if isinstance(v, int | str | float | None)
        },
        "dp_event_released": encode_event(outcome.dp_event_released or outcome.dp_event),
        "colluding_clients_assumed": config.threat.max_colluders,
        "cohort_sampling": privacy.sampling,
        "epsilon_per_client": {
            str(c): _finite(privacy.budgets.epsilon(c)) for c in outcome.survivors
        }
        if privacy.server_guarantee
        else {},
        "epsilon_max": _finite(privacy.epsilon()),
        "delta": config.dp.delta if privacy.enabled else None,
        "transcript_records_sha256": hashlib.sha256(json.dumps(records).encode()).hexdigest(),
        "messages": len(records),
        "aborted": outcome.aborted,
        "versions": versions,
    }


def _privacy_rng(config: RunConfig) -> Csprng:
    """The CSPRNG of clients' noise, rounding and masks: fresh OS entropy, unless
    ``simulation.reproducible_noise`` derives it from the public seed (research only: the
    noise is then predictable by anyone who knows the configuration)."""
    if config.simulation.reproducible_noise:
        return Csprng(
            hashlib.sha256(f"secure-fl/reproducible-noise/{config.seed}".encode()).digest()
        )
    return Csprng.from_entropy()


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
        )


def _run(
    config: RunConfig,
    *,
    out_dir: str | Path | None,
    model_fn: ModelFn | None,
    write: bool,
    progress: bool,
    sites: Sequence[SiteSource] | None,
    loss_fn: LossFn | None,
) -> RunResult:
    wall_start = time.perf_counter()
    config = calibrate_config(config)
    torch.manual_seed(config.seed)
    data: FederatedData = (
        load_federated_data(config) if sites is None else federated_data_from_sites(sites, config)
    )
    model = (model_fn or (lambda s, c: build_model(config.model, s, c)))(
        data.feature_shape, data.num_classes
    )
    dim = num_parameters(model)
    dp_rng = _privacy_rng(config)
    identities = ClientIdentities.generate(range(config.clients.num))  # each client's own key
    witnesses: dict[str, Witness] = {}
    aggregator = make_aggregator(config, dim=dim, rng=dp_rng.fork(), identities=identities)
    privacy = RunPrivacy(config, aggregator)
    server_opt = ServerOptimizer(config.server)
    profiles = draw_profiles(config.clients.num, config.simulation, seed=config.seed)
    weights = get_flat(model)
    sim = Simulator(
        config,
        profiles,
        model_bytes=weights.nbytes,
        stages=aggregator.stages,
        rng=np.random.default_rng([config.seed, 0x5EED]),
        cohort_rng=dp_rng.fork() if config.clients.sampling == "poisson" else None,
    )
    local = LocalLayers(model)
    pruner = _make_pruner(config, model, dim)
    layout = tensor_layout(model, data.feature_shape)
    full_memory = subset_memory(
        layout, frozenset(range(len(layout))), batch_size=config.train.batch_size
    )
    budget = (
        _choose_memory_subset(config, model, data, layout)
        if config.sparsity.kind == "memory_budget"
        else None
    )
    unnoised_ok = unnoised_statistics_allowed(config)
    dp_on = config.dp.mechanism != "none" or config.dp.record_level
    if budget is not None and budget.report["probe_clients"] and dp_on:
        privacy.add_hazard(
            "memory-budget probe: the validation accuracies of clients "
            f"{budget.report['probe_clients']} chose the trained subset without noise or "
            "accounting (dp.allow_unnoised_site_metrics = true); not covered by epsilon"
        )
    if unnoised_ok and dp_on:
        privacy.add_hazard(
            "personalized_accuracy in metrics.jsonl is the mean accuracy on cohort clients' own "
            "test splits, released without noise or accounting (dp.allow_unnoised_site_metrics "
            "= true); not covered by epsilon"
        )

    path: Path | None = None
    if write:
        path = Path(out_dir) if out_dir is not None else _default_out_dir()
        _prepare_out_dir(path)
        (path / "config.toml").write_text(to_toml(config), encoding="utf-8")
        metrics_fh = (path / "metrics.jsonl").open("w", encoding="utf-8")
        # The server's signing key lives only in this process; the run directory holds
        # the public key so anyone can verify the ledger.
        server_key = generate_server_key()
        save_public_key(server_key, path / PUBLIC_KEY_FILENAME)
        ledger = LedgerWriter.create(path / LEDGER_FILENAME, server_key)
        write_run_roster(path, identities)  # the clients' public keys: who countersigns
    transcript = TranscriptWriter(config.protocol)
    versions = _library_versions()
    cfg_hash = config_hash(config)
    pending: dict[str, Any] = {}

    metrics: list[dict[str, Any]] = []
    state = {"weights": weights}
    bar = Progress(
        config.rounds,
        desc=f"secure-fl {config.protocol} ({config.aggregation.mode})",
        enabled=progress,
    )

    def train_many(cids: list[int], version: int) -> list[TrainResult]:
        # Jobs are described here, in cohort order (seeds, DP keys), and run by the pool:
        # the results do not depend on simulation.workers.
        frozen = budget.frozen if budget is not None else (
            ~pruner.mask if pruner is not None else None
        )
        trainer.publish(state["weights"], frozen)
        jobs = [
            TrainJob(
                cid,
                int(np.random.SeedSequence([config.seed, version, cid, len(metrics)]).generate_state(1)[0]),
                frozen is not None,
                dp_rng.random_bytes(32) if config.dp.record_level else None,
            )
            for cid in cids
        ]
        outputs = pool.map(jobs)
        for job, out in zip(jobs, outputs, strict=True):
            if out.event is not None:
                privacy.record_training(job.client_id, out.event)
        return [out.result for out in outputs]

    def train(cid: int, version: int) -> TrainResult:
        return train_many([cid], version)[0]

    def aggregate(plan: CohortPlan) -> AggregateOutcome:
        version = sim.version + 1
        support = (
            budget.support if budget is not None else _support_for(config, version, dim, pruner)
        ).without(local.mask)
        planned = aggregator.planned_event(num_clients=len(plan.updates), dim=support.size)
        admitted, refused = privacy.admit(
            [u.client_id for u in plan.updates], version=version, planned=planned
        )
        updates = [
            replace(u, delta=support.gather(u.delta))
            for u in plan.updates
            if u.client_id in admitted
        ]
        if isinstance(aggregator, SecAggAggregator):
            aggregator.on_masked_upload = lambda cid, masked, bits: transcript.observe_masked_upload(
                version=version, sender=cid, masked=masked, bits=bits
            )
        if updates:
            outcome = aggregator.aggregate(updates, round_index=version)
        else:
            outcome = AggregateOutcome(
                None,
                tuple(u.client_id for u in plan.updates),
                (),
                {},
                {},
                {},
                {},
                NonPrivateEvent(),
                aborted="every cohort member refused: privacy budget spent"
                if plan.updates
                else "empty cohort: the Poisson draw selected no client",
            )
        epsilon = privacy.record(outcome, version=version, planned=planned)
        if outcome.mean is not None:
            new = server_opt.step(state["weights"], support.scatter(outcome.mean))
            if pruner is not None:
                new = new * pruner.update(new, version)
            state["weights"] = new.astype(np.float32)
        set_flat(model, state["weights"])
        members = [u.client_id for u in plan.updates]
        personal = []
        global_evals = []
        for c in members:
            local.load(model, c)  # no-op without local layers
            if unnoised_ok:
                personal.append(
                    evaluate(model, data.clients[c].x_test, data.clients[c].y_test, loss_fn=loss_fn)
                )
            if local.enabled:
                global_evals.append(evaluate(model, data.x_test, data.y_test, loss_fn=loss_fn))
        if local.enabled:
            # FedBN: there is no global batch norm; the global test accuracy is the mean
            # over cohort clients of the shared model with each client's own layers.
            test = Evaluation(
                float(np.mean([e.accuracy for e in global_evals])),
                float(np.mean([e.loss for e in global_evals])),
                int(data.y_test.size),
            )
        else:
            test = evaluate(model, data.x_test, data.y_test, loss_fn=loss_fn)
        # Cohort clients' own test accuracies carry no noise: released only where allowed.
        personal_acc = [p.accuracy for p in personal if p.num_samples] if unnoised_ok else []
        up_total = sum(outcome.upload_bytes.values())
        hist: dict[str, int] = {}
        for tau in plan.staleness.values():
            hist[str(tau)] = hist.get(str(tau), 0) + 1
        record: dict[str, Any] = {
            "version": version,
            "virtual_time_s": None,  # filled in once the exchange time is known
            "wall_time_s": round(time.perf_counter() - wall_start, 3),
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "personalized_accuracy": float(np.mean(personal_acc)) if personal_acc else None,
            "epsilon": epsilon,
            "cohort": list(outcome.cohort),
            "budget_refusals": {str(k): v for k, v in refused.items()},
            "survivors": list(outcome.survivors),
            "dropped": outcome.dropped,
            "excluded": {str(k): v for k, v in outcome.excluded.items()},
            "rejected_stale": {str(k): v for k, v in plan.rejected.items()},
            "staleness_histogram": hist,
            "aborted": outcome.aborted,
            "clip": outcome.measurements.get("clip"),
            "unclipped_fraction": outcome.measurements.get("unclipped_fraction"),
            "support": support.description,
            "client_trained_parameters": support.size,
            "client_memory_bytes": budget.memory_bytes if budget is not None else full_memory,
            "upload_bytes": up_total,
            "upload_bytes_per_client": up_total / max(1, len(outcome.upload_bytes)),
            "download_bytes": weights.nbytes * len(members) + sum(outcome.download_bytes.values()),
        }
        metrics.append(record)
        transcript.add_messages(outcome.transcript, version=version)
        corr = outcome.measurements.get("max_abs_corr_masked_vs_true")
        if corr is not None:
            transcript.add_statistic(version=version, name="max_abs_corr_masked_vs_true", value=corr)
        pending["entry"] = _ledger_body(
            config, cfg_hash, version, plan, outcome, support, refused, privacy, versions
        )
        bar.update(version, acc=test.accuracy, loss=test.loss, eps=epsilon)
        if outcome.aborted:
            bar.note(f"aggregation {version} aborted: {outcome.aborted}")
        if privacy.enabled and plan.updates and not admitted:
            # Every site refused: no further aggregation can be private within the caps.
            sim.stopped = True
            bar.note(f"stopping after aggregation {version}: every site's privacy budget is spent")
        return outcome

    def complete(virtual_time: float) -> None:
        record = metrics[-1]
        record["virtual_time_s"] = round(virtual_time, 6)
        if path is not None:
            body = pending.pop("entry")
            body["virtual_time_s"] = record["virtual_time_s"]
            body["test_accuracy"] = record["test_accuracy"]
            witness_and_commit(ledger, body, identities, witnesses=witnesses)  # survivors countersign
            # Metrics are the server's aggregate view only: never an individual update.
            metrics_fh.write(json.dumps(record) + "\n")
            metrics_fh.flush()

    trainer = ClientTrainer(config, model, data, local, dim=dim, loss_fn=loss_fn)
    # Client state that lives in the parent (FedBN layers) keeps training in-process.
    pool: WorkerPool[Any, Any] = WorkerPool(
        trainer.run, workers=1 if local.enabled else resolved_workers(config)
    )
    if isinstance(aggregator, SecAggAggregator):
        aggregator.client_map = pool.map
    try:
        if config.aggregation.mode == "sync":
            sim.run_sync(train, aggregate, complete, train_many=train_many)
        else:
            sim.run_async(train, aggregate, complete, train_many=train_many)
    except BaseException:
        pool.close(terminate=True)
        raise
    finally:
        pool.close()
        bar.close()
        if path is not None:
            metrics_fh.close()
    weights = state["weights"]
    virtual_time = sim.now

    accs = [m["test_accuracy"] for m in metrics]
    uploads = [m["upload_bytes_per_client"] for m in metrics if m["upload_bytes"]]
    summary: dict[str, Any] = {
        "final_accuracy": accs[-1],
        "best_accuracy": max(accs),
        "final_loss": metrics[-1]["test_loss"],
        **privacy.summary(),
        "noise_multiplier": config.dp.noise_multiplier if privacy.enabled else None,
        "protocol": config.protocol,
        "rounds": config.rounds,
        "aggregations_completed": sum(1 for m in metrics if not m["aborted"]),
        "num_clients": config.clients.num,
        **({"data_source": f"python ({len(sites)} sites)"} if sites is not None else {}),
        "num_parameters": dim,
        "client_memory_bytes_full_model": full_memory,
        **({"memory_budget": budget.report} if budget is not None else {}),
        "upload_bytes_per_client_mean": float(np.mean(uploads)) if uploads else 0.0,
        "wall_time_s": round(time.perf_counter() - wall_start, 3),
        "virtual_time_s": round(virtual_time, 6),
        "config_sha256": config_hash(config),
        "secure_fl_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if path is not None:
        summary["transcript_sha256"] = transcript.write(path / "transcript.json")
        summary["ledger_entries"] = ledger.next_index
        summary["ledger_head"] = ledger.head
        summary["ledger_public_key"] = PUBLIC_KEY_FILENAME
        torch.save(model.state_dict(), path / "model.pt")
        (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return RunResult(path, metrics, summary, weights, model)
