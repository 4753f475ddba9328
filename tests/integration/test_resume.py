"""Server crash and restart: a `secure-fl run` killed (SIGKILL) between aggregations or
in the middle of one resumes with `secure-fl run --resume DIR`; the ledger verifies end
to end with every survivor's countersignature, versions continue without gap or repeat,
and with reproducible noise the budgets, ledger DP events and model equal those of an
uninterrupted run (no aggregation charged twice, none lost)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from audits.ledger import LEDGER_FILENAME, PUBLIC_KEY_FILENAME, load_public_key, verify_ledger
from secure_fl.config import load_config
from secure_fl.engine.checkpoint import CHECKPOINT_FILENAME, CRASH_ENV, server_state_dir
from secure_fl.roster import load_roster
from secure_fl.runner import run

ROUNDS = 4
CONFIG = f"""
seed = 3
rounds = {ROUNDS}
protocol = "secagg"
[clients]
num = 8
per_round = 6
[data]
dataset = "digits"
partition = "iid"
[model]
kind = "mlp"
hidden = [16]
[train]
local_epochs = 1
lr = 0.1
batch_size = 32
[dp]
mechanism = "discrete_gaussian"
noise_multiplier = 1.0
delta = 1e-5
clip = 0.5
[secagg]
bits = 32
[simulation]
reproducible_noise = true
"""
# Fields of a ledger body that differ between two uninterrupted runs too (fresh SecAgg
# key agreement: message digests and their sizes, hence the virtual clock).
NOT_REPRODUCIBLE = {"transcript_records_sha256", "virtual_time_s"}


def _cli(*args: str, crash: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``secure-fl run ARGS`` in its own session. Output goes to files, not pipes: a
    SIGKILLed server's forked worker processes would keep pipes open; the whole
    session (the server and its workers, all started here) is ended afterwards."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash is not None:
        env[CRASH_ENV] = crash
    cmd = [sys.executable, "-m", "secure_fl.cli", "run", "--quiet", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, code, out.read(), err.read())


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def reference(config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    run(load_config(config_file, []), out_dir=out, progress=False)
    return out


def _bodies(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / LEDGER_FILENAME).read_text().splitlines()
    return [{k: v for k, v in json.loads(x)["body"].items() if k not in NOT_REPRODUCIBLE} for x in lines]


def _check_resumed(run_dir: Path, reference: Path) -> None:
    """The resumed run is whole, verifiable, and equal to the uninterrupted one."""
    roster = load_roster(run_dir / "roster.toml")
    keys = {s.name: s.identity_key for s in roster.sites}
    report = verify_ledger(
        run_dir / LEDGER_FILENAME,
        load_public_key(run_dir / PUBLIC_KEY_FILENAME),
        client_public_keys=keys,
        require_witnesses=True,
    )
    assert report.ok, report.problems
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report.entries == summary["ledger_entries"] == ROUNDS
    assert report.head == summary["ledger_head"]
    bodies = _bodies(run_dir)
    assert [b["version"] for b in bodies] == list(range(1, ROUNDS + 1))  # no gap, no repeat
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["version"] for m in metrics] == list(range(1, ROUNDS + 1))
    # budgets: every client charged exactly the events of the uninterrupted run
    assert bodies == _bodies(reference)
    ref = json.loads((reference / "summary.json").read_text())
    for key in ("epsilon", "epsilon_per_client", "epsilon_against_server_replace_one",
                "epsilon_released_model", "epsilon_released_model_per_client", "final_accuracy"):
        assert summary[key] == ref[key], key
    a, b = torch.load(run_dir / "model.pt"), torch.load(reference / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "crash",
    [
        "after_metrics:2",        # between aggregations
        "stage:masked_input:3",   # in the middle of aggregation 3: masked inputs left the sites
        "after_checkpoint:2",     # checkpoint written, ledger entry not: rolled forward
    ],
)
def test_killed_server_resumes_with_intact_ledger_and_budgets(
    crash: str, config_file: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    killed = _cli(str(config_file), "--out", str(out), crash=crash)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "summary.json").exists()
    done = int(crash.rsplit(":", 1)[1]) - (0 if crash.startswith("after") else 1)
    checkpoint = json.loads((out / CHECKPOINT_FILENAME).read_text())["checkpoint"]
    assert checkpoint["version"] == done
    resumed = _cli("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "final accuracy" in resumed.stdout
    _check_resumed(out, reference)


def test_external_sigkill_mid_run_then_resume(config_file: Path, reference: Path, tmp_path: Path) -> None:
    """The plain operational case: the process is killed from outside as soon as the
    first aggregation's metrics line appears (the server is then in aggregation 2)."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "secure_fl.cli", "run", "--quiet", str(config_file), "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        metrics = out / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and metrics.read_text().count("\n") >= 1:
                break
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers, at once
        proc.wait(timeout=60)
    if (out / "summary.json").exists():  # pragma: no cover - the machine outran the poll
        pytest.skip("the run finished before it could be killed")
    resumed = _cli("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    _check_resumed(out, reference)


def test_site_caps_hold_across_a_restart(config_file: Path, tmp_path: Path) -> None:
    """Simulated sites refuse on their own caps. After a restart their budgets are rebuilt
    from the ledger entries they countersigned, so they refuse exactly where the
    uninterrupted run's sites did (fresh budgets would let them join past their caps)."""
    ref = tmp_path / "ref"
    run(load_config(config_file, ["dp.budget_cap=8"]), out_dir=ref, progress=False)
    out = tmp_path / "run"
    killed = _cli(str(config_file), "--set", "dp.budget_cap=8", "--out", str(out), crash="after_metrics:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _cli("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    refusals = [b["budget_refusals"] for b in _bodies(out)]
    assert refusals == [b["budget_refusals"] for b in _bodies(ref)]
    assert any(refusals[2:]), "the cap must bind after the restart for this test to mean anything"


def test_resume_without_reproducible_noise_keeps_one_chain(config_file: Path, tmp_path: Path) -> None:
    """Fresh OS entropy: nothing secret about the noise is on disk, the resumed run
    draws fresh noise; the ledger is still one chain under one key, witnessed."""
    out = tmp_path / "run"
    killed = _cli(str(config_file), "--set", "simulation.reproducible_noise=false", "--out", str(out),
                  crash="stage:masked_input:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    saved = json.loads((out / CHECKPOINT_FILENAME).read_text())["checkpoint"]["state"]
    assert saved["server_rng"] is None  # the secret stream's position is not stored
    state = server_state_dir(out)
    assert sorted(p.name for p in state.iterdir()) == ["clients.seed", "ledger.key", "run_id"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in state.iterdir())
    resumed = _cli("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    roster = load_roster(out / "roster.toml")
    report = verify_ledger(
        out / LEDGER_FILENAME, load_public_key(out / PUBLIC_KEY_FILENAME),
        client_public_keys={s.name: s.identity_key for s in roster.sites}, require_witnesses=True,
    )
    assert report.ok and report.entries == ROUNDS, report.problems
    assert [b["version"] for b in _bodies(out)] == list(range(1, ROUNDS + 1))


def test_resume_refuses_what_it_cannot_continue(config_file: Path, reference: Path, tmp_path: Path) -> None:
    finished = _cli("--resume", str(reference))
    assert finished.returncode == 1 and "finished run" in finished.stderr
    mixed = _cli(str(config_file), "--resume", str(reference))
    assert mixed.returncode == 2 and "--resume" in mixed.stderr
    out = tmp_path / "run"
    assert _cli(str(config_file), "--out", str(out), crash="after_metrics:1").returncode == -signal.SIGKILL
    path = out / CHECKPOINT_FILENAME
    doc = json.loads(path.read_text())
    doc["checkpoint"]["state"]["engine"]["privacy"]["budgets"]["history"] = []  # erase the budgets
    path.write_text(json.dumps(doc))
    tampered = _cli("--resume", str(out))
    assert tampered.returncode != 0 and "digest" in tampered.stderr
    assert "Traceback" not in tampered.stderr
