"""Parallel clients: the default job with ``simulation.workers`` = 1 versus 2, in one run.

Issue 17 acceptance: the default job's round time with 2 workers at least 1.7x faster
than with 1 on this 2-core machine, with identical metrics under
``simulation.reproducible_noise = true``; and ``make run`` (the default job, 30
aggregations, as the command line runs it) at least 2x faster than before the change.
"Before" is measured side by side: ``--baseline-rev`` (default: the commit before the
worker pool and the single torch thread) is exported with ``git archive`` to a temporary
directory and its ``secure-fl run`` timed as a subprocess, like the current tree's.

    .venv/bin/python benchmarks/workers.py [--rounds 30] [--baseline-rev REV | --no-baseline]

Prints the figures and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASELINE_REV = "8e4997c"


def _steady_round_s(metrics: list[dict[str, Any]]) -> float:
    walls = [m["wall_time_s"] for m in metrics]
    steps = [b - a for a, b in zip(walls, walls[1:], strict=False)]
    return sum(steps) / len(steps) if steps else walls[0]


def in_process(rounds: int) -> dict[str, Any]:
    from secure_fl import load_config, run

    out: dict[str, Any] = {}
    results = {}
    for w in (1, 2):
        cfg = load_config(None, [f"rounds={rounds}", f"simulation.workers={w}",
                                 "simulation.reproducible_noise=true"])
        start = time.perf_counter()
        results[w] = run(cfg, write=False, progress=False)
        out[f"workers={w}"] = {"wall_s": round(time.perf_counter() - start, 2),
                               "round_s": round(_steady_round_s(results[w].metrics), 3),
                               "final_accuracy": results[w].summary["final_accuracy"]}
    def strip(ms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in m.items() if k != "wall_time_s"} for m in ms]
    out["identical_metrics"] = strip(results[1].metrics) == strip(results[2].metrics)
    out["identical_weights"] = bool((results[1].weights == results[2].weights).all())
    out["round_speedup"] = round(out["workers=1"]["round_s"] / out["workers=2"]["round_s"], 2)
    return out


def cli_run(src: Path, sets: list[str]) -> float:
    """Wall seconds of ``secure-fl run --quiet`` of the tree at ``src`` (fresh process)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "secure_fl.cli", "run", "--quiet", "--out", f"{tmp}/run"]
        for s in sets:
            cmd += ["--set", s]
        env = {**os.environ, "PYTHONPATH": str(src)}
        start = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, env=env, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"rounds": args.rounds}
    out["in_process"] = in_process(args.rounds)
    print(json.dumps(out["in_process"]), flush=True)
    sets = [f"rounds={args.rounds}"]
    out["make_run_s"] = {}
    for name, extra in (("current (default workers)", []), ("current, workers=1",
                                                             ["simulation.workers=1"])):
        out["make_run_s"][name] = round(cli_run(ROOT, [*sets, *extra]), 1)
        print(name, out["make_run_s"][name], "s", flush=True)
    if not args.no_baseline:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "archive", args.baseline_rev], cwd=ROOT,
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            out["make_run_s"][f"baseline {args.baseline_rev}"] = round(cli_run(Path(tmp), sets), 1)
    runs = out["make_run_s"]
    cur = runs["current (default workers)"]
    out["make_run_speedup_vs_workers1"] = round(runs["current, workers=1"] / cur, 2)
    if f"baseline {args.baseline_rev}" in runs:
        out["make_run_speedup_vs_baseline"] = round(runs[f"baseline {args.baseline_rev}"] / cur, 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
