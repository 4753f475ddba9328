"""Async defaults out of the box: the default job plus 30% stragglers, sync versus async.

Issue 17: with the default configuration plus ``simulation.stragglers = 0.3`` (DP on and
DP off), ``aggregation.mode = "async"`` must reach the sync run's final accuracy in at
most 1/4 of the sync run's virtual time. Nothing else is changed: the async run uses the
default buffer size and concurrency (see ``aggregation.buffer_size`` in
docs/configuration.md) and the same number of aggregations, so under DP both runs are
calibrated to the same epsilon.

    .venv/bin/python benchmarks/async_defaults.py [--rounds 30] [--extra KEY=VALUE ...]

Prints one row per DP setting and JSON.
"""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

from secure_fl import load_config, run


def time_to(metrics: list[dict[str, Any]], accuracy: float) -> float | None:
    for m in metrics:
        if m["test_accuracy"] >= accuracy:
            return float(m["virtual_time_s"])
    return None


def compare(dp: bool, rounds: int, extra: list[str]) -> dict[str, Any]:
    common = ["simulation.stragglers=0.3", f"rounds={rounds}", *extra]
    if not dp:
        common.append("dp.mechanism=none")
    out: dict[str, Any] = {"dp": dp}
    runs = {}
    for mode in ("sync", "async"):
        cfg = load_config(None, [*common, f"aggregation.mode={mode}"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs[mode] = run(cfg, write=False, progress=False)
        m = runs[mode].metrics
        out[mode] = {
            "final_accuracy": round(m[-1]["test_accuracy"], 4),
            "virtual_time_s": round(m[-1]["virtual_time_s"], 3),
            "wall_time_s": runs[mode].summary["wall_time_s"],
            "epsilon": runs[mode].summary.get("epsilon"),
            "buffer_size": cfg.buffer_size if mode == "async" else None,
            "concurrency": cfg.cohort_size,
        }
    target = out["sync"]["final_accuracy"]
    reached = time_to(runs["async"].metrics, target)
    out["async_time_to_sync_final_s"] = reached
    out["ratio"] = round(reached / out["sync"]["virtual_time_s"], 4) if reached is not None else None
    out["met"] = out["ratio"] is not None and out["ratio"] <= 0.25
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--extra", nargs="*", default=[])
    args = ap.parse_args()
    rows = [compare(dp, args.rounds, args.extra) for dp in (True, False)]
    for r in rows:
        print(f"DP {'on ' if r['dp'] else 'off'}: sync final {r['sync']['final_accuracy']:.4f} at "
              f"{r['sync']['virtual_time_s']:.1f} s; async final {r['async']['final_accuracy']:.4f}, "
              f"reaches sync's final at {r['async_time_to_sync_final_s']} s -> ratio {r['ratio']} "
              f"({'met' if r['met'] else 'missed'})")
    print(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
