"""Finance pilot: fraud detection across 8 banks with distributed DP, judged by
precision, recall and AUC rather than accuracy.

Usage::

    .venv/bin/python examples/finance/run.py [--out DIR] [--rounds N] [--transport flower]

Runs two federated jobs on the same data and seed: a plaintext baseline without DP
(``DIR/baseline/``) and the private configuration of ``config.toml`` (SecAgg+ with the
distributed discrete Gaussian, ``DIR/private/``). Each saved ``model.pt`` is reloaded
and scored on the held-out test split: accuracy, precision, recall and F1 for the fraud
class (1), ROC AUC and average precision (PR AUC), and the accuracy of always saying
"legitimate" (what accuracy alone would hide). Writes ``DIR/metrics.csv`` and
``DIR/metrics.json``.

With ``--transport flower`` the private job runs on a real Flower federation on this
machine (one SuperLink, one SuperNode per bank, TLS;
:func:`secure_fl.transport.flower.local.run_local_federation`), each bank's SuperNode
holding its partition of the synthetic data (:func:`secure_fl.transport.flower.site.write_partition_sites`),
its identity key and its own budget ledger; the plaintext baseline stays in-process
(it has no privacy to deploy).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from secure_fl import load_config, run
from secure_fl.data import load_federated_data
from secure_fl.models import build_model

HERE = Path(__file__).resolve().parent
FRAUD = 1


def score(run_dir: Path) -> dict[str, Any]:
    """Reload ``run_dir``'s model and configuration and score it on the test split."""
    config = load_config(run_dir / "config.toml")
    data = load_federated_data(config)  # deterministic given the seed: same test split
    model = build_model(config.model, data.feature_shape, data.num_classes)
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(data.x_test, dtype=torch.float32))
        prob = torch.softmax(logits, dim=1)[:, FRAUD].numpy()
    y = data.y_test
    pred = (prob >= 0.5).astype(np.int64)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "protocol": summary["protocol"],
        "epsilon": summary["epsilon"],
        "delta": summary["delta"],
        "test_records": int(len(y)),
        "fraud_rate": float(np.mean(y == FRAUD)),
        "accuracy": float(accuracy_score(y, pred)),
        "always_legit_accuracy": float(np.mean(y != FRAUD)),
        "precision": float(precision_score(y, pred, pos_label=FRAUD, zero_division=0)),
        "recall": float(recall_score(y, pred, pos_label=FRAUD, zero_division=0)),
        "f1": float(f1_score(y, pred, pos_label=FRAUD, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, prob)),
        "pr_auc": float(average_precision_score(y, prob, pos_label=FRAUD)),
        "upload_bytes_per_client": summary["upload_bytes_per_client_mean"],
    }


def run_on_flower(config: Any, out: Path) -> dict[str, Any]:
    """The private job on a local Flower federation, one site per simulated bank."""
    from secure_fl.config import to_toml
    from secure_fl.transport.flower.local import run_local_federation
    from secure_fl.transport.flower.site import write_partition_sites

    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "flower-config.toml"
    cfg.write_text(to_toml(config), encoding="utf-8")
    names = [f"bank-{i}" for i in range(config.clients.num)]
    sites = write_partition_sites(config, out / "flower-sites", names=names, require_dp=True)
    num_classes = load_federated_data(config).num_classes
    return run_local_federation(cfg, sites, out / "private", work_dir=out / "flower", num_classes=num_classes,
                                min_threshold=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/finance"))
    parser.add_argument("--rounds", type=int, default=None, help="override the config's rounds")
    parser.add_argument("--config", type=Path, default=HERE / "config.toml")
    parser.add_argument("--transport", choices=("inprocess", "flower"), default="inprocess",
                        help="flower: run the private job with one SuperNode per bank (local TLS federation)")
    args = parser.parse_args(argv)
    extra = [f"rounds={args.rounds}"] if args.rounds else []
    jobs = {
        "baseline": ["protocol=plain", "dp.mechanism=none", *extra],
        "private": extra,
    }
    results: dict[str, dict[str, Any]] = {}
    for name, overrides in jobs.items():
        config = load_config(args.config, overrides)
        if name == "private" and args.transport == "flower":
            run_on_flower(config, args.out)
        else:
            run(config, out_dir=args.out / name, progress=False)
        results[name] = score(args.out / name)
    cols = ["accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"]
    print(f"{'job':>9} {'epsilon':>8} " + " ".join(f"{c:>9}" for c in cols))
    for name, r in results.items():
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        print(f"{name:>9} {eps:>8} " + " ".join(f"{r[c]:>9.4f}" for c in cols))
    any_r = next(iter(results.values()))
    print(
        f"test split: {any_r['test_records']} transactions, {100 * any_r['fraud_rate']:.1f}% fraud; "
        f"always predicting 'legitimate' scores accuracy {any_r['always_legit_accuracy']:.4f}"
    )
    with (args.out / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["job", *next(iter(results.values())).keys()])
        writer.writeheader()
        for name, r in results.items():
            writer.writerow({"job": name, **r})
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'metrics.csv'} and {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
