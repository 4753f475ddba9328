"""Write one CSV per pilot site (header row, numeric features, a ``label`` column).

The pilot uses scikit-learn's breast-cancer data split into three uneven, shuffled
parts, standing in for three hospitals' exports::

    python make_site_data.py            # writes data/site_a.csv, site_b.csv, site_c.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer


def write_sites(out_dir: Path, *, seed: int = 0, fractions: tuple[float, ...] = (0.4, 0.35, 0.25)) -> list[Path]:
    data = load_breast_cancer()
    x, y = data.data, data.target
    order = np.random.default_rng(seed).permutation(len(y))
    bounds = np.cumsum([0, *[int(round(f * len(y))) for f in fractions[:-1]], len(y)])
    bounds[-1] = len(y)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    header = [f"f{i}" for i in range(x.shape[1])] + ["label"]
    for name, lo, hi in zip("abc", bounds[:-1], bounds[1:], strict=True):
        path = out_dir / f"site_{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for i in order[lo:hi]:
                writer.writerow([f"{v:.6g}" for v in x[i]] + [int(y[i])])
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "data"))
    for p in write_sites(Path(parser.parse_args().out)):
        print(p)
