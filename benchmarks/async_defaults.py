"""Async defaults out of the box: the default job plus 30% stragglers, sync versus async.

Issue 17: with the default configuration plus ``simulation.stragglers = 0.3`` (DP on and
DP off), ``aggregation.mode = "async"`` must reach the sync run's final accuracy in at
most 1/4 of the sync run's virtual time. Nothing else is changed: the async run uses the
default buffer size, concurrency, staleness bound and run length (``rounds`` unset: the
same number of client updates as the sync run's 30 aggregations, in ceil(30 C / K)
buffers; see docs/configuration.md), so under DP both runs are calibrated to the same
epsilon, each for its own number of aggregations. ``--rounds N`` instead gives both
modes N aggregations. ``--variants`` adds async runs with further overrides
(comma-separated ``KEY=VALUE`` lists; ``default`` is the plain async run) against the
same sync run, and ``--seeds`` repeats everything per seed (the data split, the devices
and, under DP, fresh noise):

    .venv/bin/python benchmarks/async_defaults.py [--rounds 30] [--dp on off]
        [--variants default staleness.max_staleness=2 aggregation.buffer_size=25,server.lr=2]
        [--seeds 0 1 2 3 4]

The ratio is the virtual time at which async first reaches the sync run's (unrounded)
final accuracy over the sync run's total virtual time. Per async run it also reports the
mean virtual time per aggregation and how many aggregations held a straggler among the
updates actually aggregated (the SecAgg exchange lasts until its slowest member has
uploaded). Prints one row per run, a per-variant summary over the seeds, and JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from typing import Any

from secure_fl import load_config, run
from secure_fl.devices import draw_profiles


def time_to(metrics: list[dict[str, Any]], accuracy: float) -> float | None:
    for m in metrics:
        if m["test_accuracy"] >= accuracy:
            return float(m["virtual_time_s"])
    return None


def _run(sets: list[str]) -> tuple[Any, Any]:
    cfg = load_config(None, sets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cfg, run(cfg, write=False, progress=False)


def compare(dp: bool, rounds: int | None, extra: list[str], variants: list[str], seed: int | None) -> dict[str, Any]:
    common = ["simulation.stragglers=0.3", *([f"rounds={rounds}"] if rounds else []), *extra]
    if seed is not None:
        common.append(f"seed={seed}")
    if not dp:
        common.append("dp.mechanism=none")
    out: dict[str, Any] = {"dp": dp, "seed": seed}
    cfg, sync = _run([*common, "aggregation.mode=sync"])
    sm = sync.metrics
    out["sync"] = {"final_accuracy": round(sm[-1]["test_accuracy"], 4),
                   "virtual_time_s": round(sm[-1]["virtual_time_s"], 3),
                   "wall_time_s": sync.summary["wall_time_s"], "epsilon": sync.summary.get("epsilon")}
    target = float(sm[-1]["test_accuracy"])  # unrounded: ties count as reached
    profiles = draw_profiles(cfg.clients.num, cfg.simulation, seed=cfg.seed)
    out["async"] = []
    for variant in variants:
        sets = [] if variant == "default" else [s for s in variant.split(",") if s]
        acfg, res = _run([*common, "aggregation.mode=async", *sets])
        m = res.metrics
        reached = time_to(m, target)
        with_straggler = sum(1 for r in m if any(profiles[c].straggler for c in r["survivors"]))
        ratio = round(reached / out["sync"]["virtual_time_s"], 4) if reached is not None else None
        out["async"].append({
            "variant": variant,
            "buffer_size": acfg.buffer_size,
            "concurrency": acfg.cohort_size,
            "aggregations": len(m),
            "max_staleness": acfg.max_staleness,
            "final_accuracy": round(m[-1]["test_accuracy"], 4),
            "best_accuracy": round(max(r["test_accuracy"] for r in m), 4),
            "virtual_time_s": round(m[-1]["virtual_time_s"], 3),
            "s_per_aggregation": round(m[-1]["virtual_time_s"] / len(m), 3),
            "aggregations_with_a_straggler": with_straggler,
            "rejected_stale": sum(len(r["rejected_stale"]) for r in m),
            "wall_time_s": res.summary["wall_time_s"],
            "epsilon": res.summary.get("epsilon"),
            "time_to_sync_final_s": reached,
            "ratio": ratio,
            "met": bool(ratio is not None and ratio <= 0.25),
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None,
                    help="aggregations in both modes (default: each mode's default run length)")
    ap.add_argument("--dp", nargs="*", choices=("on", "off"), default=["on", "off"])
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for both modes")
    ap.add_argument("--variants", nargs="*", default=["default"], help="async-only override sets")
    ap.add_argument("--seeds", nargs="*", type=int, default=None,
                    help="run each comparison once per seed (the data split, devices and, without "
                    "reproducible noise, fresh DP noise all change); default: the config's seed")
    args = ap.parse_args()
    seeds = args.seeds or [None]
    rows = []
    for dp in args.dp:
        for seed in seeds:
            r = compare(dp == "on", args.rounds, args.extra, args.variants, seed)
            rows.append(r)
            _print(r)
    if len(seeds) > 1:
        for dp in args.dp:
            for variant in args.variants:
                ratios = [a["ratio"] for r in rows if r["dp"] == (dp == "on")
                          for a in r["async"] if a["variant"] == variant]
                met = sum(1 for x in ratios if x is not None and x <= 0.25)
                known = sorted(x if x is not None else math.inf for x in ratios)
                print(f"DP {dp:3} [{variant}]: met in {met} of {len(ratios)} seeds; median ratio "
                      f"{known[len(known) // 2]}; ratios {ratios}")
    print(json.dumps(rows, default=str))


def _print(r: dict[str, Any]) -> None:
    s = r["sync"]
    print(f"DP {'on ' if r['dp'] else 'off'} seed {r['seed']}: sync final {s['final_accuracy']:.4f} at "
          f"{s['virtual_time_s']:.1f} s (epsilon {s['epsilon']})", flush=True)
    for a in r["async"]:
        print(f"  async [{a['variant']}] K={a['buffer_size']} max_staleness={a['max_staleness']} "
              f"{a['aggregations']} aggregations (epsilon {a['epsilon']}): "
              f"final {a['final_accuracy']:.4f} (best {a['best_accuracy']:.4f}), "
              f"{a['virtual_time_s']:.2f} s ({a['s_per_aggregation']:.3f} s/aggregation, "
              f"{a['aggregations_with_a_straggler']} with a straggler), reaches sync's final at "
              f"{a['time_to_sync_final_s']} s -> ratio {a['ratio']} ({'met' if a['met'] else 'missed'})",
              flush=True)


if __name__ == "__main__":
    main()
