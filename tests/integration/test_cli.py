from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from secure_fl import load_config, run
from secure_fl.cli import main

PLAIN = Path(__file__).resolve().parents[1] / "plain.toml"

SUMMARY_KEYS = {
    "final_accuracy", "best_accuracy", "epsilon", "delta", "accountant", "unit_of_privacy",
    "protocol", "rounds", "num_clients", "upload_bytes_per_client_mean", "wall_time_s",
    "virtual_time_s", "secure_fl_version",
}
METRIC_KEYS = {
    "version", "virtual_time_s", "wall_time_s", "test_accuracy", "test_loss", "epsilon",
    "cohort", "survivors", "upload_bytes", "download_bytes",
}


def test_cli_run_writes_the_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "secure_fl.cli", "run", str(PLAIN), "--out", str(out), "--set", "rounds=3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "final accuracy" in proc.stdout
    for name in ("config.toml", "metrics.jsonl", "summary.json", "model.pt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["epsilon"] is None  # no DP: no made-up number
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["version"] for m in lines] == [1, 2, 3]
    assert METRIC_KEYS <= lines[0].keys()
    # The resolved config reloads to the same configuration.
    assert load_config(out / "config.toml") == load_config(PLAIN, ["rounds=3"])


def test_cli_rejects_bad_config_with_status_2_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "secure_fl.cli", "run", "--set", "clients.num=-1", "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "clients.num" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_config_file_and_bad_override(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["run", "--set", "rounds"]) == 2
    assert main(["config", "--set", "rounds=4"]) == 0
    assert "rounds = 4" in capsys.readouterr().out


def test_refuses_to_overwrite_a_finished_run(tmp_path: Path) -> None:
    config = load_config(PLAIN, ["rounds=1"])
    run(config, out_dir=tmp_path, progress=False)
    assert main(["run", str(PLAIN), "--quiet", "--out", str(tmp_path), "--set", "rounds=1"]) == 2


def test_runs_are_reproducible() -> None:
    config = load_config(PLAIN, ["rounds=4", "data.partition=dirichlet", "simulation.dropout=0.2"])
    a = run(config, write=False, progress=False)
    b = run(config, write=False, progress=False)
    strip = ("wall_time_s",)
    assert [{k: v for k, v in m.items() if k not in strip} for m in a.metrics] == [
        {k: v for k, v in m.items() if k not in strip} for m in b.metrics
    ]
    assert (a.weights == b.weights).all()


def test_custom_torch_module_through_the_api() -> None:
    from torch import nn

    config = load_config(PLAIN, ["rounds=2"])
    result = run(config, write=False, progress=False,
                 model_fn=lambda shape, k: nn.Sequential(nn.Flatten(), nn.Linear(64, k)))
    assert result.summary["num_parameters"] == 64 * 10 + 10
