"""Issue 16 section 4: data checks that catch a site's mistakes, and Python-supplied sites
(section 7). Each mistake below used to train to completion with exit 0."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_fl.config import load_config
from secure_fl.data import load_federated_data
from secure_fl.errors import ConfigError, DataError

PLAIN = Path(__file__).resolve().parents[1] / "plain.toml"


def _rows(n: int, labels: tuple[int, ...] = (0, 1), seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [[float(rng.normal()), float(rng.normal()), float(labels[i % len(labels)])] for i in range(n)]


def _csv(path: Path, header: list[str], rows: list[list[float]], *, bom: bool = False) -> Path:
    lines = [",".join(header), *(",".join(f"{v:g}" for v in r) for r in rows)]
    text = "\n".join(lines) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def _load(paths: list[Path], label: str = "label") -> object:
    quoted = ", ".join(f'"{p}"' for p in paths)
    overrides = ["data.dataset=csv", f"clients.num={len(paths)}", f"data.paths=[{quoted}]",
                 f"data.label_column={label}"]
    return load_federated_data(load_config(PLAIN, overrides))


def test_renamed_column_is_named_with_both_files(tmp_path: Path) -> None:
    a = _csv(tmp_path / "a.csv", ["age", "bmi", "label"], _rows(20))
    b = _csv(tmp_path / "b.csv", ["age", "weight", "label"], _rows(20, seed=1))
    with pytest.raises(DataError, match=r"b\.csv differs from a\.csv.*\['bmi'\].*\['weight'\]"):
        _load([a, b])


def test_swapped_columns_are_caught(tmp_path: Path) -> None:
    a = _csv(tmp_path / "a.csv", ["age", "bmi", "label"], _rows(20))
    b = _csv(tmp_path / "b.csv", ["bmi", "age", "label"], _rows(20, seed=1))
    with pytest.raises(DataError, match=r"b\.csv differs from a\.csv: the same columns in another order"):
        _load([a, b])


def test_label_column_position_may_differ(tmp_path: Path) -> None:
    a = _csv(tmp_path / "a.csv", ["age", "bmi", "label"], _rows(20))
    rows = [[r[2], r[0], r[1]] for r in _rows(20, seed=1)]
    b = _csv(tmp_path / "b.csv", ["label", "age", "bmi"], rows)
    assert _load([a, b]).num_classes == 2  # type: ignore[attr-defined]


def test_a_label_outside_the_other_sites_label_set(tmp_path: Path) -> None:
    # Binary data where one site coded its positives as 7: silently an 8-class model.
    a = _csv(tmp_path / "a.csv", ["f1", "f2", "label"], _rows(20))
    b = _csv(tmp_path / "b.csv", ["f1", "f2", "label"], _rows(20, seed=1))
    c = _csv(tmp_path / "c.csv", ["f1", "f2", "label"], _rows(20, labels=(0, 7), seed=2))
    with pytest.raises(DataError, match=r"\[2, 3, 4, 5, 6\] appear at no site while c\.csv has \[7\]"):
        _load([a, b, c])


def test_a_label_only_one_site_has_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = _csv(tmp_path / "a.csv", ["f1", "f2", "label"], _rows(20))
    b = _csv(tmp_path / "b.csv", ["f1", "f2", "label"], _rows(20, seed=1))
    c = _csv(tmp_path / "c.csv", ["f1", "f2", "label"], _rows(20, labels=(0, 1, 2), seed=2))
    with caplog.at_level(logging.WARNING, logger="secure_fl.data"):
        data = _load([a, b, c])
    assert data.num_classes == 3  # type: ignore[attr-defined]
    assert any("c.csv holds labels [2] that no other site has" in r.getMessage() for r in caplog.records)


def test_a_site_with_one_row(tmp_path: Path) -> None:
    a = _csv(tmp_path / "a.csv", ["f1", "f2", "label"], _rows(20))
    b = _csv(tmp_path / "b.csv", ["f1", "f2", "label"], _rows(1))
    with pytest.raises(DataError, match=r"b\.csv: only 1 data row"):
        _load([a, b])


def test_excel_bom_is_stripped(tmp_path: Path) -> None:
    a = _csv(tmp_path / "a.csv", ["diagnosis", "f1", "f2"], [[r[2], r[0], r[1]] for r in _rows(20)], bom=True)
    b = _csv(tmp_path / "b.csv", ["diagnosis", "f1", "f2"], [[r[2], r[0], r[1]] for r in _rows(20, seed=1)])
    assert _load([a, b], label="diagnosis").num_classes == 2  # type: ignore[attr-defined]


def test_feature_count_mismatch_names_the_files(tmp_path: Path) -> None:
    a = _csv(tmp_path / "a.csv", ["f1", "f2", "label"], _rows(20))
    b = tmp_path / "b.npz"
    np.savez(b, x=np.zeros((10, 3)), y=np.arange(10) % 2)
    with pytest.raises(DataError, match=r"number of features: a\.csv has 2, b\.npz has 3"):
        _load([a, b])


def test_a_directory_given_as_a_site_file(tmp_path: Path) -> None:
    a = _csv(tmp_path / "a.csv", ["f1", "f2", "label"], _rows(20))
    (tmp_path / "site_b").mkdir()
    with pytest.raises(DataError, match=r"site_b is a directory, not a site file"):
        _load([a, tmp_path / "site_b"])


def test_python_sites_as_arrays_and_datasets() -> None:
    from secure_fl.data import federated_data_from_sites

    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))
    ds = torch.utils.data.TensorDataset(torch.randn(25, 4), torch.arange(25) % 2)
    config = load_config(PLAIN, ["clients.num=3"])
    data = federated_data_from_sites([(x0, (x0[:, 0] > 0).astype(int)), (x1, x1[:, 1] > 0), ds], config)
    assert len(data.clients) == 3 and data.feature_shape == (4,) and data.num_classes == 2
    total = sum(c.y_train.size + c.y_test.size for c in data.clients) + data.y_test.size
    assert total == 95


def test_python_sites_are_checked_like_files() -> None:
    from secure_fl.data import federated_data_from_sites

    config = load_config(PLAIN, ["clients.num=2"])
    with pytest.raises(ConfigError, match="clients.num"):
        federated_data_from_sites([(np.zeros((5, 2)), np.arange(5) % 2)], config)
    with pytest.raises(DataError, match="site 1 has 3"):
        federated_data_from_sites([(np.zeros((5, 2)), np.arange(5) % 2),
                                   (np.zeros((5, 3)), np.arange(5) % 2)], config)
    with pytest.raises(DataError, match="site 0: expected an"):
        federated_data_from_sites([42, (np.zeros((5, 2)), np.arange(5) % 2)], config)
