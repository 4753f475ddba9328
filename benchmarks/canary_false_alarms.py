"""False-alarm rate and detection rate of the audit's canary test (issue 16, section 2).

The only part of ``secure-fl audit`` whose verdict can change between two audits of one
unchanged run directory is the canary test: every other check is a deterministic
function of the files. So this script makes a few small honest runs once and calls, many
times over, exactly what the audit calls (:func:`audits.audit.canary_check`, with the
secure-fl replay that ``secure-fl audit`` passes in, fresh canary directions and fresh
re-run noise each time):

* honest runs: the embedded default cut to 5 aggregations (100 clients, all in every
  aggregation: the case the issue reported, where the released model leaks nearly as
  much as the accountant allows), and 10 clients with 5 per aggregation;
* a broken run: the first honest run audited while the distributed discrete Gaussian
  sampler returns zeros, so the code still claims (and the ledger of the re-run still
  records) the noise, but none is added.

    .venv/bin/python benchmarks/canary_false_alarms.py [--audits 30] [--broken 20]
        [--sizes quick|default] [--json PATH] [--quick]

``--quick`` (development) audits each run 3 times. Prints a table; writes JSON to
``--json`` (default ``benchmarks/results/canary_false_alarms.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from audits.audit import canary_check
from audits.empirical import EmpiricalSizes
from privacy.mechanisms.distributed import DistributedDiscreteGaussian
from secure_fl import load_config, run
from secure_fl.audit_rerun import RunReplay

HONEST = {
    "default, 5 aggregations (100 clients, q = 1)": ["rounds=5"],
    "10 clients, 5 per aggregation, 8 aggregations (q = 0.5)": ["clients.num=10", "clients.per_round=5", "rounds=8"],
}


def _audit_many(run_dir: Path, count: int, sizes: EmpiricalSizes, *, broken: bool) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    replay = RunReplay(run_dir)
    outcomes = []
    start = time.perf_counter()
    patch: contextlib.AbstractContextManager[Any] = (
        mock.patch.object(DistributedDiscreteGaussian, "_sample_noise",
                          lambda self, size, rng: np.zeros(size, dtype=np.int64))
        if broken else contextlib.nullcontext()
    )
    with patch:
        for i in range(count):
            r = canary_check(replay, summary, sizes=sizes)
            outcomes.append(
                {"flagged": r.flagged, "estimate": r.epsilon, "lower_bound": r.lower, "claimed": r.claimed_epsilon,
                 "rerun_bound": r.rerun_bound}
            )
            print(f"  audit {i + 1}/{count}: estimate {r.epsilon:.3g}, {r.bound.confidence:.0%} lower bound "
                  f"{r.lower:.3g}, re-run bound {r.rerun_bound:.3g} -> {'FAIL' if r.flagged else 'pass'}", flush=True)
    failed = sum(o["flagged"] for o in outcomes)
    estimates = [o["estimate"] for o in outcomes]
    limit = [min(x for x in (o["claimed"], o["rerun_bound"]) if x is not None and math.isfinite(x)) for o in outcomes]
    return {
        "audits": count,
        "failed": failed,
        "fail_rate": failed / count,
        "point_estimate_above_limit": sum(e > lim for e, lim in zip(estimates, limit, strict=True)),
        "estimate_min": min(estimates),
        "estimate_max": max(estimates),
        "lower_bound_max": max(o["lower_bound"] for o in outcomes),
        "claimed_epsilon": outcomes[0]["claimed"],
        "rerun_bound": outcomes[0]["rerun_bound"],
        "seconds_per_audit": (time.perf_counter() - start) / count,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audits", type=int, default=30, help="audits of each honest run")
    p.add_argument("--broken", type=int, default=20, help="audits of the broken run")
    p.add_argument("--sizes", choices=("quick", "default"), default="quick", help="audit --quick or default sizes")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "canary_false_alarms.json")
    p.add_argument("--quick", action="store_true", help="3 audits per run (development)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    n_honest, n_broken = (3, 3) if args.quick else (args.audits, args.broken)
    sizes = EmpiricalSizes.quick() if args.sizes == "quick" else EmpiricalSizes()
    results: dict[str, Any] = {"sizes": args.sizes, "confidence": None, "honest": {}, "broken": {}}
    with tempfile.TemporaryDirectory(prefix="canary-fa-") as tmp:
        runs = {}
        for i, (name, overrides) in enumerate(HONEST.items()):
            print(f"honest run: {name}", flush=True)
            out = Path(tmp) / f"run{i}"
            run(load_config(None, overrides), out_dir=out, progress=False)
            runs[name] = out
        for name, out in runs.items():
            print(f"auditing {name} x {n_honest}", flush=True)
            results["honest"][name] = _audit_many(out, n_honest, sizes, broken=False)
        first = next(iter(HONEST))
        print(f"auditing the broken run (noise claimed, absent) x {n_broken}", flush=True)
        results["broken"][first + ", noise claimed but absent"] = _audit_many(runs[first], n_broken, sizes, broken=True)
    from audits.empirical import CANARY_CONFIDENCE

    results["confidence"] = CANARY_CONFIDENCE
    honest_total = sum(r["audits"] for r in results["honest"].values())
    honest_failed = sum(r["failed"] for r in results["honest"].values())
    broken_total = sum(r["audits"] for r in results["broken"].values())
    broken_failed = sum(r["failed"] for r in results["broken"].values())
    results["summary"] = {
        "honest_audits": honest_total, "honest_failed": honest_failed,
        "broken_audits": broken_total, "broken_failed": broken_failed,
    }
    print()
    print(f"{'run':<72} {'audits':>6} {'failed':>6} {'est>limit':>9} {'estimates':>13} {'s/audit':>7}")
    for kind in ("honest", "broken"):
        for name, r in results[kind].items():
            print(f"{name:<72} {r['audits']:>6} {r['failed']:>6} {r['point_estimate_above_limit']:>9} "
                  f"{r['estimate_min']:>6.2f}-{r['estimate_max']:<6.2f} {r['seconds_per_audit']:>7.1f}")
    print(f"\nhonest: {honest_failed} of {honest_total} audits failed ({honest_failed / honest_total:.1%}); "
          f"broken: {broken_failed} of {broken_total} failed ({broken_failed / broken_total:.0%}); "
          f"decision: {CANARY_CONFIDENCE:.0%} one-sided lower confidence bound, {sizes.canaries_seen} seen / "
          f"{sizes.canaries_unseen} unseen canaries")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
