"""``secure-fl bench``: the performance benchmarks (benchmarks/RESULTS.md), one table of figures vs targets.

Runs the benchmark scripts of the repository's ``benchmarks/`` directory (SecAgg+ against
the AES-CTR keystream bound and Flower's SecAgg+, CKKS against NVFlare's parameters,
semi-async against synchronous rounds with stragglers, plus the upload of a 90%-sparse
secure aggregation) and prints one table of measured figures, the target of each and
whether it is met, followed by the full JSON.

    secure-fl bench [--quick] [--only secagg,ckks,async] [--json PATH|-] [--no-flower]

``--quick`` is a laptop size (a couple of minutes on 2 cores): ratios at small d are
dominated by fixed costs and are indicative only; the targets are defined at the full
size (n = 100, d = 1M), which is the default. Every ratio is measured side by side in
one process on the same machine.

``benchmarks/`` is not part of the installed distribution: it is loaded by path from
the source checkout this package was imported from (or from ``--repo`` /
``$SECURE_FL_REPO``). Outside a checkout the command fails with
:class:`BenchmarksNotFoundError`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from secure_fl.errors import SecureFLError

__all__ = [
    "BENCHMARKS",
    "SIZES",
    "BenchmarksNotFoundError",
    "TargetRow",
    "bench_main",
    "find_repo_root",
    "format_table",
    "load_benchmark",
    "run_benchmarks",
]

BENCHMARKS = ("secagg", "ckks", "async")

#: Sizes of each benchmark. ``quick`` must finish in under 3 minutes on 2 cores.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "secagg": {"n": 50, "d": 500_000, "dropout": 0.1, "bits": 32},
        "sparse": {"hidden": [256], "clients": 10, "density": 0.1},
        "ckks": {"d_values": (1_000_000,), "n": 2},
        "async": {"rounds": 30},
    },
    "full": {
        "secagg": {"n": 100, "d": 1_000_000, "dropout": 0.1, "bits": 32},
        "sparse": {"hidden": [1024], "clients": 20, "density": 0.1},
        "ckks": {"d_values": (100_000, 1_000_000), "n": 10},
        "async": {"rounds": 40},
    },
}

#: Per-neighbour allowance for the O(n) part of a SecAgg+ upload (encrypted Shamir
#: shares, keys, signature); the target states the bound as d * b / 8 + O(n).
OVERHEAD_PER_NEIGHBOUR_B = 256


class BenchmarksNotFoundError(SecureFLError):
    """The ``benchmarks/`` directory of a source checkout cannot be found."""


@dataclass(frozen=True)
class TargetRow:
    """One line of the table: a measured figure against its target (benchmarks/RESULTS.md)."""

    benchmark: str
    measure: str
    measured: str
    target: str
    status: str  # "met" | "missed" | "n/a"


# --------------------------------------------------------------------------- loading


def find_repo_root(explicit: str | Path | None = None) -> Path:
    """The source checkout holding ``benchmarks/``: ``explicit``, ``$SECURE_FL_REPO``, or
    the parent of the directory this package was imported from."""
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit))
    elif os.environ.get("SECURE_FL_REPO"):
        candidates.append(Path(os.environ["SECURE_FL_REPO"]))
    else:
        candidates.append(Path(__file__).resolve().parents[1])
    for root in candidates:
        if all((root / "benchmarks" / f"{name}.py").is_file() for name in ("secagg", "ckks", "async_vs_sync")):
            return root.resolve()
    raise BenchmarksNotFoundError(
        f"benchmarks/ not found under {candidates[0]}: `secure-fl bench` runs the scripts of a "
        "source checkout (git clone, then `pip install -e .`); pass --repo PATH or set "
        "SECURE_FL_REPO to a checkout"
    )


def load_benchmark(name: str, root: Path) -> ModuleType:
    """Import ``benchmarks/<name>.py`` of ``root`` by path (it is not an installed package)."""
    path = root / "benchmarks" / f"{name}.py"
    module_name = f"_secure_fl_bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BenchmarksNotFoundError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[module_name]
        raise
    return module


def _flower_available() -> bool:
    return importlib.util.find_spec("flwr") is not None


# --------------------------------------------------------------------------- measuring


def _sparse_upload(size: dict[str, Any]) -> dict[str, Any]:
    """Mean SecAgg+ upload per client of one aggregation, dense vs random-k at density."""
    from secure_fl import load_config, run

    common = [
        "protocol=secagg", "dp.mechanism=none", "rounds=1", "data.dataset=digits",
        f"clients.num={size['clients']}", f"model.hidden={json.dumps(size['hidden'])}",
        "secagg.bits=32",
    ]
    out: dict[str, Any] = {"density": size["density"], "clients": size["clients"]}
    for label, extra in (
        ("dense", ["sparsity.kind=none"]),
        ("sparse", ["sparsity.kind=random_k", f"sparsity.density={size['density']}"]),
    ):
        res = run(load_config(None, [*common, *extra]), write=False, progress=False)
        out[f"{label}_upload_bytes"] = res.summary["upload_bytes_per_client_mean"]
        out["num_parameters"] = res.summary["num_parameters"]
        out[f"{label}_trained_parameters"] = res.metrics[-1]["client_trained_parameters"]
    return out


def _run_secagg(root: Path, size: dict[str, Any], *, flower: bool) -> dict[str, Any]:
    mod = load_benchmark("secagg", root)
    res: dict[str, Any] = mod.run(**size, flower=flower)
    return res


def _run_ckks(root: Path, size: dict[str, Any]) -> dict[str, Any]:
    mod = load_benchmark("ckks", root)
    res: dict[str, Any] = mod.run(size["d_values"], size["n"])
    return res


def _run_async(root: Path, size: dict[str, Any]) -> dict[str, Any]:
    mod = load_benchmark("async_vs_sync", root)
    # The async target's comparison is about scheduling: plaintext aggregation without DP.
    res: dict[str, Any] = mod.run_benchmark(
        protocol="plain", rounds=size["rounds"], extra=["dp.mechanism=none"]
    )
    res.pop("_curves", None)
    return res


def run_benchmarks(
    *,
    quick: bool = False,
    only: Sequence[str] = BENCHMARKS,
    flower: bool = True,
    repo: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the selected benchmarks; returns the raw figures, target rows and timings."""
    unknown = [b for b in only if b not in BENCHMARKS]
    if unknown:
        raise BenchmarksNotFoundError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    root = find_repo_root(repo)
    sizes = SIZES["quick" if quick else "full"]
    say = log or (lambda _m: None)
    flower = flower and _flower_available()
    result: dict[str, Any] = {
        "size": "quick" if quick else "full",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "repo": str(root),
        "seconds": {},
    }
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    if "secagg" in only:
        steps.append(("secagg", lambda: _run_secagg(root, sizes["secagg"], flower=flower)))
        steps.append(("sparse", lambda: _sparse_upload(sizes["sparse"])))
    if "ckks" in only:
        steps.append(("ckks", lambda: _run_ckks(root, sizes["ckks"])))
    if "async" in only:
        steps.append(("async", lambda: _run_async(root, sizes["async"])))
    for name, fn in steps:
        say(f"bench: running {name} ({result['size']} size) ...")
        t0 = time.perf_counter()
        result[name] = fn()
        result["seconds"][name] = round(time.perf_counter() - t0, 2)
    result["targets"] = [asdict(r) for r in target_rows(result)]
    return result


# --------------------------------------------------------------------------- targets


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "missed")


def _secagg_rows(s: dict[str, Any]) -> list[TargetRow]:
    size = f"n={s['n']}, d={s['d']:,}, {int(100 * s['dropout'])}% dropout"
    rows = [
        TargetRow(
            "secagg", f"client masking ({size})",
            f"{1e3 * s['client_masking_s']:.1f} ms = {s['client_ratio']:.2f}x keystream bound "
            f"({1e3 * s['client_bound_s']:.1f} ms at {s['keystream_GBps']:.2f} GB/s)",
            "<= 2x bound", _status(s["client_ratio"] <= 2.0),
        ),
        TargetRow(
            "secagg", "server time for the round",
            f"{1e3 * s['server_s']:.0f} ms = {s['server_ratio']:.2f}x bound of "
            f"{s['server_masks']} regenerated masks ({1e3 * s['server_bound_s']:.0f} ms)",
            "<= 2x bound", _status(s["server_ratio"] <= 2.0),
        ),
    ]
    if "speedup_vs_flower" in s:
        rows.append(TargetRow(
            "secagg", "whole round vs Flower SecAgg+",
            f"{s['round_s']:.2f} s vs {s['flower_round_s']:.2f} s = {s['speedup_vs_flower']:.1f}x faster",
            ">= 10x faster", _status(s["speedup_vs_flower"] >= 10.0),
        ))
    else:
        rows.append(TargetRow(
            "secagg", "whole round vs Flower SecAgg+", f"{s['round_s']:.2f} s (Flower not run: "
            "pip install 'secure-fl[flower]')", ">= 10x faster", "n/a",
        ))
    allowance = OVERHEAD_PER_NEIGHBOUR_B * s["neighbors"]
    rows.append(TargetRow(
        "secagg", "upload per client",
        f"{s['upload_bytes_per_client']:,.0f} B = d*b/8 + {s['upload_overhead_bytes']:,.0f} B "
        f"({s['upload_overhead_bytes'] / max(1, s['neighbors']):.0f} B per neighbour)",
        f"<= d*b/8 + O(n) ({OVERHEAD_PER_NEIGHBOUR_B} B/neighbour)",
        _status(s["upload_overhead_bytes"] <= allowance),
    ))
    rows.append(TargetRow(
        "secagg", "result equals the numpy sum of survivors", str(s["correct"]), "True",
        _status(bool(s["correct"])),
    ))
    return rows


def _sparse_rows(p: dict[str, Any]) -> list[TargetRow]:
    dense, sparse = p["dense_upload_bytes"], p["sparse_upload_bytes"]
    d = p["num_parameters"]
    overhead = max(0.0, dense - d * 4)  # 32-bit field: 4 bytes per coordinate
    bound = dense / 10 + overhead
    return [TargetRow(
        "secagg", f"upload at {int(100 * (1 - p['density']))}% sparsity (d={d:,}, random_k)",
        f"{sparse:,.0f} B vs dense {dense:,.0f} B = {dense / sparse:.1f}x less",
        "<= dense/10 + O(n)", _status(sparse <= bound * 1.001),
    )]


def _ckks_rows(c: dict[str, Any]) -> list[TargetRow]:
    rows: list[TargetRow] = []
    ours = [r for r in c["rows"] if r["params"] == "secure-fl"]
    nvf = {r["d"]: r for r in c["rows"] if r["params"] == "nvflare"}
    for r in ours:
        ref = nvf.get(r["d"])
        ref_txt = f" (NVFlare {ref['bytes_per_param']:.1f})" if ref else ""
        rows.append(TargetRow(
            "ckks", f"bytes per parameter (d={r['d']:,}, n={r['n']})",
            f"{r['bytes_per_param']:.2f}{ref_txt}", "<= 33", _status(r["bytes_per_param"] <= 33),
        ))
    big = max(ours, key=lambda r: r["d"]) if ours else None
    if big is not None:
        per_million = big["encrypt_s"] * 1_000_000 / big["d"]
        how = "measured" if big["d"] == 1_000_000 else f"extrapolated from d={big['d']:,}"
        rows.append(TargetRow(
            "ckks", "encrypt 1M parameters (one client)", f"{per_million:.3f} s ({how})",
            "<= 0.6 s", _status(per_million <= 0.6),
        ))
        worst = max(r["max_rel_err"] for r in ours)
        rows.append(TargetRow(
            "ckks", "aggregate error / update scale", f"{worst:.1e}", "<= 1e-6", _status(worst <= 1e-6),
        ))
    return rows


def _async_rows(a: dict[str, Any]) -> list[TargetRow]:
    ratio = a.get("time_ratio_async_over_sync")
    sync_t, async_t = a["sync"]["time_to_target_s"], a["async"]["time_to_target_s"]
    if ratio is None:
        measured = f"target {a['target_accuracy']:.2f} not reached (sync {sync_t}, async {async_t})"
    else:
        measured = f"async {async_t:.2f} s / sync {sync_t:.2f} s = {ratio:.3f}"
    gap = float(a["final_accuracy_gap_points"])
    return [
        TargetRow(
            "async", f"virtual time to {a['target_accuracy']:.0%} accuracy, "
            f"{int(100 * a['stragglers'])}% stragglers {a['slowdown']:.0f}x slower",
            measured, "<= 1/4 of sync", _status(None if ratio is None else ratio <= 0.25),
        ),
        TargetRow(
            "async", "final accuracy, sync minus async",
            f"{gap:+.2f} points (sync {a['sync']['final_accuracy']:.4f}, async {a['async']['final_accuracy']:.4f})",
            "<= 1 point", _status(gap <= 1.0),
        ),
    ]


def target_rows(result: dict[str, Any]) -> list[TargetRow]:
    """The table rows for whichever benchmarks ``result`` holds."""
    rows: list[TargetRow] = []
    if "secagg" in result:
        rows += _secagg_rows(result["secagg"])
    if "sparse" in result:
        rows += _sparse_rows(result["sparse"])
    if "ckks" in result:
        rows += _ckks_rows(result["ckks"])
    if "async" in result:
        rows += _async_rows(result["async"])
    if "secagg" in result:
        rows.append(TargetRow(
            "secagg", "server memory O(d), not O(n*d)",
            "streaming accumulator (not measured by bench)", "O(d)", "n/a",
        ))
    return rows


def format_table(rows: Sequence[TargetRow | dict[str, Any]]) -> str:
    """A Markdown table of the target rows."""
    dicts = [asdict(r) if isinstance(r, TargetRow) else dict(r) for r in rows]
    cols = ("benchmark", "measure", "measured", "target", "status")
    widths = {c: max([len(c), *(len(str(d[c])) for d in dicts)]) for c in cols}
    lines = [
        "| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |",
        "|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|",
    ]
    for d in dicts:
        lines.append("| " + " | ".join(str(d[c]).ljust(widths[c]) for c in cols) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="secure-fl bench",
        description="Run the performance benchmarks (benchmarks/RESULTS.md); print measured figures vs targets "
        "(and write the JSON result with --json PATH).",
    )
    p.add_argument("--quick", action="store_true", help="laptop size (< 3 minutes on 2 cores); ratios indicative only")
    p.add_argument(
        "--only", default=",".join(BENCHMARKS), metavar="LIST",
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)",
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the JSON result to PATH ('-' for stdout); the table is always printed")
    p.add_argument("--no-flower", action="store_true", help="skip the Flower SecAgg+ comparison")
    p.add_argument("--repo", type=Path, default=None, help="source checkout holding benchmarks/ (default: this one)")
    return p


def bench_main(argv: Sequence[str] | None = None) -> int:
    """``secure-fl bench``: exit 0 when it ran (targets missed are reported, not errors),
    2 on usage errors or outside a checkout, 1 when a benchmark computed a wrong sum."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    t0 = time.perf_counter()
    try:
        result = run_benchmarks(
            quick=args.quick, only=only, flower=not args.no_flower, repo=args.repo,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except BenchmarksNotFoundError as err:
        print(f"secure-fl bench: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("secure-fl bench: interrupted", file=sys.stderr)
        return 130
    result["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    print(format_table(result["targets"]))
    if args.quick:
        print(
            "\nquick size: fixed per-round costs dominate at small d, so ratios are indicative; "
            "the targets are defined at the full size (run without --quick)."
        )
    print(f"\nwall time: {result['seconds']['total']:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in result['seconds'].items() if k != 'total')})")
    if args.json is not None:
        text = json.dumps(result, indent=2, default=float)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text + "\n", encoding="utf-8")
            print(f"JSON result: {args.json}")
    correct = result.get("secagg", {}).get("correct", True)
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(bench_main())
