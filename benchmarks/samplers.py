"""Per-coordinate cost of the exact integer noise samplers, before and after, in one run.

The baseline is ``privacy/samplers.py`` as it stood at a git revision (default: the
commit before the table-driven trials), loaded from ``git show`` into its own module, so
both implementations run side by side on the same machine, with the same CSPRNG, the
same parameters and the same sizes. Parameters are the default job's: the per-client
share of the distributed discrete Gaussian (``sigma^2`` from the calibrated default
configuration, padded dimension 8,192) and the Skellam share with ``mu = sigma^2``.

    .venv/bin/python benchmarks/samplers.py [--baseline-rev REV] [--reps 20]

Median of interleaved repetitions. Prints one row per (sampler, size, implementation)
and JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

from crypto.prg import Csprng
from secure_fl import load_config
from secure_fl.accounting import calibrate_config
from secure_fl.runner import make_aggregator

ROOT = Path(__file__).resolve().parent.parent
BASELINE_REV = "8e4997c"  # the last commit with the loop-per-trial Algorithm 1


def _load_revision(rev: str) -> ModuleType | None:
    try:
        src = subprocess.run(
            ["git", "show", f"{rev}:privacy/samplers.py"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader(f"samplers_{rev}", loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    exec(compile(src, f"{rev}:privacy/samplers.py", "exec"), mod.__dict__)
    return mod


def default_share() -> tuple[Fraction, int]:
    """``(sigma^2, padded dimension)`` of one client's share in the default job."""
    cfg = calibrate_config(load_config(None, []))
    agg = make_aggregator(cfg, dim=4810)
    mech = agg._mechanism(dim=4810, n=cfg.cohort_size)  # type: ignore[union-attr]
    assert mech is not None
    return Fraction(mech.local_variance), int(mech.padded_dim)


def _time_interleaved(calls: dict[str, Any], reps: int) -> dict[str, float]:
    """Median seconds per call of each implementation, timed alternately rep by rep so a
    shared machine's load changes hit all of them alike."""
    for fn in calls.values():
        fn()  # warm-up (tables, caches)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    import privacy.samplers as current

    impls: dict[str, ModuleType] = {"current": current}
    base = _load_revision(args.baseline_rev)
    if base is not None:
        impls[f"baseline {args.baseline_rev}"] = base
    else:
        print(f"baseline revision {args.baseline_rev} not available; timing current only")
    sigma_sq, dim = default_share()
    rows = []
    for size in (dim, 100_000):
        reps = args.reps if size < 50_000 else max(3, args.reps // 5)
        for sampler in ("discrete_gaussian", "skellam"):
            calls = {}
            for name, mod in impls.items():
                rng = Csprng(bytes(32))
                if sampler == "discrete_gaussian":
                    calls[name] = lambda m=mod, r=rng, n=size: m.discrete_gaussian(
                        n, sigma_sq=sigma_sq, rng=r)
                else:
                    calls[name] = lambda m=mod, r=rng, n=size: m.skellam(n, mu=sigma_sq, rng=r)
            for name, sec in _time_interleaved(calls, reps).items():
                rows.append({"sampler": sampler, "size": size, "impl": name,
                             "ms_per_call": round(sec * 1e3, 2),
                             "us_per_coordinate": round(sec / size * 1e6, 3)})
                print(f"{sampler:18s} n={size:7d} {name:18s} {sec * 1e3:8.2f} ms  "
                      f"{sec / size * 1e6:6.3f} us/coordinate", flush=True)
    out = {"sigma_sq": float(sigma_sq), "sigma": float(sigma_sq) ** 0.5, "rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
