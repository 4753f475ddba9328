"""Sweep epsilon x field bits x sparsity on digits with SecAgg+ and distributed DP.

Usage::

    .venv/bin/python examples/privacy_tradeoff/run.py [--out DIR] [--quick]

The same as::

    secure-fl sweep examples/privacy_tradeoff/config.toml \\
        --grid dp.target_epsilon=1,4,16 --grid secagg.bits=10,12,16 \\
        --grid sparsity.kind+sparsity.density=none/1.0,random_k/0.25 \\
        --series secagg.bits --series sparsity.kind --out DIR

(18 runs; resumable: rerun the same command after an interruption). Writes
``DIR/sweep.csv``, ``DIR/accuracy_vs_epsilon.png``, ``DIR/accuracy_vs_upload.png``,
``DIR/accuracy_vs_virtual_time.png`` and one run directory per point. ``--quick`` runs
a 2-point grid with 4 clients and 2 aggregations (a smoke test).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from secure_fl.sweep import sweep

HERE = Path(__file__).resolve().parent

GRID = [
    "dp.target_epsilon=1,4,16",
    "secagg.bits=10,12,16",
    "sparsity.kind+sparsity.density=none/1.0,random_k/0.25",
]
SERIES = ["secagg.bits", "sparsity.kind"]
QUICK_GRID = ["dp.target_epsilon=2,8", "secagg.bits=16"]
QUICK_SET = ["rounds=2", "clients.num=4"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/privacy_tradeoff"))
    parser.add_argument("--quick", action="store_true", help="2 tiny points (smoke test)")
    parser.add_argument("--config", type=Path, default=HERE / "config.toml")
    args = parser.parse_args(argv)
    # The ledger keeps every "fewer survivors than provisioned" warning; do not repeat them.
    warnings.simplefilter("ignore", UserWarning)
    result = sweep(
        args.config,
        QUICK_GRID if args.quick else GRID,
        out_dir=args.out,
        overrides=QUICK_SET if args.quick else [],
        series=["secagg.bits"] if args.quick else SERIES,
    )
    print(f"{'point':<72} {'acc':>6} {'epsilon':>8} {'upload B':>9}")
    for row in result.rows:
        eps = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        print(f"{row['run_dir']:<72} {row['final_accuracy']:>6.3f} {eps:>8} {row['upload_bytes_per_client']:>9.0f}")
    print(f"wrote {result.csv_path} and {', '.join(p.name for p in result.plots)} in {result.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
