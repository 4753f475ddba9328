"""Centralized training versus FedAvg on the four partitions of digits.

Usage::

    .venv/bin/python examples/noniid_digits/run.py [--out DIR] [--rounds N]

Writes ``DIR/noniid_digits.csv`` (one row per partition and round) and
``DIR/noniid_digits.png`` (test accuracy against rounds, with the centralized model as
a horizontal line).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from secure_fl import load_config, run  # noqa: E402
from secure_fl.data import load_federated_data  # noqa: E402
from secure_fl.models import build_model  # noqa: E402
from secure_fl.training import evaluate, train_local  # noqa: E402

HERE = Path(__file__).resolve().parent
PARTITIONS = ("iid", "dirichlet", "dominant_class", "one_class")


def centralized_accuracy(config_path: Path, epochs: int) -> float:
    """Train the same model on the pooled training data of all clients."""
    config = load_config(config_path)
    data = load_federated_data(config)
    x = np.concatenate([c.x_train for c in data.clients])
    y = np.concatenate([c.y_train for c in data.clients])
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.feature_shape, data.num_classes)
    train_local(model, x, y, config.train.model_copy(update={"local_epochs": epochs}), seed=config.seed)
    return evaluate(model, data.x_test, data.y_test).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/noniid_digits"))
    parser.add_argument("--rounds", type=int, default=None, help="override the config's rounds")
    parser.add_argument("--config", type=Path, default=HERE / "config.toml")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    extra = [f"rounds={args.rounds}"] if args.rounds else []
    curves: dict[str, list[float]] = {}
    for partition in PARTITIONS:
        config = load_config(args.config, [f"data.partition={partition}", *extra])
        result = run(config, write=False, progress=False)
        curves[partition] = [m["test_accuracy"] for m in result.metrics]
        print(f"{partition:>15}: final {curves[partition][-1]:.4f}  best {max(curves[partition]):.4f}")
    rounds = len(next(iter(curves.values())))
    central = centralized_accuracy(args.config, epochs=rounds)
    print(f"{'centralized':>15}: {central:.4f} ({rounds} epochs on pooled data)")
    with (args.out / "noniid_digits.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["partition", "round", "test_accuracy"])
        for partition, accs in curves.items():
            writer.writerows([partition, r + 1, f"{a:.6f}"] for r, a in enumerate(accs))
        writer.writerow(["centralized", rounds, f"{central:.6f}"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for partition, accs in curves.items():
        ax.plot(range(1, len(accs) + 1), accs, label=f"FedAvg {partition}")
    ax.axhline(central, color="black", linestyle="--", label="centralized")
    ax.set_xlabel("round (aggregation)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("digits, 10 clients: FedAvg under four partitions")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out / "noniid_digits.png", dpi=120)
    print(f"wrote {args.out / 'noniid_digits.csv'} and {args.out / 'noniid_digits.png'}")


if __name__ == "__main__":
    main()
