"""Each example runs from its README command at a reduced size and produces its outputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _run_script(script: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("example", ["hospitals", "finance", "privacy_tradeoff"])
def test_example_has_readme_and_config(example: str) -> None:
    folder = EXAMPLES / example
    assert (folder / "README.md").is_file()
    assert (folder / "config.toml").is_file()
    assert (folder / "run.py").is_file()
    # The README shows how to run it.
    assert f"examples/{example}/run.py" in (folder / "README.md").read_text()
    from secure_fl import load_config

    if example != "hospitals":  # hospitals' site files are written by run.py
        load_config(folder / "config.toml")


@pytest.mark.slow
def test_privacy_tradeoff_quick(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = _run_script(EXAMPLES / "privacy_tradeoff" / "run.py", "--quick", "--out", str(out))
    assert "sweep.csv" in proc.stdout
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 2 and all(r["protocol"] == "secagg" for r in rows)
    for name in ("accuracy_vs_epsilon.png", "accuracy_vs_upload.png", "accuracy_vs_virtual_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpimg.imread(out / name).ndim == 3
    # Rerunning resumes: nothing runs again.
    again = _run_script(EXAMPLES / "privacy_tradeoff" / "run.py", "--quick", "--out", str(out))
    assert "skipped" in again.stdout


@pytest.mark.slow
def test_hospitals_reduced(tmp_path: Path) -> None:
    out = tmp_path / "pilot"
    proc = _run_script(EXAMPLES / "hospitals" / "run.py", "--rounds", "2", "--out", str(out))
    assert "ledger verified" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert sum(report["patients_per_hospital"]) == 569
    assert len(set(report["patients_per_hospital"])) == 5  # five different sizes
    assert set(report["epsilon_record_level_per_site"]) == {"0", "1", "2", "3", "4"}
    assert all(0 < e < float("inf") for e in report["epsilon_record_level_per_site"].values())
    assert report["audit"]["ledger_ok"] and report["audit"]["ledger_entries"] == 2
    assert json.loads((out / "audit.json").read_text())["ledger_ok"]
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["protocol"] == "secagg"


@pytest.mark.slow
def test_finance_reduced(tmp_path: Path) -> None:
    out = tmp_path / "fin"
    proc = _run_script(EXAMPLES / "finance" / "run.py", "--rounds", "2", "--out", str(out))
    assert "roc_auc" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"baseline", "private"}
    assert metrics["baseline"]["epsilon"] is None
    assert metrics["private"]["epsilon"] > 0 and metrics["private"]["protocol"] == "secagg"
    for m in metrics.values():
        for key in ("precision", "recall", "f1", "roc_auc", "pr_auc", "accuracy"):
            assert 0.0 <= m[key] <= 1.0
        assert m["fraud_rate"] < 0.1  # heavily imbalanced
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 2


@pytest.mark.slow
def test_noniid_digits_reduced(tmp_path: Path) -> None:
    out = tmp_path / "noniid"
    _run_script(EXAMPLES / "noniid_digits" / "run.py", "--rounds", "2", "--out", str(out))
    assert (out / "noniid_digits.csv").is_file()
    assert (out / "noniid_digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
