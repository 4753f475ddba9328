"""The same ServerApp/ClientApp under Flower's simulation runtime (research mode).

A SuperLink in simulation mode (``flower-superlink --simulation``, started and killed
here by pid) runs the pilot app with ``num-supernodes`` virtual SuperNodes; each takes
partition ``partition-id`` of the run configuration's data set
(:func:`secure_fl.transport.flower.client_app.simulated_site`). Slow: 100 virtual
clients through 2 SecAgg+ aggregations (the measured time is in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from flower_cluster import BIN, fake_grid_class, free_port, kill_tree, wait_for  # noqa: E402

pytestmark = [pytest.mark.flower]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower_pilot"


def _simulate(tmp_path: Path, *, supernodes: int, overrides: str) -> tuple[dict, float]:
    import os

    port = free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "sim"\n\n[superlink.sim]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home),
           "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "superlink.log").open("wb")
    superlink = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1", "--port", str(port),
         "--disable-runtime-dependency-installation"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True,
    )
    out = tmp_path / "run"
    try:
        wait_for(tmp_path / "superlink.log", "Uvicorn running", 90)
        start = time.monotonic()
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(EXAMPLE), "sim", "--stream",
             "--federation-config", f"num-supernodes={supernodes}",
             "--run-config", f'config="research.toml" out-dir="{out}" min-nodes={supernodes} num-classes=10 '
                             f'overrides="{overrides}" train-timeout=600.0 stage-timeout=300.0'],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800,
        )
        elapsed = time.monotonic() - start
        assert (out / "summary.json").exists(), run.stdout[-4000:] + run.stderr[-2000:]
    finally:
        kill_tree(superlink)
    return json.loads((out / "summary.json").read_text()), elapsed


@pytest.mark.slow
@pytest.mark.heavy
def test_one_hundred_virtual_clients_two_aggregations(tmp_path: Path) -> None:
    summary, elapsed = _simulate(tmp_path, supernodes=100, overrides="rounds=2")
    print(f"100 virtual SuperNodes, 2 aggregations: {elapsed:.1f} s")
    assert summary["transport"] == "flower"
    assert summary["aggregations_completed"] == 2
    assert summary["num_clients"] == 100
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["aborted"] is None for m in metrics)


@pytest.mark.slow
def test_four_virtual_clients_one_aggregation(tmp_path: Path) -> None:
    """The simulation runtime path itself (partition sites, research identities)."""
    summary, _elapsed = _simulate(tmp_path, supernodes=4, overrides="rounds=1 clients.num=4")
    assert summary["aggregations_completed"] == 1
    assert summary["sites"] == ["0", "1", "2", "3"]


def test_virtual_supernodes_take_their_partition_in_memory(tmp_path: Path) -> None:
    """The ClientApp of a virtual SuperNode (node config ``partition-id`` /
    ``num-partitions``, no site file) over the in-memory grid: the same engine, names
    "0".."3" as in-process, research identities derived from the seed."""
    from secure_fl.transport.flower import client_app, server_app

    app = client_app.make_client_app(base_dir=EXAMPLE)
    nodes = {100 + i: {"partition-id": i, "num-partitions": 4} for i in range(4)}
    rc = {"config": "research.toml", "overrides": "rounds=1 clients.num=4", "num-classes": 10}
    grid = fake_grid_class()({n: app for n in nodes}, node_configs=nodes, run_config=rc)
    settings = server_app.DeploymentSettings.from_run_config(
        {**rc, "out-dir": str(tmp_path / "run"), "min-nodes": 4, "connect-timeout": 5.0}, base_dir=EXAMPLE)
    summary = server_app.run_deployment(grid, settings, log=lambda _m: None)
    assert summary["aggregations_completed"] == 1
    assert summary["sites"] == ["0", "1", "2", "3"]
