"""Data sets and deterministic client partitions.

Sources: scikit-learn's bundled ``digits`` (8x8 images, 10 classes) and
``breast_cancer`` (569 patients, binary), a ``synthetic`` generator (tabular or 1x28x28
image-shaped, optionally class-imbalanced) and ``csv`` (one CSV or NPZ file per site).

Partitions (the four distributions of the classic non-IID FedAvg study, McMahan et al.
2017; Hsu et al. 2019), deterministic given the seed:

* ``iid``: a uniform random split into near-equal parts.
* ``dirichlet``: for every class, proportions over clients ~ Dir(alpha) (Hsu et al.).
* ``dominant_class``: client i holds ``dominant_fraction`` of its data from class
  ``i mod C`` and the rest from the other classes.
* ``one_class``: client i holds only class ``i mod C`` (clients sharing a class split it).

Every training sample is assigned to exactly one client. A global test set is held out
before partitioning; each client keeps ``client_test_fraction`` of its own share as a
personal test split (for personalization metrics). numpy's generator is fine here: data
partitioning is simulation, not privacy-relevant randomness.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from secure_fl.config import DataConfig, RunConfig
from secure_fl.errors import ConfigError, DataError

__all__ = [
    "ClientData",
    "FederatedData",
    "load_federated_data",
    "partition_indices",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ClientData:
    """One client's local data: a training split and a personal test split."""

    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])


@dataclass(frozen=True)
class FederatedData:
    """All clients' data plus the global held-out test set."""

    clients: tuple[ClientData, ...]
    x_test: FloatArray
    y_test: IntArray
    feature_shape: tuple[int, ...]
    num_classes: int
    name: str

    @property
    def num_features(self) -> int:
        return int(np.prod(self.feature_shape))


# -- sources -------------------------------------------------------------------------
def _load_digits() -> tuple[FloatArray, IntArray, tuple[int, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    return x, bunch.target.astype(np.int64), (1, 8, 8)


def _load_breast_cancer() -> tuple[FloatArray, IntArray, tuple[int, ...]]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64), (bunch.data.shape[1],)


def synthetic_dataset(
    *,
    num_samples: int,
    num_features: int,
    num_classes: int,
    image: bool,
    imbalance: float,
    seed: int,
) -> tuple[FloatArray, IntArray, tuple[int, ...]]:
    """Generate a learnable synthetic data set.

    Class priors are proportional to ``[1, imbalance, imbalance, ...]`` (``imbalance`` < 1
    makes classes 1..C-1 rare, e.g. fraud). Tabular rows come from
    :func:`sklearn.datasets.make_classification`; images (1x28x28) are a smooth random
    prototype per class plus a random shift and pixel noise.
    """
    rng = np.random.default_rng(seed)
    priors = np.array([1.0] + [imbalance] * (num_classes - 1))
    priors /= priors.sum()
    if not image:
        from sklearn.datasets import make_classification

        x, y = make_classification(
            n_samples=num_samples,
            n_features=num_features,
            n_informative=max(2, num_features // 2),
            n_redundant=min(2, num_features // 4),
            n_classes=num_classes,
            n_clusters_per_class=1 if num_classes > 4 else 2,
            weights=list(priors) if num_classes > 1 else None,
            class_sep=1.2,
            random_state=int(rng.integers(2**31)),
        )
        return x.astype(np.float32), y.astype(np.int64), (num_features,)
    side = 28
    y = rng.choice(num_classes, size=num_samples, p=priors).astype(np.int64)
    grid = np.linspace(-1, 1, side)
    gx, gy = np.meshgrid(grid, grid)
    protos = np.empty((num_classes, side, side), dtype=np.float32)
    for c in range(num_classes):
        img = np.zeros((side, side))
        for _ in range(3):  # three Gaussian blobs per class
            cx, cy = rng.uniform(-0.6, 0.6, size=2)
            img += np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / 0.08)
        protos[c] = img / img.max()
    x = protos[y]
    shifts = rng.integers(-2, 3, size=(num_samples, 2))
    for i, (dx, dy) in enumerate(shifts):
        x[i] = np.roll(np.roll(x[i], dx, axis=0), dy, axis=1)
    x = x + rng.normal(0, 0.3, size=x.shape).astype(np.float32)
    return x.reshape(num_samples, 1, side, side).astype(np.float32), y, (1, side, side)


def _read_site_file(path: Path, label_column: str) -> tuple[FloatArray, IntArray]:
    """Read one site's CSV (header row, numeric columns) or NPZ (arrays ``x`` and ``y``)."""
    if not path.is_file():
        raise DataError(f"site data file not found: {path}")
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "x" not in npz or "y" not in npz:
                    raise DataError(f"{path}: an NPZ site file must hold arrays 'x' and 'y'")
                x, y = np.asarray(npz["x"]), np.asarray(npz["y"])
        except (ValueError, OSError) as err:
            raise DataError(f"{path}: not a readable NPZ file ({err})") from None
        if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(f"{path}: 'x' must be (n, features...) and 'y' (n,), got {x.shape}, {y.shape}")
        if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.number):
            raise DataError(f"{path}: 'x' and 'y' must be numeric")
        return x.astype(np.float32), _as_labels(y.astype(np.float64), path, label_column)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read CSV ({err})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: a site CSV needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(f"{path}: label column {label_column!r} not found (columns: {', '.join(header)})")
    label_idx = header.index(label_column)
    values = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {r}: expected {len(header)} fields, found {len(row)}")
        for c, cell in enumerate(row):
            try:
                values[r - 2, c] = float(cell)
            except ValueError:
                raise DataError(
                    f"{path}, line {r}, column {header[c]!r}: non-numeric value {cell!r}"
                ) from None
    if not np.all(np.isfinite(values)):
        raise DataError(f"{path}: contains NaN or infinite values")
    y = values[:, label_idx]
    x = np.delete(values, label_idx, axis=1).astype(np.float32)
    return x, _as_labels(y, path, label_column)


def _as_labels(y: npt.NDArray[np.float64], path: Path, label_column: str) -> IntArray:
    if np.any(y != np.round(y)) or np.any(y < 0):
        raise DataError(f"{path}: labels in {label_column!r} must be non-negative integers")
    return y.astype(np.int64)


# -- partitions ----------------------------------------------------------------------
def partition_indices(
    labels: IntArray,
    *,
    num_clients: int,
    scheme: str,
    rng: np.random.Generator,
    alpha: float = 0.5,
    dominant_fraction: float = 0.9,
) -> list[IntArray]:
    """Split sample indices among clients; every index lands in exactly one client."""
    n = labels.shape[0]
    classes = np.unique(labels)
    if num_clients > n:
        raise ConfigError(f"{num_clients} clients but only {n} training samples", field="clients.num")
    if scheme == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]
    if scheme == "dirichlet":
        return _dirichlet(labels, classes, num_clients, alpha, rng)
    if scheme == "one_class":
        return _one_class(labels, classes, num_clients, rng)
    if scheme == "dominant_class":
        return _dominant_class(labels, classes, num_clients, dominant_fraction, rng)
    raise ConfigError(f"unknown partition {scheme!r}", field="data.partition")


def _dirichlet(
    labels: IntArray, classes: IntArray, k: int, alpha: float, rng: np.random.Generator
) -> list[IntArray]:
    min_size = min(2, labels.shape[0] // k)
    for _ in range(1000):  # redraw until every client has at least `min_size` samples
        parts: list[list[int]] = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(props) * idx.size).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"could not draw a Dirichlet({alpha}) partition giving every client data; "
        "increase data.alpha or reduce clients.num",
        field="data.alpha",
    )


def _one_class(
    labels: IntArray, classes: IntArray, k: int, rng: np.random.Generator
) -> list[IntArray]:
    if k < classes.size:
        raise ConfigError(
            f"one_class needs at least as many clients ({k}) as classes ({classes.size}) "
            "so that every sample is assigned",
            field="data.partition",
        )
    parts: list[IntArray] = [np.empty(0, dtype=np.int64)] * k
    for ci, c in enumerate(classes):
        owners = [i for i in range(k) if i % classes.size == ci]
        idx = rng.permutation(np.flatnonzero(labels == c))
        for owner, chunk in zip(owners, np.array_split(idx, len(owners)), strict=True):
            parts[owner] = np.sort(chunk.astype(np.int64))
    return parts


def _dominant_class(
    labels: IntArray, classes: IntArray, k: int, frac: float, rng: np.random.Generator
) -> list[IntArray]:
    n = labels.shape[0]
    sizes = [len(p) for p in np.array_split(np.arange(n), k)]
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    parts: list[list[int]] = [[] for _ in range(k)]
    dominant = [int(classes[i % classes.size]) for i in range(k)]
    # Dominant quotas first (clients sharing a class draw from the same pool in turn).
    for i in rng.permutation(k):
        quota = min(int(round(frac * sizes[i])), len(pools[dominant[i]]))
        parts[i] = [pools[dominant[i]].pop() for _ in range(quota)]
    # Fill the rest from other classes, round-robin over the fullest pools.
    for i in rng.permutation(k):
        need = sizes[i] - len(parts[i])
        others = [c for c in pools if c != dominant[i]]
        while need > 0 and any(pools[c] for c in others):
            for c in sorted(others, key=lambda c: -len(pools[c])):
                if need == 0:
                    break
                if pools[c]:
                    parts[i].append(pools[c].pop())
                    need -= 1
    # Whatever is left (only when quotas could not be met) goes to the smallest clients.
    leftover = [idx for pool in pools.values() for idx in pool]
    for idx in leftover:
        smallest = min(range(k), key=lambda j: len(parts[j]))
        parts[smallest].append(idx)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# -- assembly ------------------------------------------------------------------------
def _split(
    x: FloatArray, y: IntArray, frac: float, rng: np.random.Generator
) -> tuple[FloatArray, IntArray, FloatArray, IntArray]:
    """Stratified-ish random split: ``frac`` of the samples go to the test side."""
    if frac <= 0 or y.shape[0] < 2:
        return x, y, x[:0], y[:0]
    perm = rng.permutation(y.shape[0])
    n_test = min(max(1, int(round(frac * y.shape[0]))), y.shape[0] - 1)
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def load_federated_data(config: RunConfig) -> FederatedData:
    """Load the configured data set, hold out a test set and partition the rest."""
    dc: DataConfig = config.data
    rng = np.random.default_rng([config.seed, 0xDA7A])
    k = config.clients.num
    if dc.dataset == "csv":
        sites = [_read_site_file(Path(p), dc.label_column) for p in dc.paths]
        shapes = {s[0].shape[1:] for s in sites}
        if len(shapes) != 1:
            raise DataError(f"site files disagree on the number of features: {sorted(shapes)}")
        feature_shape = tuple(int(v) for v in shapes.pop())
        num_classes = int(max(int(s[1].max()) for s in sites) + 1)
        if num_classes < 2:
            raise DataError("site files contain a single class; nothing to learn")
        parts_xy = []
        test_x, test_y = [], []
        for x, y in sites:
            xtr, ytr, xte, yte = _split(x, y, dc.test_fraction, rng)
            parts_xy.append((xtr, ytr))
            test_x.append(xte)
            test_y.append(yte)
        x_test, y_test = np.concatenate(test_x), np.concatenate(test_y)
    else:
        if dc.dataset == "digits":
            x, y, feature_shape = _load_digits()
        elif dc.dataset == "breast_cancer":
            x, y, feature_shape = _load_breast_cancer()
        else:
            s = dc.synthetic
            x, y, feature_shape = synthetic_dataset(
                num_samples=s.num_samples,
                num_features=s.num_features,
                num_classes=s.num_classes,
                image=s.image,
                imbalance=s.imbalance,
                seed=config.seed,
            )
        num_classes = int(y.max()) + 1
        xtr, ytr, x_test, y_test = _split(x, y, dc.test_fraction, rng)
        parts = partition_indices(
            ytr,
            num_clients=k,
            scheme=dc.partition,
            rng=rng,
            alpha=dc.alpha,
            dominant_fraction=dc.dominant_fraction,
        )
        parts_xy = [(xtr[p], ytr[p]) for p in parts]
    if dc.standardize:
        # Statistics of the pooled training data (as a shared preprocessing recipe would
        # fix them); the per-feature scale is public metadata, not an individual record.
        pooled = np.concatenate([p[0] for p in parts_xy]).reshape(-1, int(np.prod(feature_shape)))
        mean, std = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
        if len(feature_shape) > 1:  # images: one global scale keeps the spatial structure
            mean, std = np.full_like(mean, pooled.mean()), np.full_like(std, pooled.std() + 1e-6)

        def norm(a: FloatArray) -> FloatArray:
            flat = a.reshape(a.shape[0], -1)
            out: FloatArray = ((flat - mean) / std).reshape(a.shape).astype(np.float32)
            return out

        parts_xy = [(norm(px), py) for px, py in parts_xy]
        x_test = norm(x_test)
    clients = []
    for px, py in parts_xy:
        xtr_c, ytr_c, xte_c, yte_c = _split(px, py, dc.client_test_fraction, rng)
        clients.append(ClientData(xtr_c, ytr_c, xte_c, yte_c))
    return FederatedData(
        clients=tuple(clients),
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.int64),
        feature_shape=tuple(int(v) for v in feature_shape),
        num_classes=num_classes,
        name=dc.dataset,
    )
