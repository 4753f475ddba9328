"""20 SuperNodes on loopback (TLS) complete 3 SecAgg+ aggregations while 2 of them are
SIGKILLed in the middle of the second one (after the server opened ``share_keys``).

Slow: every Flower message starts a fresh ClientApp process, 20 sites x ~9 messages x 3
aggregations on a shared 2-core machine; the measured time is in benchmarks/RESULTS.md
(``pytest tests/integration/test_flower_scale.py -m slow -s`` prints it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flower_cluster import Cluster, Federation, finish, wait_for  # noqa: E402
from test_transport_equivalence import BASE, _merge  # noqa: E402

from secure_fl.config import build_config, to_toml  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.slow, pytest.mark.heavy]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower_pilot"


def _count(path: Path, text: str) -> int:
    return path.read_text(errors="replace").count(text) if path.exists() else 0


def test_twenty_supernodes_three_aggregations_two_killed_mid_round(tmp_path: Path) -> None:
    from secure_fl.data import load_federated_data

    config = build_config(_merge(BASE, {"clients": {"num": 20}, "rounds": 3,
                                        "simulation": {"reproducible_noise": False}}))
    fed = Federation(config, tmp_path / "sites")
    data = load_federated_data(config)
    cluster = Cluster(tmp_path, fed.node_configs(key_holder=False))
    start = time.monotonic()
    try:
        cluster.up()
        up = time.monotonic() - start
        cfg = tmp_path / "twenty.toml"
        cfg.write_text(to_toml(config), encoding="utf-8")
        out = tmp_path / "run"
        proc = cluster.submit(EXAMPLE, (
            f'config="{cfg}" out-dir="{out}" min-nodes=20 num-classes={data.num_classes} '
            f'feature-shape="{data.feature_shape[0]}" train-timeout=600.0 stage-timeout=300.0 poll-interval=0.2'
        ), tag="twenty")
        progress = out / "progress.jsonl"
        wait_for(progress, '"stage": "advertise"', 1800)
        end = time.monotonic() + 3600
        while _count(progress, '"stage": "share_keys"') < 2 and time.monotonic() < end:
            time.sleep(0.5)
        killed = ["site-7", "site-13"]
        for name in killed:
            cluster.kill(name)
        finish(proc, out, 3600)
        elapsed = time.monotonic() - start
    finally:
        cluster.down()
    print(f"20 SuperNodes: start-up {up:.1f} s, start-up + 3 aggregations {elapsed:.1f} s")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aggregations_completed"] == 3
    bodies = [json.loads(line)["body"] for line in (out / "ledger.jsonl").read_text().splitlines()]
    assert len(bodies[0]["survivors"]) == 20
    assert all(b["aborted"] is None for b in bodies)
    assert 7 not in bodies[1]["survivors"] and 13 not in bodies[1]["survivors"]
    assert len(bodies[1]["survivors"]) == 18
    assert len(bodies[2]["survivors"]) == 18 and not {7, 13} & set(bodies[2]["survivors"])
    assert not cluster.leftovers()
