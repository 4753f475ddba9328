"""A ledger the server cannot rewrite (issue 14): survivors countersign every entry.

A small real simulated run (secagg + distributed discrete Gaussian, 6 clients, 3
aggregations) is audited as written, then attacked: rewritten and re-signed by the
server with its own key, one countersignature removed, and a roster swapped in the run
directory. Each attack fails ``secure-fl audit``, naming the first entry lacking valid
countersignatures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits.cli import audit_main
from audits.ledger import (
    LEDGER_FILENAME,
    PUBLIC_KEY_FILENAME,
    LedgerEntry,
    LedgerWriter,
    generate_server_key,
    load_public_key,
    save_public_key,
    verify_ledger,
)
from secure_fl.errors import RemoteProtocolError
from secure_fl.witness import Witness, WitnessRequest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import secure_fl

    out = tmp_path_factory.mktemp("witnessed") / "run"
    config = secure_fl.load_config(
        None, ["clients.num=6", "rounds=3", "protocol=secagg", "dp.mechanism=discrete_gaussian"]
    )
    secure_fl.run(config, out_dir=out, progress=False)
    return out


def _lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / LEDGER_FILENAME).read_text().splitlines()]


def _audit(run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, dict[str, Any]]:
    rc = audit_main([str(run), "--no-empirical", "--out", str(run / "audit"), *extra])
    return rc, capsys.readouterr().out, json.loads((run / "audit" / "audit.json").read_text())


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    return run


def test_every_survivor_countersigned_and_the_audit_says_so(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _lines(run_dir)
    assert len(lines) == 3
    for line in lines:
        assert sorted(line["countersignatures"]) == sorted(str(s) for s in line["body"]["survivors"])
    run = _copy(run_dir, tmp_path)
    rc, text, doc = _audit(run, capsys)
    assert rc == 0, text
    first = text.splitlines()[0]
    assert first.startswith("AUDIT PASS") and "countersignatures verified" in first, first
    assert doc["ledger"]["witnessed_entries"] == 3
    assert doc["ledger"]["countersignatures"] == sum(len(line["countersignatures"]) for line in lines)


def test_ledger_rewritten_and_resigned_by_the_server_fails(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server edits entry 1, re-hashes and re-signs the whole ledger with a key of its
    own (public key and summary anchors replaced too) and pastes the old countersignatures
    back: the server signature verifies, the clients' do not."""
    run = _copy(run_dir, tmp_path)
    old = _lines(run)
    (run / LEDGER_FILENAME).unlink()
    (run / PUBLIC_KEY_FILENAME).unlink()
    key = generate_server_key()
    save_public_key(key, run / PUBLIC_KEY_FILENAME)
    writer = LedgerWriter.create(run / LEDGER_FILENAME, key)
    for k, line in enumerate(old):
        body = line["body"]
        if k == 1:
            body["test_accuracy"] = 0.99
        writer.commit(writer.prepare(body), countersignatures=line["countersignatures"])
    summary = json.loads((run / "summary.json").read_text())
    summary.update(ledger_head=writer.head, ledger_entries=writer.next_index)
    (run / "summary.json").write_text(json.dumps(summary))
    report = verify_ledger(run / LEDGER_FILENAME, load_public_key(run / PUBLIC_KEY_FILENAME))
    assert report.ok  # without the roster, the forgery is self-consistent
    rc, text, doc = _audit(run, capsys)
    assert rc == 1 and text.startswith("AUDIT FAIL")
    first = doc["ledger"]["problems"][0]
    # entry 0 is unchanged (its hash and countersignatures still hold); entry 1 is the first rewritten
    assert first["kind"] == "unwitnessed" and first["entry_index"] == 1, first
    assert "entry 1 lacks valid countersignatures" in first["message"]
    assert "entry 1 lacks valid countersignatures" in text


def test_a_removed_countersignature_fails(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(run_dir, tmp_path)
    lines = (run / LEDGER_FILENAME).read_text().splitlines()
    obj = json.loads(lines[2])
    victim = sorted(obj["countersignatures"])[0]
    del obj["countersignatures"][victim]
    entry = LedgerEntry(obj["index"], obj["prev_hash"], obj["body"], obj["entry_hash"], obj["signature"],
                        obj["countersignatures"])
    lines[2] = entry.to_line().decode().rstrip("\n")
    (run / LEDGER_FILENAME).write_text("\n".join(lines) + "\n")
    rc, text, doc = _audit(run, capsys)
    assert rc == 1
    first = doc["ledger"]["problems"][0]
    assert first["kind"] == "unwitnessed" and first["entry_index"] == 2
    assert f"survivors {victim}" in first["message"]


def test_a_roster_swapped_in_the_run_directory_fails_against_the_sites_roster(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that rewrites the ledger *and* countersigns it with Sybil keys it lists in
    RUN_DIR/roster.toml passes a self-consistency audit, not one with the sites' roster."""
    run = _copy(run_dir, tmp_path)
    sites_roster = tmp_path / "sites-roster.toml"
    shutil.copy(run / "roster.toml", sites_roster)
    from audits.ledger import countersign
    from secure_fl.roster import build_roster, write_roster

    sybils = {str(c): Ed25519PrivateKey.generate() for c in range(6)}
    write_roster(build_roster({c: k.public_key().public_bytes_raw() for c, k in sybils.items()},
                              min_cohort=2, min_threshold=2), run / "roster.toml", overwrite=True)
    old = _lines(run)
    (run / LEDGER_FILENAME).unlink()
    (run / PUBLIC_KEY_FILENAME).unlink()
    key = generate_server_key()
    save_public_key(key, run / PUBLIC_KEY_FILENAME)
    writer = LedgerWriter.create(run / LEDGER_FILENAME, key)
    for line in old:
        pending = writer.prepare(line["body"])
        writer.commit(pending, countersignatures={
            str(s): countersign(pending.entry_hash, sybils[str(s)]) for s in line["body"]["survivors"]
        })
    summary = json.loads((run / "summary.json").read_text())
    summary.update(ledger_head=writer.head, ledger_entries=writer.next_index)
    (run / "summary.json").write_text(json.dumps(summary))
    rc, text, _ = _audit(run, capsys)
    assert rc == 0, text  # self-consistent: the run directory's own roster is the server's
    rc, text, doc = _audit(run, capsys, "--roster", str(sites_roster))
    assert rc == 1
    assert doc["ledger"]["problems"][0]["kind"] == "unwitnessed"
    assert doc["ledger"]["problems"][0]["entry_index"] == 0


def test_no_roster_at_all_fails_closed(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(run_dir, tmp_path)
    (run / "roster.toml").unlink()
    rc, text, _ = _audit(run, capsys)
    assert rc == 1 and "no roster" in text


def test_a_client_countersigns_only_what_it_took_part_in() -> None:
    key = Ed25519PrivateKey.generate()
    witness = Witness(key, member="3")
    body = {"version": 2, "cohort": [1, 3], "survivors": [1, 3], "measurements": {"session_id": "ab"}}
    with pytest.raises(RemoteProtocolError, match="version 2, this client took part in 1"):
        witness.countersign(WitnessRequest(1, "0" * 64, body), version=1)
    with pytest.raises(RemoteProtocolError, match="does not list 4"):
        Witness(key, member="4").countersign(WitnessRequest(1, "0" * 64, body), version=2)
    with pytest.raises(RemoteProtocolError, match="session id"):
        witness.countersign(WitnessRequest(1, "0" * 64, body), version=2, session_id="cd")
    witness.countersign(WitnessRequest(1, "0" * 64, body), version=2, session_id="ab")
    with pytest.raises(RemoteProtocolError, match="move forward"):  # a forked or replayed entry
        witness.countersign(WitnessRequest(1, "1" * 64, body), version=2, session_id="ab")
