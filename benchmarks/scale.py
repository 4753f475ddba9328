"""Simulation at research scale (issue 17): each case measured, a few rounds each.

Cases (each run in its own subprocess, so peak memory is the case's own):

* ``clients1k``  -- 1,000 clients on synthetic tabular data, sync, SecAgg+ with the
  distributed discrete Gaussian (epsilon 8), 10% dropout, every client in every round;
* ``clients10k`` -- 10,000 clients, ``clients.per_round = 1,000``, same protocol;
* ``cnn1m``      -- a CNN with d ~ 1.0M parameters on image-shaped synthetic data
  (1x28x28, 10 classes), 100 clients, SecAgg+ (no DP: the case measures the protocol
  and training at that size);
* ``server_memory`` -- peak memory allocated by the SecAgg+ server code
  (``crypto/secagg/server.py``, tracemalloc) during one round at d = 1M, for n = 25, 50,
  100 clients: O(d), not O(n d).

    .venv/bin/python benchmarks/scale.py [--cases clients1k,clients10k,cnn1m,server_memory]
        [--rounds 3] [--workers N] [--json out.json]

Per case: wall time per round (mean of the rounds after the first, which includes
start-up and worker forking), peak RSS of the parent and of the largest worker, upload
and download bytes per client per round, and test accuracy after the last round.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CASES = ("clients1k", "clients10k", "cnn1m", "server_memory")

_DDG = ["protocol=secagg", "dp.mechanism=discrete_gaussian", "dp.target_epsilon=8.0",
        "dp.clip=0.5", "secagg.bits=32"]
_SYNTH = ["data.dataset=synthetic", "data.synthetic.num_features=20", "data.synthetic.num_classes=2",
          "model.kind=mlp", "model.hidden=[64]", "train.local_epochs=1", "train.lr=0.1"]


def _overrides(case: str, rounds: int, workers: int | None) -> list[str]:
    base = [f"rounds={rounds}", *([f"simulation.workers={workers}"] if workers else [])]
    if case == "clients1k":
        return [*base, *_SYNTH, *_DDG, "clients.num=1000", "data.synthetic.num_samples=40000",
                "simulation.dropout=0.1"]
    if case == "clients10k":
        return [*base, *_SYNTH, *_DDG, "clients.num=10000", "clients.per_round=1000",
                "data.synthetic.num_samples=200000", "simulation.dropout=0.1"]
    if case == "cnn1m":
        return [*base, "data.dataset=synthetic", "data.synthetic.image=true", "data.synthetic.num_classes=10",
                "data.synthetic.num_samples=6000", "clients.num=100", "protocol=secagg",
                "dp.mechanism=none", "train.local_epochs=1", "train.lr=0.05",
                "train.batch_size=32"]
    raise ValueError(case)


def cnn_1m(feature_shape: tuple[int, ...], num_classes: int) -> Any:
    """conv(1->32) pool conv(32->64) pool, linear 3136->320, linear 320->C: d = 1,025,578
    for 10 classes."""
    import torch
    from torch import nn

    c, h, w = feature_shape

    class Reshape(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], c, h, w)

    return nn.Sequential(
        Reshape(),
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 320), nn.ReLU(),
        nn.Linear(320, num_classes),
    )


def _peak_rss_mib() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(own, 1), round(kids, 1)


def run_case(case: str, rounds: int, workers: int | None) -> dict[str, Any]:
    import warnings

    from secure_fl import load_config, run

    cfg = load_config(None, _overrides(case, rounds, workers))
    model_fn = cnn_1m if case == "cnn1m" else None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run(cfg, write=False, progress=False, model_fn=model_fn)
    wall = time.perf_counter() - start
    walls = [m["wall_time_s"] for m in res.metrics]
    steady = [b - a for a, b in zip(walls, walls[1:], strict=False)] or walls
    own, kids = _peak_rss_mib()
    m = res.metrics
    return {
        "case": case,
        "clients": cfg.clients.num,
        "per_round": cfg.cohort_size,
        "d": res.summary["num_parameters"],
        "rounds": len(m),
        "workers": workers or "default",
        "first_round_s": round(walls[0], 2),
        "wall_per_round_s": round(sum(steady) / len(steady), 2),
        "total_wall_s": round(wall, 1),
        "peak_rss_parent_mib": own,
        "peak_rss_worker_mib": kids,
        "upload_bytes_per_client": round(sum(x["upload_bytes_per_client"] for x in m) / len(m)),
        "download_bytes_per_client": round(
            sum(x["download_bytes"] / max(1, len(x["cohort"])) for x in m) / len(m)),
        "survivors_last_round": len(m[-1]["survivors"]),
        "test_accuracy": round(m[-1]["test_accuracy"], 4),
        "epsilon": res.summary.get("epsilon"),
    }


class _ServerProbe:
    """Observer of the masked uploads: every ~n/10 uploads, the bytes currently held by
    allocations made in ``crypto/secagg/server.py`` (tracemalloc snapshot)."""

    _filter = (tracemalloc.Filter(True, "*crypto/secagg/server.py"),)

    def __init__(self, n: int) -> None:
        self.n, self.calls, self.peak = n, 0, 0

    def observe(self, _sender: int, _masked: Any) -> None:
        self.calls += 1
        if self.calls % max(1, self.n // 10) == 0 or self.calls == self.n:
            snap = tracemalloc.take_snapshot().filter_traces(self._filter)
            self.peak = max(self.peak, sum(s.size for s in snap.statistics("filename")))


def server_memory(dims: int = 1_000_000, ns: tuple[int, ...] = (25, 50, 100)) -> dict[str, Any]:
    """Peak bytes held by allocations made in ``crypto/secagg/server.py`` during a round."""
    import numpy as np

    from crypto.secagg import default_neighbors, simulate_round
    from crypto.secagg.graph import effective_degree

    rows = []
    for n in ns:
        rng = np.random.default_rng(n)  # inputs only (simulation data, not privacy noise)
        inputs = [rng.integers(0, 1 << 32, dims, dtype=np.uint64).astype(np.uint32) for _ in range(n)]
        k = default_neighbors(n)
        neighbors = None if k >= n - 1 else k
        t = (effective_degree(n, neighbors) + 1) // 2 + 1
        probe = _ServerProbe(n)
        tracemalloc.start(1)
        start = time.perf_counter()
        res = simulate_round(inputs, bits=32, threshold=t, neighbors=neighbors, seed=n,
                             observer=probe.observe)
        elapsed = time.perf_counter() - start
        tracemalloc.stop()
        expected = np.zeros(dims, dtype=np.uint64)
        for x in inputs:
            expected += x
        ok = bool(np.array_equal(np.asarray(res.total, dtype=np.uint64), expected & np.uint64(0xFFFFFFFF)))
        rows.append({"n": n, "d": dims, "server_peak_mib": round(probe.peak / 2**20, 2),
                     "d_times_4_bytes_mib": round(4 * dims / 2**20, 2),
                     "n_d_times_4_bytes_mib": round(4 * n * dims / 2**20, 1),
                     "round_s_traced": round(elapsed, 1), "sum_correct": ok})
        del inputs
    return {"case": "server_memory", "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # run one case in-process
    args = ap.parse_args(argv)
    if args.one:
        out = server_memory() if args.one == "server_memory" else run_case(
            args.one, args.rounds, args.workers)
        print(json.dumps(out))
        return 0
    results = []
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--one", case, "--rounds", str(args.rounds)]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{case}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            results.append({"case": case, "error": proc.stderr[-500:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
