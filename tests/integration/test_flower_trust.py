"""Issue 14 on the Flower transport: a malicious server's cohort, bad nodes at hello,
countersigned ledger entries. Real ServerApp / ClientApp code on the in-memory grid of
``test_flower_deployment``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from flwr.app import Context, Message  # noqa: E402
from test_flower_deployment import FakeGrid, _make_sites, _pilot_config  # noqa: E402

from crypto.prg import fresh_seed  # noqa: E402
from crypto.secagg import RoundConfig, SecAggServer, encode  # noqa: E402
from secure_fl.config import load_config, to_toml  # noqa: E402
from secure_fl.errors import RemoteProtocolError  # noqa: E402
from secure_fl.transport.flower import client_app, server_app  # noqa: E402
from secure_fl.transport.flower.codec import Envelope, pack, unpack  # noqa: E402
from secure_fl.transport.flower.site import load_site_config  # noqa: E402

pytestmark = pytest.mark.flower


def _malicious_setup(tmp_path: Path, identity_keys: list[bytes], *, threshold: int, provisioned: int) -> Envelope:
    """A set-up exactly as the ServerApp builds it, for a cohort the server chose."""
    config = load_config(_pilot_config(tmp_path, 1))
    dim = 14  # logreg: 6 features x 2 classes + 2 biases
    mech = client_app.mechanism_for(config, dim=dim, num_clients=len(identity_keys), provisioned=provisioned)
    rc = RoundConfig(
        session_id=fresh_seed(), round_number=1, bits=config.secagg.bits, length=mech.padded_dim,
        threshold=threshold, identity_keys=tuple(identity_keys), graph_seed=fresh_seed(),
    )
    frames = [encode(m) for m in SecAggServer(rc).start() if m.recipient == 0]
    fields = {
        **client_app.round_config_fields(rc), "config_toml": to_toml(config), "round_seed": fresh_seed(),
        "weight": 1.0, "provisioned": provisioned, "gamma": float(mech.gamma), "feature_shape": [6],
        "num_classes": 2, "run": "attack", "index": 0,
    }
    return Envelope(tuple(frames), fields, {"weights": np.zeros(dim, dtype=np.float32)})


def test_site_refuses_a_sybil_cohort_of_two(tmp_path: Path) -> None:
    """Issue 14: the site accepted n = 2, t = 2 whose other member was the server's Sybil,
    and the 'aggregate' equalled its own update. Now it refuses before training."""
    files = _make_sites(tmp_path)
    site = load_site_config(files[0])
    own = client_app.load_identity_key(site).public_key().public_bytes_raw()
    sybil = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    env = _malicious_setup(tmp_path, [own, sybil], threshold=2, provisioned=1)
    state = Context(run_id=1, node_id=1, node_config={}, state=__import__("flwr").app.RecordDict(), run_config={}).state
    with pytest.raises(RemoteProtocolError, match="not in the roster"):
        client_app.handle_setup(env, site, state)
    assert not (site.keys_dir / "budget.jsonl").exists()  # nothing charged, nothing sent


def test_site_refuses_provisioning_above_what_the_roster_allows(tmp_path: Path) -> None:
    files = _make_sites(tmp_path)
    site = load_site_config(files[0])
    keys = [client_app.load_identity_key(load_site_config(f)).public_key().public_bytes_raw() for f in files]
    env = _malicious_setup(tmp_path, keys, threshold=2, provisioned=3)  # 3 > n - c = 2
    with pytest.raises(RemoteProtocolError, match="above what the roster allows"):
        client_app.handle_setup(env, site, Context(run_id=1, node_id=1, node_config={},
                                                   state=__import__("flwr").app.RecordDict(), run_config={}).state)


def _tampering_hello(field: str, value: Any) -> Any:
    """A node whose hello reply carries ``field = value`` (otherwise an honest ClientApp)."""

    def handle(msg: Message, context: Context) -> Message:
        reply = client_app.app(msg, context)
        if msg.metadata.message_type != client_app.HELLO:
            return reply
        env = unpack(reply.content)
        return Message(pack(frames=env.frames, fields={**env.fields, field: value}, arrays=env.arrays), reply_to=msg)

    return handle


def test_bad_nodes_at_hello_are_excluded_and_the_run_continues(tmp_path: Path) -> None:
    """A node copying site-0's public identity key, one with another feature shape and
    one reporting num_classes = 10**9: each is excluded and logged, the three honest
    sites complete the run (the old server aborted, or sized the model by 10**9)."""
    files = _make_sites(tmp_path, count=6)
    site0 = load_site_config(files[0])
    copied = client_app.load_identity_key(site0).public_key().public_bytes_raw()
    handlers: dict[int, Any] = {11: client_app.app, 22: client_app.app, 33: client_app.app,
                                44: _tampering_hello("identity_key", copied),
                                55: _tampering_hello("feature_shape", [9]),
                                66: _tampering_hello("num_classes", 10**9)}
    grid = FakeGrid(handlers)
    for node, path in zip(sorted(handlers), files, strict=True):
        grid.contexts[node].node_config["site-config"] = str(path)
    settings = server_app.DeploymentSettings(
        config_path=str(_pilot_config(tmp_path, 1)), out_dir=tmp_path / "run", min_nodes=3,
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
    """After a real in-memory run, the server asks a site to countersign a doctored
    entry (another version, or a body that drops the site): the site refuses."""
    from flwr.app import RecordDict

    from audits.ledger import canonical_json
    from secure_fl.witness import remember_round

    files = _make_sites(tmp_path)
    site = load_site_config(files[0])
    state = RecordDict()
    from secure_fl.transport.flower.codec import get_state, put_state

    remember_round(state, version=3, session_id=b"s" * 32, put=put_state, get=get_state)
    body = {"version": 3, "cohort": ["site-0", "site-1"], "survivors": ["site-0", "site-1"],
            "measurements": {"session_id": (b"s" * 32).hex()}}

    def ask(b: dict[str, Any], index: int = 2) -> Envelope:
        env = Envelope(fields={"index": index, "prev_hash": "0" * 64, "body": canonical_json(b).decode()})
        return client_app.handle_witness(env, site, state)

    with pytest.raises(RemoteProtocolError, match="records version 4"):
        ask({**body, "version": 4})
    with pytest.raises(RemoteProtocolError, match="does not list site-0"):
        ask({**body, "survivors": ["site-1"]})
    with pytest.raises(RemoteProtocolError, match="another session id"):
        ask({**body, "measurements": {"session_id": "00"}})
    assert len(ask(body).fields["countersignature"]) == 64
    with pytest.raises(RemoteProtocolError):  # one signature per aggregation, never a second history
        ask(body)
