"""secure-fl on Flower over an in-memory grid: the real ServerApp and ClientApp code.

Skipped when flwr is not installed. The runs over real SuperLink/SuperNodes with TLS
are in ``test_flower_tls.py``; the cross-transport comparison in
``test_transport_equivalence.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flower_cluster import fake_grid_class  # noqa: E402

from audits.ledger import load_public_key, verify_ledger  # noqa: E402
from audits.server_view import verify_transcript  # noqa: E402
from secure_fl.engine.client import ClientEngine  # noqa: E402
from secure_fl.transport.flower import client_app, server_app  # noqa: E402

pytestmark = pytest.mark.flower

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower_pilot"
FakeGrid = fake_grid_class()


def _write_site_csv(path: Path, rng: np.random.Generator, n: int, w: np.ndarray) -> None:
    x = rng.normal(size=(n, w.size))
    y = (x @ w + 0.3 * rng.normal(size=n) > 0).astype(int)
    lines = [",".join([f"f{i}" for i in range(w.size)] + ["label"])]
    lines += [",".join([f"{v:.5f}" for v in row] + [str(lbl)]) for row, lbl in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _make_sites(root: Path, count: int = 3) -> list[Path]:
    rng = np.random.default_rng(3)
    w = rng.normal(size=6)
    (root / "data").mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        _write_site_csv(root / "data" / f"s{k}.csv", rng, 90 + 20 * k, w)
        cfg = root / f"site{k}.toml"
        cfg.write_text(
            f'[site]\nname = "site-{k}"\ndata = "data/s{k}.csv"\nkeys_dir = "keys/s{k}"\n'
            'budget_cap = 50.0\nrequire_dp = true\nroster = "roster.toml"\n',
            encoding="utf-8",
        )
        paths.append(cfg)
    write_site_roster(paths, root / "roster.toml", min_cohort=2, min_threshold=2)
    return paths


def write_site_roster(site_files: list[Path], out: Path, *, min_cohort: int, min_threshold: int) -> Path:
    """What the sites do before a pilot: create identity keys, build one roster from
    their identity.pub files (``secure-fl roster key`` / ``build``)."""
    from secure_fl.roster import build_roster, write_roster
    from secure_fl.transport.flower.site import load_identity_key, load_site_config

    keys = {}
    for path in site_files:
        site = load_site_config(path)
        keys[site.name] = load_identity_key(site).public_key().public_bytes_raw()
    return write_roster(
        build_roster(keys, min_cohort=min_cohort, min_threshold=min_threshold), out, overwrite=True
    )


def _pilot_config(root: Path, rounds: int) -> Path:
    cfg = root / "pilot.toml"
    cfg.write_text(
        (EXAMPLE / "pilot.toml").read_text(encoding="utf-8").replace("rounds = 2", f"rounds = {rounds}"),
        encoding="utf-8",
    )
    return cfg


def _verify_run(out: Path, *, rounds: int, min_survivors: int, roster: Path | None = None) -> dict[str, Any]:
    from audits.audit import load_roster_keys

    summary = json.loads((out / "summary.json").read_text())
    # every survivor countersigned every entry, verified against the sites' roster (issue 14)
    report = verify_ledger(
        out / "ledger.jsonl", load_public_key(out / summary["ledger_public_key"]),
        expected_entries=summary["ledger_entries"], expected_head=summary["ledger_head"],
        client_public_keys=load_roster_keys(roster or out.parent / "roster.toml"), require_witnesses=True,
    )
    assert report.ok, report.first_problem
    assert report.witnessed == rounds
    entries = [json.loads(line)["body"] for line in (out / "ledger.jsonl").read_text().splitlines()]
    assert len(entries) == rounds
    for e in entries:
        assert e["aborted"] is None, e["aborted"]
        assert len(e["survivors"]) >= min_survivors
        assert e["dp_event"]["type"] != "NonPrivateEvent" if "type" in e["dp_event"] else True
    initial, final = np.load(out / "weights_initial.npy"), np.load(out / "weights_final.npy")
    assert np.linalg.norm(final - initial) > 0
    assert summary["model_change_l2"] > 0
    # The server's transcript: digests and sizes of frames, top-bit histograms of masked
    # uploads; never a vector or an update.
    tr = json.loads((out / "transcript.json").read_text())
    text = json.dumps(tr)
    assert tr["records"]
    for rec in tr["records"]:
        assert set(rec) == {"version", "sender", "stage", "size", "sha256"}
        assert len(rec["sha256"]) == 64
    assert {r["stage"] for r in tr["records"]} >= {"advertise", "share_keys", "masked_input", "unmask"}
    assert len(text) < 200_000  # no dense vectors in it
    # What `secure-fl audit` checks: the signed ledger vouches for the transcript record
    # by record (a Flower run once hashed site names where the transcript holds indices).
    bodies = [(n, json.loads(line)["body"]) for n, line in enumerate((out / "ledger.jsonl").read_text().splitlines(), 1)]
    check = verify_transcript(out, bodies, summary)
    assert check.ok, check.problems
    return summary


def test_in_memory_deployment_two_rounds_with_ddg(tmp_path: Path) -> None:
    """The whole ServerApp job over the real ClientApp on an in-memory grid."""
    site_files = _make_sites(tmp_path)
    nodes = [11, 22, 33]
    cfg = _pilot_config(tmp_path, 2)
    grid = FakeGrid({n: client_app.app for n in nodes}, run_config={"config": str(cfg)})
    for n, path in zip(nodes, site_files, strict=True):
        grid.contexts[n].node_config["site-config"] = str(path)
    settings = server_app.DeploymentSettings(
        config_path=str(cfg), out_dir=tmp_path / "run", min_nodes=3,
        connect_timeout=5, train_timeout=30, stage_timeout=5, poll_interval=0.01,
    )
    server_app.run_deployment(grid, settings, log=lambda _m: None)
    summary = _verify_run(tmp_path / "run", rounds=2, min_survivors=3)
    assert summary["epsilon"] is not None and summary["final_accuracy"] is not None
    for k in range(3):  # every site charged itself (worst case) in its own budget ledger
        lines = (tmp_path / "keys" / f"s{k}" / "budget.jsonl").read_text().splitlines()
        assert len(lines) == 2


def _copy_example(dst: Path) -> Path:
    """The shipped pilot app as `flwr run` bundles it (TOML, Python), plus its site data."""
    import importlib.util
    import shutil

    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("data", "keys", "roster.toml", "__pycache__"))
    spec = importlib.util.spec_from_file_location("make_site_data", dst / "make_site_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_sites(dst / "data")
    write_site_roster(sorted((dst / "sites").glob("site_*.toml")), dst / "roster.toml", min_cohort=3, min_threshold=2)
    return dst


def test_shipped_pilot_example_completes_with_its_own_sites_and_budgets(tmp_path: Path) -> None:
    """Regression: docs/deployment.md followed literally aborted every aggregation because
    the shipped pilot.toml's worst case (epsilon 13.8 for one aggregation) exceeded the
    shipped sites' budget_cap (10), and the sites' refusals never reached the log. Run the
    shipped app configuration with the shipped site files, twice on the same keys (a lead
    re-runs the pilot): every aggregation must complete with all three sites."""
    import tomllib

    app_dir = _copy_example(tmp_path / "flower_pilot")
    rc = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    nodes = [11, 22, 33]
    for attempt in ("first", "second"):
        grid = FakeGrid({n: client_app.app for n in nodes},
                        run_config={**rc, "config": str(app_dir / "pilot.toml")})
        for n, name in zip(nodes, "abc", strict=True):
            grid.contexts[n].node_config["site-config"] = str(app_dir / "sites" / f"site_{name}.toml")
        out = tmp_path / f"run-{attempt}"
        settings = server_app.DeploymentSettings.from_run_config(
            {**rc, "out-dir": str(out), "connect-timeout": 5.0}, base_dir=app_dir
        )
        lines: list[str] = []
        server_app.run_deployment(grid, settings, log=lines.append)
        text = "\n".join(lines)
        assert "refused" not in text and "left out" not in text and "ABORTED" not in text, text
        assert "secure-fl: done: 2 of 2 aggregations completed" in text, text
        summary = _verify_run(out, rounds=2, min_survivors=3, roster=app_dir / "roster.toml")
        assert summary["aggregations_completed"] == 2
        for m in (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()):
            assert m["excluded"] == {} and m["aborted"] is None
            assert sorted(m["survivors"]) == ["site-a", "site-b", "site-c"]


def _refusal_federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Seven sites; site-0's budget cap is 0.5 and site-4's ClientApp fails at set-up."""
    site_files = _make_sites(tmp_path, count=7)
    text = site_files[0].read_text(encoding="utf-8")
    site_files[0].write_text(text.replace("budget_cap = 50.0", "budget_cap = 0.5"), encoding="utf-8")
    real_setup = ClientEngine.setup

    def flaky_setup(self: ClientEngine, env: Any, state: Any) -> Any:
        if self.site.name == "site-4":
            raise RuntimeError("disk on fire")
        return real_setup(self, env, state)

    monkeypatch.setattr(ClientEngine, "setup", flaky_setup)
    nodes = [11, 22, 33, 44, 55, 66, 77]
    cfg = tmp_path / "seven.toml"  # every site in the cohort, the default SecAgg+ threshold
    cfg.write_text(
        _pilot_config(tmp_path, 1).read_text(encoding="utf-8").replace("num = 3", "num = 7")
        .replace("threshold = 2", "# default threshold"),
        encoding="utf-8",
    )

    def deploy(out: Path, files: list[Path]) -> list[str]:
        grid = FakeGrid({n: client_app.app for n in nodes[: len(files)]}, run_config={"config": str(cfg)})
        for n, path in zip(nodes, files, strict=False):
            grid.contexts[n].node_config["site-config"] = str(path)
        settings = server_app.DeploymentSettings(
            config_path=str(cfg), out_dir=out, min_nodes=len(files), overrides=(f"clients.num={len(files)}",),
            connect_timeout=5, train_timeout=30, stage_timeout=5, poll_interval=0.01,
        )
        lines: list[str] = []
        server_app.run_deployment(grid, settings, log=lines.append)
        return lines

    return site_files, deploy


def test_site_refusals_reach_the_log_metrics_and_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site that refuses (budget cap) is named with its reason in the server log,
    metrics.jsonl and the ledger; when no site is left, the run says why."""
    site_files, deploy = _refusal_federation(tmp_path, monkeypatch)
    lines = deploy(tmp_path / "run", site_files)
    text = "\n".join(lines)
    assert "site-0 refused: privacy budget cap 0.5 would be exceeded" in text, text
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ledger = [json.loads(line)["body"] for line in (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()]
    for record in (metrics[0], ledger[0]):
        assert record["aborted"] is None
        assert sorted(record["survivors"]) == ["site-1", "site-2", "site-3", "site-5", "site-6"]
        assert set(record["budget_refusals"]) == {"site-0"}
        assert "privacy budget cap 0.5" in record["budget_refusals"]["site-0"]

    # nobody can join: every site refuses, the run stops and says why
    for path in site_files[1:3]:
        path.write_text(path.read_text(encoding="utf-8").replace("budget_cap = 50.0", "budget_cap = 0.5"),
                        encoding="utf-8")
    lines = deploy(tmp_path / "run-none", site_files[:3])
    text = "\n".join(lines)
    assert "ABORTED" in text and "only 0 of 1 aggregations completed" in text, text
    metrics = [json.loads(line) for line in (tmp_path / "run-none" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["survivors"] == []
    assert set(metrics[0]["budget_refusals"]) == {"site-0", "site-1", "site-2"}
    assert all("privacy budget cap" in why for why in metrics[0]["budget_refusals"].values())


def test_site_failures_reach_the_log_metrics_and_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site_files, deploy = _refusal_federation(tmp_path, monkeypatch)
    lines = deploy(tmp_path / "run", site_files)
    assert "site-4 left out: refused: RuntimeError: disk on fire" in "\n".join(lines)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "RuntimeError: disk on fire" in metrics[0]["excluded"]["site-4"]


class _ServerDied(BaseException):
    """Stands in for the ServerApp process dying (not an Exception: nothing catches it)."""


@pytest.mark.parametrize("crash_stage", ["train", "masked_input"], ids=["between", "mid-aggregation"])
def test_flower_server_crash_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_stage: str) -> None:
    """The ServerApp dies after aggregation 2 (before aggregation 3 starts training, or in
    its masking stage); `resume = true` continues from the checkpoint: versions 1..3
    once each, one verifying hash chain, and (reproducible noise) the same model and DP
    events as an uninterrupted run."""
    from secure_fl.transport.flower.grid import FlowerTransport

    site_files = _make_sites(tmp_path)
    nodes = [11, 22, 33]
    cfg = _pilot_config(tmp_path, 3)
    overrides = ("simulation.reproducible_noise=true",)

    def deploy(out: Path, *, resume: bool = False) -> None:
        grid = FakeGrid({n: client_app.app for n in nodes}, run_config={"config": str(cfg)})
        for n, path in zip(nodes, site_files, strict=True):
            grid.contexts[n].node_config["site-config"] = str(path)
        settings = server_app.DeploymentSettings(
            config_path=str(cfg), out_dir=out, min_nodes=3, overrides=overrides, resume=resume,
            connect_timeout=5, train_timeout=30, stage_timeout=5, poll_interval=0.01,
        )
        server_app.run_deployment(grid, settings, log=lambda _m: None)

    deploy(tmp_path / "whole")
    real_exchange = FlowerTransport.exchange
    seen = {"train": 0}

    def dying_exchange(self: FlowerTransport, command: Any) -> Any:
        if command.stage == "train":
            seen["train"] += 1
        if seen["train"] == 3 and command.stage == crash_stage:
            raise _ServerDied
        return real_exchange(self, command)

    monkeypatch.setattr(FlowerTransport, "exchange", dying_exchange)
    with pytest.raises(_ServerDied):
        deploy(tmp_path / "crashed")
    monkeypatch.setattr(FlowerTransport, "exchange", real_exchange)
    crashed = tmp_path / "crashed"
    assert not (crashed / "summary.json").exists()
    with pytest.raises(Exception, match="unfinished run"):
        deploy(crashed)  # a restart without resume = true does not overwrite the run
    deploy(crashed, resume=True)

    metrics = [json.loads(line) for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [m["version"] for m in metrics] == [1, 2, 3]
    report = verify_ledger(crashed / "ledger.jsonl", load_public_key(crashed / "ledger_public_key.pem"))
    assert report.ok, report.problems
    whole = [json.loads(line)["body"] for line in (tmp_path / "whole" / "ledger.jsonl").read_text().splitlines()]
    resumed = [json.loads(line)["body"] for line in (crashed / "ledger.jsonl").read_text().splitlines()]
    assert [b["version"] for b in resumed] == [1, 2, 3]
    assert [b["dp_event"] for b in resumed] == [b["dp_event"] for b in whole]
    assert np.array_equal(np.load(crashed / "weights_final.npy"), np.load(tmp_path / "whole" / "weights_final.npy"))
