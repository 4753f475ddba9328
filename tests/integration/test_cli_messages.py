"""Issue 16 section 5: messages and logs a person can read."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secure_fl.cli import main

PLAIN = Path(__file__).resolve().parents[1] / "plain.toml"


def test_warnings_become_one_readable_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    from secure_fl.log_setup import cli_logging

    with cli_logging("info"):
        warnings.warn("aggregation 3: fewer clients survived than the noise was\n provisioned for",
                      UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == "warning: aggregation 3: fewer clients survived than the noise was provisioned for\n"
    with cli_logging("error"):
        warnings.warn("hidden below the chosen level", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == ""


def test_run_accepts_log_level_and_keeps_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", str(PLAIN), "--set", "rounds=1", "--set", "clients.num=3", "--set", "model.hidden=[8]"]
    assert main([*base, "--quiet", "--log-level", "warning", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr()
    assert "done:" in out.out and "[1/1]" not in out.out
    assert main(["--log-level", "debug", *base, "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert main([*base, "--log-level", "loud", "--out", str(tmp_path / "c")]) == 2
    assert "invalid choice: 'loud'" in capsys.readouterr().err


def test_inherited_protection_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "my.toml"
    cfg.write_text("rounds = 2\n", encoding="utf-8")
    assert main(["config", str(cfg)]) == 0
    captured = capsys.readouterr()
    assert 'protocol = "secagg"' in captured.out
    assert "inherited from the embedded default: protocol = 'secagg'" in captured.err


def test_opacus_backward_hook_chatter_is_silenced() -> None:
    import torch
    from torch import nn

    from crypto.prg import Csprng
    from secure_fl.config import TrainConfig
    from secure_fl.training import train_local_dp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_local_dp(model, x, y, TrainConfig(batch_size=4), noise_multiplier=1.0,
                       max_grad_norm=1.0, rng=Csprng(bytes(32)))
    assert not [w for w in caught if "Full backward hook" in str(w.message)]


def test_rerun_into_an_unfinished_run_directory_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from audits.ledger import generate_server_key, save_public_key

    out = tmp_path / "run"
    out.mkdir()
    save_public_key(generate_server_key(), out / "ledger_public_key.pem")  # an interrupted run
    (out / "ledger.jsonl").write_text("", encoding="utf-8")
    code = main(["run", str(PLAIN), "--quiet", "--out", str(out), "--set", "rounds=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "choose another --out or use --resume" in err
    assert "KeyFileError" not in err


def _fake_benchmarks(**_: Any) -> dict[str, Any]:
    row = {"benchmark": "secagg", "measure": "m", "measured": "1", "target": "2", "status": "met"}
    return {"targets": [row], "seconds": {"secagg": 0.1}, "secagg": {"correct": True, "raw": list(range(50))}}


def test_bench_prints_the_table_and_writes_json_only_where_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import secure_fl.bench as bench

    monkeypatch.setattr(bench, "run_benchmarks", _fake_benchmarks)
    path = tmp_path / "bench.json"
    assert bench.bench_main(["--quick", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| secagg" in out
    assert "{" not in out and '"raw"' not in out  # no JSON dump after the table
    assert json.loads(path.read_text())["secagg"]["correct"] is True
    assert bench.bench_main(["--quick"]) == 0
    assert "{" not in capsys.readouterr().out
    assert bench.bench_main(["--quick", "--json", "-"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["secagg"]["correct"] is True
