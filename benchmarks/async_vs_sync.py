"""Semi-asynchronous buffered aggregation versus synchronous rounds with stragglers.

The async target: with 30% stragglers (10x slower), ``async`` reaches the target
accuracy in at most 1/4 of the virtual time ``sync`` needs, and final accuracy is within
1 point. Both modes run in one process on the same data, seed and device profiles.

    .venv/bin/python benchmarks/async_vs_sync.py [--quick] [--protocol plain|secagg] [--out DIR]

Prints a table and JSON; writes ``async_vs_sync.png`` (accuracy against virtual time).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from secure_fl import load_config, run  # noqa: E402


def time_to_target(metrics: list[dict[str, Any]], target: float) -> float | None:
    for m in metrics:
        if m["test_accuracy"] >= target:
            return float(m["virtual_time_s"])
    return None


def run_benchmark(
    *, protocol: str = "plain", target: float = 0.90, rounds: int = 40, clients: int = 20,
    stragglers: float = 0.3, slowdown: float = 10.0, seed: int = 0, extra: list[str] | None = None,
    buffer_size: int | None = None, concurrency: int | None = None,
) -> dict[str, Any]:
    per_round = concurrency or (3 * clients) // 4
    k = buffer_size or max(2, clients // 4)
    sync_cohort = clients // 2
    common = [
        "dp.mechanism=none", "train.local_epochs=1", "dp.clip=100.0",
        f"protocol={protocol}", f"clients.num={clients}",
        f"simulation.stragglers={stragglers}", f"simulation.straggler_slowdown={slowdown}",
        "train.lr=0.1", f"seed={seed}", *(extra or []),
    ]
    out: dict[str, Any] = {"target_accuracy": target, "protocol": protocol, "stragglers": stragglers,
                           "slowdown": slowdown, "clients": clients, "concurrency": per_round,
                           "buffer_size": k}
    curves = {}
    for mode, n_rounds in (("sync", rounds), ("async", 2 * rounds)):
        overrides = [*common, f"aggregation.mode={mode}", f"rounds={n_rounds}"]
        if mode == "sync":
            overrides.append(f"clients.per_round={sync_cohort}")
        else:
            overrides.append(f"clients.per_round={per_round}")
        if mode == "async":
            overrides += [f"aggregation.buffer_size={k}", "staleness.fn=polynomial", "staleness.a=0.5"]
        result = run(load_config(None, overrides), write=False, progress=False)
        m = result.metrics
        curves[mode] = ([x["virtual_time_s"] for x in m], [x["test_accuracy"] for x in m])
        out[mode] = {
            "aggregations": n_rounds,
            "time_to_target_s": time_to_target(m, target),
            "final_accuracy": m[-1]["test_accuracy"],
            "virtual_time_s": m[-1]["virtual_time_s"],
            "wall_time_s": result.summary["wall_time_s"],
        }
    ts, ta = out["sync"]["time_to_target_s"], out["async"]["time_to_target_s"]
    out["time_ratio_async_over_sync"] = (ta / ts) if ts and ta else None
    out["final_accuracy_gap_points"] = 100 * (out["sync"]["final_accuracy"] - out["async"]["final_accuracy"])
    out["_curves"] = curves
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--protocol", default="plain", choices=["plain", "secagg", "ckks"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    res = run_benchmark(protocol=args.protocol, rounds=15 if args.quick else 40)
    curves = res.pop("_curves")
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, (t, a) in curves.items():
        ax.plot(t, a, marker=".", label=mode)
    ax.axhline(res["target_accuracy"], color="grey", linestyle=":", label="target")
    ax.set_xscale("log")
    ax.set_xlabel("virtual time (s, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"digits, {res['clients']} clients, {int(100 * res['stragglers'])}% stragglers "
                 f"{res['slowdown']:.0f}x slower ({res['protocol']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "async_vs_sync.png", dpi=120)
    print(f"{'mode':>6} {'aggs':>5} {'t_target_s':>11} {'final_acc':>9} {'virtual_s':>10}")
    for mode in ("sync", "async"):
        r = res[mode]
        tt = "n/a" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.2f}"
        print(f"{mode:>6} {r['aggregations']:>5} {tt:>11} {r['final_accuracy']:>9.4f} {r['virtual_time_s']:>10.2f}")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
