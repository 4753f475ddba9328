"""End to end against Flower: the default job's per-round time versus Flower's simulation
engine running the equivalent job, in one run (issue 17).

Ours: ``secure-fl``'s default job (100 clients holding scikit-learn digits, MLP 64-64-10
with d = 4,810, 2 local epochs of SGD lr 0.1 batch 32, every client in every round,
SecAgg+ in a 32-bit field with the distributed discrete Gaussian, client-level epsilon 8
against the server over 30 aggregations, ``simulation.workers`` = usable cores), run by
:func:`secure_fl.run`.

Flower (``flwr.simulation.run_simulation``, Ray backend, ``num_cpus = 1`` per ClientApp,
so as many ClientApps in parallel as cores), on the *same* 100 clients' data
(:func:`secure_fl.data.load_federated_data` of the default configuration), the same model
(:func:`secure_fl.models.build_model`) and the same local training
(:func:`secure_fl.training.train_local`, one torch thread per process), FedAvg over all 100
clients per round, no evaluation rounds:

* ``flower_plain``: ``DefaultWorkflow()``, FedAvg;
* ``flower_secaggplus``: ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=21,
  reconstruction_threshold=11))``, ``secaggplus_mod`` on the client;
* ``flower_secaggplus_dp``: the same around ``DifferentialPrivacyClientSideFixedClipping(
  FedAvg, noise_multiplier=z, clipping_norm=0.5, num_sampled_clients=100)`` with ``z``
  our calibrated noise multiplier, client mods ``[secaggplus_mod, fixedclipping_mod]``
  (clipping runs inside, before masking). Flower's guarantee here is weaker than ours:
  the Gaussian noise is added by the server to the unmasked aggregate (the server sees the
  un-noised sum), floating point, and SecAgg+ is semi-honest only.

Round time: the time between consecutive ``aggregate_fit`` calls on the server (steady
rounds: round 1 includes Ray start-up and the first model broadcast) and, for ours, the
differences of the per-aggregation ``wall_time_s``. Local training: the seconds spent in
``train_local`` per round in our run (timed where it runs, in the worker processes, via
shared memory; summed over workers), and :func:`local_training`: our ``train_local`` versus
a bare torch loop (same model, data, optimizer and batches, no framework) over the same
100 clients, alternately in this process with one torch thread.

    .venv/bin/python benchmarks/flower_e2e.py [--rounds 3] [--only ours,flower_plain,...]

Prints one row per variant and JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
import warnings
from typing import Any

import numpy as np

VARIANTS = ("ours", "flower_plain", "flower_secaggplus", "flower_secaggplus_dp")


def _steady(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


# -- ours ------------------------------------------------------------------------------
def run_ours(rounds: int) -> dict[str, Any]:
    import secure_fl.client_jobs as client_jobs

    import secure_fl.training as training
    from secure_fl import load_config, run

    spent = mp.Value("d", 0.0, lock=True)
    marks: list[float] = []
    original = training.train_local

    def timed(*args: Any, **kwargs: Any) -> int:
        start = time.perf_counter()
        out = original(*args, **kwargs)
        with spent.get_lock():
            spent.value += time.perf_counter() - start
        return out

    targets = [m for m in (training, client_jobs) if getattr(m, "train_local", None) is original]
    cfg = load_config(None, [f"rounds={rounds}"])
    for m in targets:
        m.train_local = timed  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = run(cfg, write=False, progress=False)
    finally:
        for m in targets:
            m.train_local = original  # type: ignore[attr-defined]
    marks = [0.0] + [m["wall_time_s"] for m in result.metrics]
    steady = _steady(marks)[1:]
    return {
        "round_s": [round(x, 3) for x in _steady(marks)],
        "steady_round_s": round(statistics.median(steady), 3),
        "train_local_s_per_round": round(spent.value / rounds, 3),
        "final_accuracy": result.summary["final_accuracy"],
        "epsilon": result.summary.get("epsilon"),
        "workers": cfg.simulation.workers or len(os.sched_getaffinity(0)),
    }


# -- local training: ours versus a bare torch loop ------------------------------------------
def local_training(reps: int = 5) -> dict[str, Any]:
    """The default job's 100 local trainings, :func:`secure_fl.training.train_local` (with
    the weights loaded by :func:`secure_fl.models.set_flat`, as a client job does) against
    a plain torch loop (same model, data, optimizer, epochs and batch size), timed
    alternately rep by rep in this process with one torch thread; minimum over reps."""
    import torch
    from torch import nn

    from secure_fl import load_config
    from secure_fl.data import load_federated_data
    from secure_fl.models import build_model, get_flat, set_flat
    from secure_fl.training import train_local

    cfg = load_config(None, [])
    data = load_federated_data(cfg)
    model = build_model(cfg.model, data.feature_shape, data.num_classes)
    flat = get_flat(model)
    init = [p.detach().clone() for p in model.parameters()]

    def ours(rep: int) -> None:
        for cid, client in enumerate(data.clients):
            set_flat(model, flat)
            train_local(model, client.x_train, client.y_train, cfg.train, seed=rep * 1000 + cid)

    def bare(rep: int) -> None:
        for cid, client in enumerate(data.clients):
            with torch.no_grad():
                for p, w in zip(model.parameters(), init, strict=True):
                    p.copy_(w)
            opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
            xt, yt = torch.from_numpy(client.x_train), torch.from_numpy(client.y_train)
            gen = torch.Generator().manual_seed(rep * 1000 + cid)
            for _ in range(cfg.train.local_epochs):
                perm = torch.randperm(yt.shape[0], generator=gen)
                for s in range(0, yt.shape[0], cfg.train.batch_size):
                    idx = perm[s : s + cfg.train.batch_size]
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
                    opt.step()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours(-1)
            bare(-1)  # warm-up
            for rep in range(reps):
                for name, fn in (("ours", ours), ("bare", bare)):
                    start = time.perf_counter()
                    fn(rep)
                    times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    best = {k: min(v) for k, v in times.items()}
    return {"ours_s": round(best["ours"], 3), "bare_s": round(best["bare"], 3),
            "ratio": round(best["ours"] / best["bare"], 2),
            "reps_s": {k: [round(t, 3) for t in v] for k, v in times.items()}}


# -- Flower ----------------------------------------------------------------------------
def run_flower(variant: str, rounds: int, noise_multiplier: float) -> dict[str, Any]:
    import torch
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import fixedclipping_mod, secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    from secure_fl import load_config
    from secure_fl.data import load_federated_data
    from secure_fl.models import build_model, get_flat, set_flat
    from secure_fl.training import train_local

    cfg = load_config(None, [])
    data = load_federated_data(cfg)
    num_clients = len(data.clients)

    def new_model() -> Any:
        torch.set_num_threads(1)
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, data.feature_shape, data.num_classes)

    init = get_flat(new_model())

    class Client(NumPyClient):  # type: ignore[misc]
        def __init__(self, cid: int) -> None:
            self.cid = cid
            self.model = new_model()

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            set_flat(self.model, parameters[0])
            client = data.clients[self.cid]
            seed = int(config.get("server_round", 0)) * 1000 + self.cid
            train_local(self.model, client.x_train, client.y_train, cfg.train, seed=seed)
            return [get_flat(self.model)], client.num_train, {}

    def client_fn(context: Context) -> Any:
        cid = int(context.node_config["partition-id"])
        return Client(cid).to_client()

    mods: list[Any] = []
    if variant in ("flower_secaggplus", "flower_secaggplus_dp"):
        mods.append(secaggplus_mod)
    if variant == "flower_secaggplus_dp":
        mods.append(fixedclipping_mod)
    client_app = ClientApp(client_fn=client_fn, mods=mods)

    ends: list[float] = []

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            out = super().aggregate_fit(server_round, results, failures)
            ends.append(time.perf_counter())
            if failures:
                print(f"  round {server_round}: {len(failures)} failures", flush=True)
            return out

    server_app = ServerApp()
    started: list[float] = []

    @server_app.main()  # type: ignore[misc]
    def main(grid: Any, context: Context) -> None:
        started.append(time.perf_counter())
        strategy: Any = TimedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=num_clients,
            min_available_clients=num_clients,
            initial_parameters=ndarrays_to_parameters([init]),
            on_fit_config_fn=lambda r: {"server_round": r},
        )
        if variant == "flower_secaggplus_dp":
            strategy = DifferentialPrivacyClientSideFixedClipping(
                strategy,
                noise_multiplier=noise_multiplier,
                clipping_norm=cfg.dp.clip,
                num_sampled_clients=num_clients,
            )
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        fit_workflow = (
            SecAggPlusWorkflow(num_shares=21, reconstruction_threshold=11)
            if variant != "flower_plain"
            else None
        )
        workflow = DefaultWorkflow(fit_workflow=fit_workflow) if fit_workflow else DefaultWorkflow()
        workflow(grid, legacy)

    cores = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": cores, "include_dashboard": False}},
    )
    total = time.perf_counter() - t0
    rounds_s = _steady(started[:1] + ends)
    steady = rounds_s[1:] or rounds_s
    return {
        "round_s": [round(x, 3) for x in rounds_s],
        "steady_round_s": round(statistics.median(steady), 3) if steady else None,
        "rounds_completed": len(ends),
        "total_s": round(total, 1),
        "client_apps_in_parallel": cores,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(VARIANTS))
    args = ap.parse_args()
    from secure_fl import load_config
    from secure_fl.accounting import calibrate_config

    z = float(calibrate_config(load_config(None, [])).dp.noise_multiplier)
    out: dict[str, Any] = {"rounds": args.rounds, "noise_multiplier": z}
    chosen = [v for v in args.only.split(",") if v]
    for v in chosen:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    for v in chosen:
        res = run_ours(args.rounds) if v == "ours" else run_flower(v, args.rounds, z)
        out[v] = res
        print(f"{v:22s} steady round {res['steady_round_s']} s  (rounds {res['round_s']})", flush=True)
    out["local_training"] = local_training()
    lt = out["local_training"]
    print(f"100 local trainings, one thread: train_local {lt['ours_s']} s, bare torch loop "
          f"{lt['bare_s']} s ({lt['ratio']}x)", flush=True)
    if "ours" in out:
        ours = out["ours"]["steady_round_s"]
        out["speedup_vs"] = {v: round(out[v]["steady_round_s"] / ours, 2)
                             for v in chosen if v != "ours" and out[v]["steady_round_s"]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
