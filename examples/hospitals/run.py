"""Hospital pilot: record-level DP-SGD at 5 hospitals plus SecAgg+, then an audit.

Usage::

    .venv/bin/python examples/hospitals/run.py [--out DIR] [--rounds N] [--transport flower]

1. Splits scikit-learn's breast-cancer data (569 patients) into 5 hospital CSV files of
   different sizes (34%, 26%, 18%, 14%, 8% of patients) under ``DIR/sites/``.
2. Runs the federated job of ``config.toml`` (SecAgg+, DP-SGD inside each hospital)
   into ``DIR/run/``: in-process (default), or with ``--transport flower`` on a real
   Flower federation on this machine (one SuperLink, one SuperNode per hospital, TLS;
   :func:`secure_fl.transport.flower.local.run_local_federation`): the same engine, each
   hospital's SuperNode holding only its own CSV, identity key and budget ledger.
3. Audits the run: verifies the signed, hash-chained ledger against the server's
   public key and the summary's anchors, writes ``DIR/audit.json``, and runs
   ``secure-fl audit`` for the full report in ``DIR/audit/`` (``audit.json``,
   ``report.html``).
4. Prints accuracy and each hospital's record-level epsilon; writes ``DIR/report.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer

from audits.ledger import LEDGER_FILENAME, PUBLIC_KEY_FILENAME, load_public_key, verify_ledger
from secure_fl import load_config, run

HERE = Path(__file__).resolve().parent
# Opacus's per-sample-gradient hooks make torch warn once per step; not actionable here.
warnings.filterwarnings("ignore", message="Full backward hook is firing")
SHARES = (0.34, 0.26, 0.18, 0.14, 0.08)


def write_sites(out: Path, *, seed: int = 0) -> list[Path]:
    """One CSV per hospital (header of feature names plus ``diagnosis``: 1 = benign)."""
    data = load_breast_cancer()
    x, y = data.data, data.target
    order = np.random.default_rng(seed).permutation(len(y))
    cuts = np.cumsum([round(s * len(y)) for s in SHARES[:-1]])
    names = [re.sub(r"\W+", "_", str(n)).strip("_") for n in data.feature_names]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, idx in enumerate(np.split(order, cuts), start=1):
        path = out / f"hospital_{i}.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*names, "diagnosis"])
            for j in idx:
                writer.writerow([f"{v:.6g}" for v in x[j]] + [int(y[j])])
        paths.append(path)
    return paths


def write_site_files(sites: list[Path], out: Path) -> list[Path]:
    """One Flower site file per hospital CSV (``hospital-<i>``, its own keys directory).

    ``require_dp = false``: the unit of privacy here is the patient record (DP-SGD inside
    each hospital); there is no client-level noise a site could require.
    """
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, csv_path in enumerate(sites, start=1):
        path = out / f"hospital_{i}.toml"
        path.write_text(
            f'[site]\nname = "hospital-{i}"\ndata = "{csv_path.resolve()}"\nlabel_column = "diagnosis"\n'
            f'keys_dir = "keys/hospital-{i}"\nrequire_dp = false\ntest_fraction = 0.25\n'
            f'roster = "roster.toml"\n',
            encoding="utf-8",
        )
        files.append(path)
    return files


def run_on_flower(config: Any, sites: list[Path], out: Path) -> dict[str, Any]:
    """The same job on a local Flower federation (TLS on loopback); returns the summary."""
    from secure_fl.config import to_toml
    from secure_fl.transport.flower.local import run_local_federation

    cfg = out / "flower-config.toml"
    cfg.write_text(to_toml(config), encoding="utf-8")
    files = write_site_files(sites, out / "flower-sites")
    return run_local_federation(cfg, files, out / "run", work_dir=out / "flower", num_classes=2)


def audit(run_dir: Path, summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """Verify the ledger, then run ``secure-fl audit`` for the full report."""
    key = load_public_key(run_dir / PUBLIC_KEY_FILENAME)
    report = verify_ledger(
        run_dir / LEDGER_FILENAME,
        key,
        expected_entries=summary["ledger_entries"],
        expected_head=summary["ledger_head"],
    )
    result: dict[str, Any] = {
        "ledger_ok": report.ok,
        "ledger_entries": report.entries,
        "ledger_head": report.head,
        "problems": [str(p) for p in report.problems],
        "full_audit": None,
    }
    from secure_fl.cli import main as cli

    roster = out / "flower-sites" / "roster.toml"
    extra = ["--roster", str(roster)] if summary.get("transport") == "flower" else []
    status = cli(["audit", str(run_dir), "--out", str(out / "audit"), *extra])
    result["full_audit"] = {"exit_status": status, "dir": str(out / "audit")}
    (out / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/hospitals"))
    parser.add_argument("--rounds", type=int, default=None, help="override the config's rounds")
    parser.add_argument("--config", type=Path, default=HERE / "config.toml")
    parser.add_argument("--transport", choices=("inprocess", "flower"), default="inprocess",
                        help="flower: one SuperNode per hospital on a local TLS federation")
    args = parser.parse_args(argv)
    out: Path = args.out
    if (out / "run" / "summary.json").exists():
        parser.error(f"{out} already holds a finished pilot; choose another --out")
    sites = write_sites(out / "sites")
    overrides = ["data.paths=" + json.dumps([str(p.resolve()) for p in sites])]
    if args.rounds:
        overrides.append(f"rounds={args.rounds}")
    config = load_config(args.config, overrides)
    if args.transport == "flower":
        s = run_on_flower(config, sites, out)
    else:
        s = run(config, out_dir=out / "run", progress=False).summary
    checks = audit(out / "run", s, out)
    sizes = [sum(1 for _ in p.open()) - 1 for p in sites]
    per_site = s.get("epsilon_record_level_per_site", {})
    print(f"{'hospital':>9} {'patients':>9} {'record-level epsilon':>21}")
    for i, n in enumerate(sizes):
        eps = per_site.get(str(i), per_site.get(f"hospital-{i + 1}"))
        print(f"{i + 1:>9} {n:>9} {'-' if eps is None else f'{eps:.2f}':>21}")
    print(
        f"final accuracy {s['final_accuracy']:.4f} (best {s['best_accuracy']:.4f}); "
        f"delta {config.dp.delta:g}; protocol {s['protocol']}"
    )
    print(
        f"audit: ledger {'verified' if checks['ledger_ok'] else 'FAILED'} "
        f"({checks['ledger_entries']} signed entries)"
        + f"; full report in {checks['full_audit']['dir']}"
    )
    report = {
        "final_accuracy": s["final_accuracy"],
        "best_accuracy": s["best_accuracy"],
        "patients_per_hospital": sizes,
        "epsilon_record_level_per_site": per_site,
        "delta": config.dp.delta,
        "audit": checks,
        "run_dir": str(out / "run"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'report.json'} and {out / 'audit.json'}")
    return 0 if checks["ledger_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
