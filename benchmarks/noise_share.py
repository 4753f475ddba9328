"""Share of the default job's round time spent sampling the exact DP noise, in one run.

Issue 17: noise sampling at most 10% of the default job's round time. The default job
(secagg + distributed discrete Gaussian, 100 clients, every client in every round) is run
for ``--rounds`` aggregations, and every call of the mechanism's sampler
(``_DistributedMechanism._sample_noise``: :func:`privacy.samplers.discrete_gaussian` for
one client's padded share) is timed where it runs, in the worker processes or in this
one. The wrapper writes each call's duration into shared memory created before the
workers fork, so nothing is sent between processes. With ``c`` clients per round the
calls ``[c (r - 1), c r)`` belong to round ``r`` (no dropout in the default job), and

    share_r = (sum of round r's sampling seconds) / (round r's wall seconds x P)

with ``P = 1`` for ``workers = 1`` (everything in this process) and ``P = workers`` for
the pool (sampling seconds are CPU seconds spread over ``P`` processes; the share of the
round's available compute). Round 1 (calibration, forking, warm-up) is excluded; the
median over steady rounds is reported. With ``workers = 1`` the same share is also
computed in CPU time, which other processes' load does not inflate: the sampling calls'
thread CPU seconds over this process's CPU clock from one round's first sampling call to
the next round's (one whole round cycle; the last round has no next and is skipped).

    .venv/bin/python benchmarks/noise_share.py [--rounds 6] [--workers 1 2]
    .venv/bin/python benchmarks/noise_share.py --baseline-rev REV [--repeat 2]  # old samplers too

``--baseline-rev`` also times the same job with ``privacy/samplers.py`` taken from a git
revision (loaded from ``git show``, swapped in for the mechanism), so the share before and
after a sampler change is measured side by side (``--repeat``: alternately, so a shared
machine's load changes hit both). Prints rows and JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

_CAPACITY = 1 << 16


def measure(rounds: int, workers: int, samplers_mod: Any | None = None) -> dict[str, Any]:
    import privacy.mechanisms.distributed as dist
    from secure_fl import load_config, run

    durations = mp.Array("d", _CAPACITY, lock=False)
    cpu_durations = mp.Array("d", _CAPACITY, lock=False)  # thread CPU seconds of each call
    cpu_stamps = mp.Array("d", _CAPACITY, lock=False)  # process CPU clock at each call's start
    count = mp.Value("q", 0, lock=True)
    mech_cls = dist._DistributedMechanism
    original = {cls: cls.__dict__["_sample_noise"] for cls in mech_cls.__subclasses__()
                if "_sample_noise" in cls.__dict__}

    def timed(inner: Any) -> Any:
        def wrapper(self: Any, size: int, rng: Any) -> Any:
            stamp = time.process_time()
            cpu_start = time.thread_time()
            start = time.perf_counter()
            out = inner(self, size, rng)
            elapsed = time.perf_counter() - start
            cpu = time.thread_time() - cpu_start
            with count.get_lock():
                i = count.value
                count.value += 1
            if i < _CAPACITY:
                durations[i] = elapsed
                cpu_durations[i] = cpu
                cpu_stamps[i] = stamp
            return out
        return wrapper

    saved_dg, saved_sk = dist.discrete_gaussian, dist.skellam
    try:
        if samplers_mod is not None:
            dist.discrete_gaussian = samplers_mod.discrete_gaussian  # type: ignore[attr-defined]
            dist.skellam = samplers_mod.skellam  # type: ignore[attr-defined]
        for cls, fn in original.items():
            cls._sample_noise = timed(fn)
        cfg = load_config(None, [f"rounds={rounds}", f"simulation.workers={workers}"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = run(cfg, write=False, progress=False)
    finally:
        for cls, fn in original.items():
            cls._sample_noise = fn
        dist.discrete_gaussian, dist.skellam = saved_dg, saved_sk
    calls = int(count.value)
    per_round = cfg.cohort_size
    walls = [0.0] + [m["wall_time_s"] for m in result.metrics]
    rows = []
    for r in range(1, len(walls)):
        wall = walls[r] - walls[r - 1]
        sampling = sum(durations[(r - 1) * per_round : min(r * per_round, calls, _CAPACITY)])
        row = {"round": r, "wall_s": round(wall, 3), "sampling_s": round(sampling, 3),
               "share": round(sampling / (wall * workers), 4)}
        first, nxt = (r - 1) * per_round, r * per_round
        if workers == 1 and nxt < min(calls, _CAPACITY):
            # CPU clock from round r's first sampling call to round r+1's: one whole round
            # cycle of this process's CPU, unaffected by other processes' load.
            cycle = cpu_stamps[nxt] - cpu_stamps[first]
            row["cpu_cycle_s"] = round(cycle, 3)
            row["cpu_share"] = round(sum(cpu_durations[first:nxt]) / cycle, 4)
        rows.append(row)
    steady = rows[1:] or rows
    return {
        "workers": workers,
        "calls": calls,
        "expected_calls": per_round * len(result.metrics),
        "rounds": rows,
        "steady_round_s": round(statistics.median(r["wall_s"] for r in steady), 3),
        "steady_sampling_s": round(statistics.median(r["sampling_s"] for r in steady), 3),
        "steady_share": round(statistics.median(r["share"] for r in steady), 4),
        "steady_cpu_share": (round(statistics.median(r["cpu_share"] for r in steady if "cpu_share" in r), 4)
                             if any("cpu_share" in r for r in steady) else None),
        "final_accuracy": result.summary["final_accuracy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--baseline-rev", default=None,
                    help="also run with privacy/samplers.py from this git revision")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the implementations alternately this many times each")
    args = ap.parse_args()
    impls: list[tuple[str, Any]] = [("current", None)]
    if args.baseline_rev:
        from samplers import _load_revision  # benchmarks/samplers.py

        base = _load_revision(args.baseline_rev)
        if base is None:
            raise SystemExit(f"revision {args.baseline_rev} not available")
        impls.append((f"baseline {args.baseline_rev}", base))
    out = []
    for w in args.workers:
        for name, mod in impls * args.repeat:
            res = measure(args.rounds, w, mod)
            res["samplers"] = name
            out.append(res)
            print(f"workers={w} samplers={name}: steady round {res['steady_round_s']:.3f} s, "
                  f"sampling {res['steady_sampling_s']:.3f} s -> share {100 * res['steady_share']:.1f}% "
                  f"(CPU share {res['steady_cpu_share']}) "
                  f"(calls {res['calls']}/{res['expected_calls']})", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
