"""secure-fl over real Flower processes: one SuperLink and SuperNodes on loopback, TLS.

One federation serves every run of this module (``flwr run`` submits each job to the
same SuperLink): four client SuperNodes whose sites hold the simulated partition of
``test_transport_equivalence.BASE`` and one key-holder SuperNode
(``role="key-holder"``). Every process is started by the fixture and killed by pid.

* the SecAgg+ scenario and the combined one (secagg + async + random_k + record-level
  DP) on TLS give the same aggregates as in-process (bit for bit; async: the in-process
  run replays the arrival order this run recorded);
* CKKS with the key holder as its own SuperNode, pruning and the memory budget run end
  to end (their bit-level equivalence is shown on the in-memory grid).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flower_cluster import Cluster, Federation, finish  # noqa: E402
from test_transport_equivalence import (  # noqa: E402
    BASE,
    SCENARIOS,
    _merge,
    compare,
    flower_arrivals,
    ledger_events,
    run_inprocess,
)

from secure_fl.config import build_config, to_toml  # noqa: E402

pytestmark = pytest.mark.flower

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower_pilot"


class TlsFederation:
    def __init__(self, root: Path) -> None:
        from secure_fl.data import load_federated_data

        base = build_config(BASE)
        self.root = root
        self.federation = Federation(base, root / "sites")
        data = load_federated_data(base)
        self.num_classes = data.num_classes
        self.shape = ",".join(str(v) for v in data.feature_shape)
        self.cluster = Cluster(root, self.federation.node_configs())

    def run(self, name: str, config: Any, *, plan: dict[int, dict[str, str]] | None = None,
            timeout: float = 900.0) -> Path:
        cfg = self.root / f"{name}.toml"
        cfg.write_text(to_toml(config), encoding="utf-8")
        out = self.root / f"run-{name}"
        run_config = (
            f'config="{cfg}" out-dir="{out}" min-nodes={len(self.cluster.nodes)} num-classes={self.num_classes} '
            f'feature-shape="{self.shape}" train-timeout=600.0 stage-timeout=300.0 poll-interval=0.1'
        )
        if plan:
            run_config += " drop-plan='" + json.dumps({str(k): v for k, v in plan.items()}, separators=(",", ":")) + "'"
        proc = self.cluster.submit(EXAMPLE, run_config, tag=name)
        finish(proc, out, timeout)
        return out


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFederation]:
    fed = TlsFederation(tmp_path_factory.mktemp("flower-tls"))
    try:
        fed.cluster.up()
        yield fed
    finally:
        fed.cluster.down()
        left = fed.cluster.leftovers()
        assert not left, f"processes left behind: {left}"


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def test_secagg_on_tls_equals_in_process(tls: TlsFederation, tmp_path: Path) -> None:
    """One SecAgg+ aggregation, site 3 silenced at masked_input (a real mid-round dropout)."""
    config = build_config(_merge(BASE, {"rounds": 1}))
    plan = {1: {"3": "masked_input"}}
    out = tls.run("secagg", config, plan=plan)
    summary = _summary(out)
    assert summary["transport"] == "flower" and summary["aggregations_completed"] == 1
    events = ledger_events(out / "ledger.jsonl")
    assert events[0]["survivors"] == [0, 1, 2] and events[0]["aborted"] is None
    compare("secagg", out, run_inprocess(config, tmp_path / "inprocess", plan=plan, arrivals=None))


def test_combined_async_random_k_record_dp_on_tls_equals_in_process(tls: TlsFederation, tmp_path: Path) -> None:
    over = _merge(SCENARIOS["combined"][0], {"rounds": 2})
    config = build_config(_merge(BASE, over))
    out = tls.run("combined", config, timeout=1200.0)
    assert _summary(out)["aggregations_completed"] == config.rounds
    body = json.loads((out / "ledger.jsonl").read_text().splitlines()[-1])["body"]
    assert body["mode"] == "async" and body["support"]["kind"] == "random_k"
    arrivals = flower_arrivals(out)
    compare("combined", out, run_inprocess(config, tmp_path / "inprocess", plan={}, arrivals=arrivals))


@pytest.mark.slow
@pytest.mark.heavy
def test_ckks_with_a_key_holder_supernode_and_pruning(tls: TlsFederation) -> None:
    config = build_config(_merge(BASE, {"protocol": "ckks", "dp": {"mechanism": "gaussian"},
                                        "sparsity": {"kind": "prune", "density": 0.5}}))
    out = tls.run("ckks-prune", config)
    summary = _summary(out)
    assert summary["aggregations_completed"] == 2 and summary["key_holder"] == "key-holder"
    assert "key-holder" not in summary["sites"]
    bodies = [json.loads(line)["body"] for line in (out / "ledger.jsonl").read_text().splitlines()]
    assert all(b["protocol"] == "ckks" and b["aborted"] is None for b in bodies)
    assert bodies[-1]["support"]["kind"] == "prune"
    # the key holder's per-aggregation secret keys were used once and deleted at its site
    assert not list((tls.federation.root / "keys" / "key-holder").glob("ckks-*.secret"))
    assert np.linalg.norm(np.load(out / "weights_final.npy") - np.load(out / "weights_initial.npy")) > 0


@pytest.mark.slow
@pytest.mark.heavy
def test_memory_budget_on_tls(tls: TlsFederation) -> None:
    config = build_config(_merge(BASE, {"sparsity": {"kind": "memory_budget", "density": 0.6}, "rounds": 1}))
    out = tls.run("memory", config)
    summary = _summary(out)
    assert summary["aggregations_completed"] == 1
    body = json.loads((out / "ledger.jsonl").read_text().splitlines()[0])["body"]
    assert body["support"]["kind"] == "memory_budget"
