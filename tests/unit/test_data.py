from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from secure_fl.config import load_config
from secure_fl.data import load_federated_data, partition_indices
from secure_fl.errors import ConfigError, DataError

PLAIN = Path(__file__).resolve().parents[1] / "plain.toml"

LABELS = np.repeat(np.arange(10), 50).astype(np.int64)  # 10 classes x 50 samples


def _check_exact_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert allidx.size == n, "every sample is assigned exactly once"
    assert np.unique(allidx).size == n, "no sample is in two clients"
    assert set(allidx.tolist()) == set(range(n))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "dominant_class", "one_class"])
def test_partitions_cover_every_sample_exactly_once(scheme: str) -> None:
    parts = partition_indices(LABELS, num_clients=10, scheme=scheme, rng=np.random.default_rng(1))
    assert len(parts) == 10
    _check_exact_cover(parts, LABELS.size)


def test_partitions_are_deterministic() -> None:
    a = partition_indices(LABELS, num_clients=7, scheme="dirichlet", rng=np.random.default_rng(3))
    b = partition_indices(LABELS, num_clients=7, scheme="dirichlet", rng=np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_iid_sizes_and_proportions() -> None:
    parts = partition_indices(LABELS, num_clients=5, scheme="iid", rng=np.random.default_rng(0))
    assert {p.size for p in parts} == {100}
    for p in parts:  # each class present with a share near 10%
        assert np.bincount(LABELS[p], minlength=10).max() <= 25


def test_one_class_gives_single_class_clients() -> None:
    parts = partition_indices(LABELS, num_clients=20, scheme="one_class", rng=np.random.default_rng(0))
    _check_exact_cover(parts, LABELS.size)
    for i, p in enumerate(parts):
        assert set(LABELS[p].tolist()) == {i % 10}


def test_one_class_needs_enough_clients() -> None:
    with pytest.raises(ConfigError, match="one_class"):
        partition_indices(LABELS, num_clients=5, scheme="one_class", rng=np.random.default_rng(0))


@pytest.mark.parametrize("frac", [0.5, 0.9])
def test_dominant_class_fraction(frac: float) -> None:
    parts = partition_indices(
        LABELS, num_clients=10, scheme="dominant_class", rng=np.random.default_rng(0), dominant_fraction=frac
    )
    for i, p in enumerate(parts):
        share = np.mean(LABELS[p] == i % 10)
        assert abs(share - frac) <= 0.05, (i, share)


def test_dirichlet_small_alpha_is_skewed() -> None:
    skew = partition_indices(LABELS, num_clients=10, scheme="dirichlet", rng=np.random.default_rng(0), alpha=0.1)
    flat = partition_indices(LABELS, num_clients=10, scheme="dirichlet", rng=np.random.default_rng(0), alpha=100)

    def top_share(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / p.size for p in parts]))

    assert top_share(skew) > 0.5 > top_share(flat)


def test_bundled_sets_and_splits() -> None:
    for dataset in ("digits", "breast_cancer"):
        data = load_federated_data(load_config(PLAIN, [f"data.dataset={dataset}", "clients.num=5"]))
        total = sum(c.y_train.size + c.y_test.size for c in data.clients) + data.y_test.size
        assert total == {"digits": 1797, "breast_cancer": 569}[dataset]
        assert all(c.y_test.size > 0 for c in data.clients)


def test_synthetic_image_and_imbalance() -> None:
    config = load_config(
        None,
        [
            "data.dataset=synthetic", "data.synthetic.image=true", "data.synthetic.num_samples=400",
            "data.synthetic.num_classes=3", "data.synthetic.imbalance=0.2", "clients.num=4",
        ],
    )
    data = load_federated_data(config)
    assert data.feature_shape == (1, 28, 28)
    counts = np.bincount(np.concatenate([c.y_train for c in data.clients]), minlength=3)
    assert counts[0] > 2 * counts[1]


def _write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def _csv_config(paths: list[Path], label: str = "label") -> list[str]:
    quoted = ", ".join(f'"{p}"' for p in paths)
    return ["data.dataset=csv", f"clients.num={len(paths)}", f"data.paths=[{quoted}]", f"data.label_column={label}"]


def test_csv_and_npz_sites(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = tmp_path / "a.csv"
    _write_csv(a, "f1,f2,label", [f"{x:.3f},{-x:.3f},{int(x > 0)}" for x in rng.normal(size=30)])
    b = tmp_path / "b.npz"
    xb = rng.normal(size=(30, 2))
    np.savez(b, x=xb, y=(xb[:, 0] > 0).astype(int))
    data = load_federated_data(load_config(PLAIN, _csv_config([a, b])))
    assert data.num_classes == 2 and data.feature_shape == (2,)
    assert len(data.clients) == 2


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("f1,f2,target\n1,2,0\n", "label column 'label' not found"),
        ("f1,f2,label\n1,abc,0\n", "non-numeric value 'abc'"),
        ("f1,f2,label\n1,2\n", "expected 3 fields"),
        ("f1,f2,label\n", "at least one data row"),
        ("f1,f2,label\n1,2,0.5\n", "non-negative integers"),
        ("f1,f2,label\n1,nan,0\n", "NaN"),
    ],
)
def test_bad_csv_inputs(tmp_path: Path, content: str, match: str) -> None:
    good = tmp_path / "good.csv"
    _write_csv(good, "f1,f2,label", ["1,2,0", "2,1,1", "0,0,0"])
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    with pytest.raises(DataError, match=match):
        load_federated_data(load_config(PLAIN, _csv_config([good, bad])))


def test_missing_site_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_federated_data(load_config(PLAIN, _csv_config([tmp_path / "nope.csv"])))


def test_npz_without_arrays(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((3, 2)))
    with pytest.raises(DataError, match="'x' and 'y'"):
        load_federated_data(load_config(PLAIN, _csv_config([bad])))


def test_sites_with_different_features(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _write_csv(a, "f1,f2,label", ["1,2,0", "2,1,1", "0,0,1"])
    _write_csv(b, "f1,label", ["1,0", "2,1", "0,1"])
    with pytest.raises(DataError, match="disagree"):
        load_federated_data(load_config(PLAIN, _csv_config([a, b])))
