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

Sites that bring their own data (CSV/NPZ files, or arrays and datasets handed to
:func:`secure_fl.run` in Python, :func:`federated_data_from_sites`) are checked against
each other before anything trains, because a site's export mistake otherwise trains
silently: the same columns in the same order at every CSV site (header compared by
name), the same number of features, labels ``0 .. C-1`` with no value that only one
site uses and that leaves a gap (a binary data set must not become an 8-class model), at
least two rows per site. An Excel UTF-8 byte-order mark before the header is ignored.

Every training sample is assigned to exactly one client. A global test set is held out
before partitioning; each client keeps ``client_test_fraction`` of its own share as a
personal test split (for personalization metrics). numpy's generator is fine here: data
partitioning is simulation, not privacy-relevant randomness.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from secure_fl.config import DataConfig, RunConfig
from secure_fl.errors import ConfigError, DataError

__all__ = [
    "FederatedData",
    "SiteData",
    "SiteSource",
    "federated_data_from_sites",
    "load_federated_data",
    "partition_indices",
]

_log = logging.getLogger(__name__)

#: One site's own data in Python: ``(x, y)`` arrays (numpy arrays, torch tensors or
#: nested lists; ``x`` of shape ``(n, features...)``, ``y`` integer labels of shape
#: ``(n,)``), or a map-style dataset (``len`` and ``ds[i] -> (x_i, y_i)``, e.g. a
#: ``torch.utils.data.Dataset``).
SiteSource = Any

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SiteData:
    """One site's (simulated client's) examples: a local training split and a local
    test split (personal metrics, federated evaluation, the memory-budget probe).

    The one definition for every transport: simulated clients
    (:func:`load_federated_data`), the engine's :class:`~secure_fl.engine.client.Site`
    and a deployed site's files (:func:`secure_fl.transport.flower.site.load_site_data`).
    """

    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """Largest label seen + 1 (the server takes the maximum over the sites)."""
        labels = np.concatenate([self.y_train, self.y_test])
        return int(labels.max()) + 1 if labels.size else 0

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])


@dataclass(frozen=True)
class FederatedData:
    """All clients' data plus the global held-out test set."""

    clients: tuple[SiteData, ...]
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


@dataclass(frozen=True)
class _Site:
    """One site's raw data before the cross-site checks: its name (a file name or
    ``site i``), features, labels and, for a CSV file, the feature column names."""

    name: str
    x: FloatArray
    y: IntArray
    columns: tuple[str, ...] | None = None


def _read_site(path: Path, label_column: str) -> _Site:
    x, y, columns = _read_site_table(path, label_column)
    return _Site(path.name, x, y, columns)


def _read_site_file(path: Path, label_column: str) -> tuple[FloatArray, IntArray]:
    """Read one site's CSV (header row, numeric columns) or NPZ (arrays ``x`` and ``y``)."""
    x, y, _ = _read_site_table(path, label_column)
    return x, y


def _read_site_table(
    path: Path, label_column: str
) -> tuple[FloatArray, IntArray, tuple[str, ...] | None]:
    """:func:`_read_site_file` plus a CSV's feature column names (for the cross-site
    header check; ``None`` for NPZ)."""
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a site file: give one CSV or NPZ file per site")
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
        return x.astype(np.float32), _as_labels(y.astype(np.float64), path, label_column), None
    try:
        # utf-8-sig: Excel writes a byte-order mark before the header's first name.
        with path.open(newline="", encoding="utf-8-sig") as fh:
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
    columns = tuple(h for i, h in enumerate(header) if i != label_idx)
    return x, _as_labels(y, path, label_column), columns


def _as_labels(y: npt.NDArray[np.float64], path: Path | str, label_column: str) -> IntArray:
    if np.any(y != np.round(y)) or np.any(y < 0):
        raise DataError(f"{path}: labels in {label_column!r} must be non-negative integers")
    return y.astype(np.int64)


def _site_from_python(index: int, source: SiteSource) -> _Site:
    """Arrays or a map-style dataset handed to ``secure_fl.run(data=...)``."""
    name = f"site {index}"
    if isinstance(source, tuple | list) and len(source) == 2:
        x_raw, y_raw = source
    elif hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        if len(source) == 0:
            raise DataError(f"{name}: the dataset is empty")
        items = [source[i] for i in range(len(source))]
        if not all(isinstance(it, tuple | list) and len(it) == 2 for it in items):
            raise DataError(f"{name}: a dataset must yield (x, y) pairs")
        x_raw = np.stack([_to_numpy(it[0]) for it in items])
        y_raw = np.asarray([_to_numpy(it[1]).reshape(()) for it in items])
    else:
        raise DataError(
            f"{name}: expected an (x, y) pair of arrays or a map-style dataset of (x, y), "
            f"got {type(source).__name__}"
        )
    x, y = _to_numpy(x_raw), _to_numpy(y_raw)
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: x must be (n, features...) and y (n,), got {x.shape}, {y.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{name}: x and y must be numeric")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{name}: x contains NaN or infinite values")
    return _Site(name, x.astype(np.float32), _as_labels(y.astype(np.float64), name, "y"))


def _to_numpy(value: Any) -> npt.NDArray[Any]:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_sites(sites: Sequence[_Site]) -> int:
    """The cross-site checks of the module docstring; returns the number of classes."""
    for s in sites:
        if s.y.shape[0] < 2:
            raise DataError(
                f"{s.name}: only {s.y.shape[0]} data row; a site needs at least 2 (a training "
                "row and a held-out row); merge it with another site or leave it out"
            )
    shapes = {s.x.shape[1:] for s in sites}
    if len(shapes) != 1:
        per_site = ", ".join(f"{s.name} has {int(np.prod(s.x.shape[1:]))}" for s in sites)
        raise DataError(f"site files disagree on the number of features: {per_site}")
    headed = [(s.name, s.columns) for s in sites if s.columns is not None]
    for name, columns in headed[1:]:
        ref_name, ref = headed[0]
        if columns == ref:
            continue
        missing = [c for c in ref if c not in columns]
        extra = [c for c in columns if c not in ref]
        if missing or extra:
            detail = f"{name} lacks {missing} and has {extra} instead"
        else:
            moved = [c for c, d in zip(ref, columns, strict=True) if c != d]
            detail = f"the same columns in another order ({', '.join(moved)} moved)"
        raise DataError(
            f"the header of {name} differs from {ref_name}: {detail}; every site must "
            f"export the same columns in the same order ({', '.join(ref)})"
        )
    labels = [set(np.unique(s.y).tolist()) for s in sites]
    union: set[int] = set().union(*labels)
    if len(union) < 2:
        raise DataError("site files contain a single class; nothing to learn")
    num_classes = int(max(union)) + 1
    absent = sorted(set(range(num_classes)) - union)
    if absent:
        culprits = [
            f"{s.name} has {sorted(v for v in lab if v > absent[0])}"
            for s, lab in zip(sites, labels, strict=True)
            if any(v > absent[0] for v in lab)
        ]
        raise DataError(
            f"labels must be 0 .. C-1 across sites, but {absent} appear at no site while "
            f"{'; '.join(culprits)}: {num_classes} classes would be trained; check the "
            "label coding of each site"
        )
    if len(sites) > 2:
        for i, (s, lab) in enumerate(zip(sites, labels, strict=True)):
            others = set().union(*(o for j, o in enumerate(labels) if j != i))
            only_here = sorted(lab - others)
            if only_here:
                _log.warning(
                    "%s holds labels %s that no other site has; check its label coding "
                    "(fine for deliberately non-IID sites)",
                    s.name,
                    only_here,
                )
    return num_classes


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
        return _from_sites([_read_site(Path(p), dc.label_column) for p in dc.paths], config)
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
    return _finish(config, parts_xy, x_test, y_test, feature_shape, num_classes, dc.dataset, rng)


def federated_data_from_sites(sites: Sequence[SiteSource], config: RunConfig) -> FederatedData:
    """Federated data from each site's own arrays or dataset (:data:`SiteSource`), one
    client per site, checked across sites like CSV site files; each site holds out
    ``data.test_fraction`` of its rows for the global test set."""
    if len(sites) != config.clients.num:
        raise ConfigError(
            f"{len(sites)} sites of data were given but clients.num is {config.clients.num}; "
            f"set clients.num = {len(sites)}",
            field="clients.num",
        )
    return _from_sites([_site_from_python(i, s) for i, s in enumerate(sites)], config, name="python")


def _from_sites(sites: Sequence[_Site], config: RunConfig, *, name: str = "csv") -> FederatedData:
    rng = np.random.default_rng([config.seed, 0xDA7A])
    num_classes = _check_sites(sites)
    feature_shape = tuple(int(v) for v in sites[0].x.shape[1:])
    parts_xy = []
    test_x, test_y = [], []
    for site in sites:
        xtr, ytr, xte, yte = _split(site.x, site.y, config.data.test_fraction, rng)
        parts_xy.append((xtr, ytr))
        test_x.append(xte)
        test_y.append(yte)
    x_test, y_test = np.concatenate(test_x), np.concatenate(test_y)
    return _finish(config, parts_xy, x_test, y_test, feature_shape, num_classes, name, rng)


def _finish(
    config: RunConfig,
    parts_xy: list[tuple[FloatArray, IntArray]],
    x_test: FloatArray,
    y_test: IntArray,
    feature_shape: tuple[int, ...],
    num_classes: int,
    name: str,
    rng: np.random.Generator,
) -> FederatedData:
    """Standardize with pooled training statistics and keep each client's test split."""
    dc = config.data
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
        clients.append(SiteData(xtr_c, ytr_c, xte_c, yte_c))
    return FederatedData(
        clients=tuple(clients),
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.int64),
        feature_shape=tuple(int(v) for v in feature_shape),
        num_classes=num_classes,
        name=name,
    )
