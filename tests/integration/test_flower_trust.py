"""Issue 14 on the Flower transport: a malicious server's cohort, bad nodes at hello,
countersigned ledger entries. The real ClientApp (a site built from its site.toml, the
engine's :class:`~secure_fl.engine.client.ClientEngine`) and ServerApp on the in-memory
grid of ``flower_cluster``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from flwr.app import Context, Message, RecordDict  # noqa: E402
from test_flower_deployment import FakeGrid, _make_sites, _pilot_config  # noqa: E402

from crypto.prg import fresh_seed  # noqa: E402
from secure_fl.config import load_config, to_toml  # noqa: E402
from secure_fl.engine.client import ClientEngine  # noqa: E402
from secure_fl.engine.transport import SETUP, WITNESS, Envelope  # noqa: E402
from secure_fl.transport.flower import client_app, server_app  # noqa: E402
from secure_fl.transport.flower.codec import RecordState, pack, unpack  # noqa: E402
from secure_fl.transport.flower.site import load_identity_key, load_site_config  # noqa: E402

pytestmark = pytest.mark.flower

DIM = 14  # logreg: 6 features x 2 classes + 2 biases


def _engine(tmp_path: Path, site_file: Path) -> ClientEngine:
    config = load_config(_pilot_config(tmp_path, 1))
    return ClientEngine(client_app.build_site(load_site_config(site_file), config, num_classes=2))


def _malicious_setup(tmp_path: Path, identity_keys: list[bytes], *, threshold: int, provisioned: int) -> Envelope:
    """An aggregation set-up as a server would send it, for a cohort the server chose."""
    config = load_config(_pilot_config(tmp_path, 1))
    fields = {
        "version": 1, "config_toml": to_toml(config), "protocol": "secagg", "aggregate": True,
        "identity_keys": identity_keys, "index": 0, "threshold": threshold, "provisioned": provisioned,
        "n": len(identity_keys), "clip": 1.0, "kappa": 0.0, "weight": 1.0, "staleness": 0,
        "session_id": fresh_seed(), "round_seed": fresh_seed(), "run": "attack",
    }
    return Envelope(fields=fields, arrays={"support": np.arange(DIM, dtype=np.int64)})


def test_site_refuses_a_sybil_cohort_of_two(tmp_path: Path) -> None:
    """Issue 14: the site accepted n = 2, t = 2 whose other member was the server's Sybil,
    and the 'aggregate' equalled its own update. Now it refuses before training."""
    files = _make_sites(tmp_path)
    site = load_site_config(files[0])
    own = load_identity_key(site).public_key().public_bytes_raw()
    sybil = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    env = _malicious_setup(tmp_path, [own, sybil], threshold=2, provisioned=1)
    reply = _engine(tmp_path, files[0]).handle(SETUP, env, RecordState(RecordDict()))
    assert reply.fields["refusal"] == "rules"
    assert "not in the roster" in str(reply.fields["refused"])
    assert not reply.frames
    assert not (site.keys_dir / "budget.jsonl").exists()  # nothing charged, nothing sent


def test_site_refuses_provisioning_above_what_the_roster_allows(tmp_path: Path) -> None:
    files = _make_sites(tmp_path)
    keys = [load_identity_key(load_site_config(f)).public_key().public_bytes_raw() for f in files]
    env = _malicious_setup(tmp_path, keys, threshold=2, provisioned=3)  # 3 > n - c = 2
    reply = _engine(tmp_path, files[0]).handle(SETUP, env, RecordState(RecordDict()))
    assert reply.fields["refusal"] == "rules"
    assert "above what the roster allows" in str(reply.fields["refused"])


def _tampering_hello(field: str, value: Any) -> Any:
    """A node whose hello reply carries ``field = value`` (otherwise an honest ClientApp)."""

    def handle(msg: Message, context: Context) -> Message:
        reply = client_app.app(msg, context)
        if msg.metadata.message_type != "query.secure_fl_hello":
            return reply
        env = unpack(reply.content)
        return Message(pack(frames=env.frames, fields={**env.fields, field: value}, arrays=env.arrays), reply_to=msg)

    return handle


def test_bad_nodes_at_hello_are_excluded_and_the_run_continues(tmp_path: Path) -> None:
    """A node copying site-0's public identity key, one with another feature shape and
    one reporting num_classes = 10**9: each is excluded and logged, the three honest
    sites complete the run (the old server aborted, or sized the model by 10**9)."""
    files = _make_sites(tmp_path, count=6)
    copied = load_identity_key(load_site_config(files[0])).public_key().public_bytes_raw()
    handlers: dict[int, Any] = {11: client_app.app, 22: client_app.app, 33: client_app.app,
                                44: _tampering_hello("identity_key", copied),
                                55: _tampering_hello("feature_shape", [9]),
                                66: _tampering_hello("num_classes", 10**9)}
    cfg = _pilot_config(tmp_path, 1)
    grid = FakeGrid(handlers, run_config={"config": str(cfg)})
    for node, path in zip(sorted(handlers), files, strict=True):
        grid.contexts[node].node_config["site-config"] = str(path)
    settings = server_app.DeploymentSettings(
        config_path=str(cfg), out_dir=tmp_path / "run", min_nodes=3,
        connect_timeout=5, train_timeout=30, stage_timeout=5, poll_interval=0.01,
    )
    lines: list[str] = []
    summary = server_app.run_deployment(grid, settings, log=lines.append)
    text = "\n".join(lines)
    assert "node 44: excluded at hello: no valid proof of possession" in text, text
    assert "node 55: excluded at hello: reports feature shape [9]" in text, text
    assert "node 66: excluded at hello: reports 1000000000 classes" in text, text
    assert sorted(summary["sites"]) == ["site-0", "site-1", "site-2"]
    assert summary["aggregations_completed"] == 1
    body = json.loads((tmp_path / "run" / "ledger.jsonl").read_text().splitlines()[0])["body"]
    assert sorted(body["survivors"]) == ["site-0", "site-1", "site-2"]


def test_site_countersigns_only_the_aggregation_it_survived(tmp_path: Path) -> None:
    """The server asks a site to countersign a doctored entry (another version, a body
    that drops the site, another session): the site refuses; it signs its own once."""
    from audits.ledger import canonical_json
    from secure_fl.engine.client import WITNESS_KEY

    files = _make_sites(tmp_path)
    engine = _engine(tmp_path, files[0])
    state = RecordState(RecordDict())
    session = (b"s" * 32).hex()
    state.put(WITNESS_KEY, {"last_index": -1, "version": 3, "session_id": session})
    body = {"version": 3, "cohort": ["site-0", "site-1"], "survivors": ["site-0", "site-1"],
            "measurements": {"session_id": session}, "aborted": None}

    def ask(b: dict[str, Any], index: int = 2) -> Envelope:
        env = Envelope(fields={"index": index, "prev_hash": "0" * 64, "body": canonical_json(b).decode()})
        return engine.handle(WITNESS, env, state)

    for doctored, why in (({**body, "version": 4}, "records version 4"),
                          ({**body, "survivors": ["site-1"]}, "does not list site-0"),
                          ({**body, "measurements": {"session_id": "00"}}, "another session id")):
        reply = ask(doctored)
        assert "countersignature" not in reply.fields and why in str(reply.fields["refused"]), reply.fields
    assert len(ask(body).fields["countersignature"]) == 64  # type: ignore[arg-type]
    again = ask(body)  # one signature per aggregation, never a second history
    assert "countersignature" not in again.fields and again.fields["refusal"] == "error"
