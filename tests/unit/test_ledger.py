"""The signed ledger: a clean ledger verifies; every tampering is detected *and located*."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audits.errors import KeyFileError, LedgerError, LedgerVerificationError, LedgerWriteError
from audits.ledger import (
    GENESIS_HASH,
    LEDGER_FILENAME,
    PUBLIC_KEY_FILENAME,
    SIGNATURE_LABEL,
    LedgerWriter,
    canonical_json,
    countersign,
    entry_hash_of,
    generate_server_key,
    load_ledger,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
    verify_countersignature,
    verify_ledger,
)

N = 6
SERVER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
CLIENTS = {cid: Ed25519PrivateKey.from_private_bytes(bytes([cid]) * 32) for cid in (3, 7)}


def body(i: int) -> dict[str, object]:
    return {
        "version": i,
        "config_hash": "ab" * 32,
        "cohort": [1, 3, 5, 7],
        "survivors": [1, 3, 7],
        "dropped": {"masked_input": [5]},
        "staleness_weights": {"1": 1.0, "3": 0.5, "7": 0.1 + 0.2},
        "dp_event": {"type": "gaussian", "noise_multiplier": 1.1},
        "epsilon": 0.25 * (i + 1),
        "note": "hôpital",
        "flags": (True, None),
    }


def write(path: Path, key: Ed25519PrivateKey = SERVER, n: int = N) -> LedgerWriter:
    writer = LedgerWriter.create(path, key)
    for i in range(n):
        writer.append(body(i))
    return writer


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / LEDGER_FILENAME
    write(path)
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def put(path: Path, new_lines: list[bytes]) -> None:
    path.write_bytes(b"".join(new_lines))


def only_problem(path: Path, **kw: object) -> tuple[int, int | None, str, str]:
    report = verify_ledger(path, SERVER.public_key(), **kw)  # type: ignore[arg-type]
    assert not report.ok
    assert len(report.problems) == 1, report.problems
    first = report.first_problem
    assert first is not None
    return first


# --------------------------------------------------------------------------- clean ledger


def test_clean_ledger_verifies(ledger: Path) -> None:
    report = verify_ledger(ledger, SERVER.public_key())
    assert report.ok and report.problems == () and report.first_problem is None
    assert report.entries == N
    entries = load_ledger(
        ledger, SERVER.public_key(), expected_entries=N, expected_head=report.head
    )
    assert [e.index for e in entries] == list(range(N))
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.entry_hash for a, b in zip(entries, entries[1:], strict=False))
    assert entries[-1].entry_hash == report.head
    assert entries[2].body["flags"] == [True, None]  # tuples are stored as lists
    assert entries[2].body["staleness_weights"]["7"] == 0.1 + 0.2  # floats bit-exact


def test_entry_format_matches_documentation(ledger: Path) -> None:
    first = json.loads(lines(ledger)[0])
    assert set(first) == {"index", "prev_hash", "body", "entry_hash", "signature"}
    expected = entry_hash_of(0, GENESIS_HASH, first["body"])
    assert first["entry_hash"] == expected
    SERVER.public_key().verify(
        bytes.fromhex(first["signature"]), SIGNATURE_LABEL + bytes.fromhex(expected)
    )
    assert lines(ledger)[0] == canonical_json(first) + b"\n"


def test_empty_ledger_is_ok_but_anchor_catches_deletion(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    LedgerWriter.create(path, SERVER)
    assert verify_ledger(path, SERVER.public_key()).ok
    line, index, kind, _ = only_problem(path, expected_entries=2)
    assert (line, index, kind) == (1, 0, "truncated")


# --------------------------------------------------------------------------- tampering


def test_edited_body_value(ledger: Path) -> None:
    ls = lines(ledger)
    obj = json.loads(ls[2])
    obj["body"]["epsilon"] = 0.01  # make the run look more private
    ls[2] = canonical_json(obj) + b"\n"
    put(ledger, ls)
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (3, 2, "bad_hash")


def test_edited_body_with_recomputed_hash(ledger: Path) -> None:
    ls = lines(ledger)
    obj = json.loads(ls[2])
    obj["body"]["survivors"] = [1, 3, 5, 7]
    obj["entry_hash"] = entry_hash_of(2, obj["prev_hash"], obj["body"])
    ls[2] = canonical_json(obj) + b"\n"
    put(ledger, ls)
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (3, 2, "bad_signature")


def test_deleted_middle_entry(ledger: Path) -> None:
    ls = lines(ledger)
    del ls[3]
    put(ledger, ls)
    line, index, kind, message = only_problem(ledger)
    assert (line, index, kind) == (4, 4, "index_gap")
    assert "entry 3 missing" in message


def test_deleted_first_entry(ledger: Path) -> None:
    put(ledger, lines(ledger)[1:])
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (1, 1, "index_gap")


@pytest.mark.parametrize("forger", ["other_key", "unsigned"])
def test_inserted_forged_entry(ledger: Path, forger: str) -> None:
    ls = lines(ledger)
    prev = json.loads(ls[2])["entry_hash"]
    forged_body = body(3) | {"epsilon": 0.0}
    digest = entry_hash_of(3, prev, forged_body)
    sig = (
        OTHER.sign(SIGNATURE_LABEL + bytes.fromhex(digest)).hex()
        if forger == "other_key"
        else "00" * 64
    )
    forged = {
        "index": 3,
        "prev_hash": prev,
        "body": json.loads(canonical_json(forged_body)),
        "entry_hash": digest,
        "signature": sig,
    }
    ls.insert(3, canonical_json(forged) + b"\n")
    put(ledger, ls)
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (4, 3, "bad_signature")


def test_swapped_entries(ledger: Path) -> None:
    ls = lines(ledger)
    ls[2], ls[3] = ls[3], ls[2]
    put(ledger, ls)
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (3, 3, "reordered")


def test_entry_moved_to_the_end(ledger: Path) -> None:
    ls = lines(ledger)
    moved = ls.pop(2)
    put(ledger, ls + [moved])
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (N, 2, "reordered")


def test_duplicated_entry(ledger: Path) -> None:
    ls = lines(ledger)
    ls.insert(3, ls[2])
    put(ledger, ls)
    line, index, kind, message = only_problem(ledger)
    assert (line, index, kind) == (4, 2, "duplicate")
    assert "line 3" in message


def test_truncated_last_line(ledger: Path) -> None:
    data = ledger.read_bytes()
    ledger.write_bytes(data[: len(data) - 40])
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (N, None, "truncated")


def test_last_line_without_newline(ledger: Path) -> None:
    ledger.write_bytes(ledger.read_bytes()[:-1])
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (N, N - 1, "truncated")


@pytest.mark.parametrize("garbage", [b"garbage", b"", b"\xff\xfe", b"[1, 2]", b'{"index": 2}'])
def test_garbled_middle_line(ledger: Path, garbage: bytes) -> None:
    ls = lines(ledger)
    ls[2] = garbage + b"\n"
    put(ledger, ls)
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (3, None, "malformed")


def test_non_canonical_but_equivalent_line(ledger: Path) -> None:
    ls = lines(ledger)
    ls[1] = json.dumps(json.loads(ls[1]), indent=1).replace("\n", " ").encode() + b"\n"
    put(ledger, ls)
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (2, None, "malformed")


def test_altered_signature(ledger: Path) -> None:
    ls = lines(ledger)
    obj = json.loads(ls[1])
    sig = bytearray(bytes.fromhex(obj["signature"]))
    sig[10] ^= 1
    obj["signature"] = sig.hex()
    ls[1] = canonical_json(obj) + b"\n"
    put(ledger, ls)
    line, index, kind, _ = only_problem(ledger)
    assert (line, index, kind) == (2, 1, "bad_signature")


def test_wrong_public_key(ledger: Path) -> None:
    report = verify_ledger(ledger, OTHER.public_key())
    assert not report.ok and report.entries == 0
    assert [(p.line, p.entry_index, p.kind) for p in report.problems] == [
        (i + 1, i, "bad_signature") for i in range(N)
    ]


def test_ledger_resigned_with_another_key(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    write(path, key=OTHER)  # the same history, re-signed by someone else
    report = verify_ledger(path, SERVER.public_key())
    assert report.first_problem is not None
    assert report.first_problem[:3] == (1, 0, "bad_signature")
    assert len(report.problems) == N


def test_tail_truncation_needs_an_anchor(ledger: Path) -> None:
    head = verify_ledger(ledger, SERVER.public_key()).head
    put(ledger, lines(ledger)[:-2])
    assert verify_ledger(ledger, SERVER.public_key()).ok  # a valid prefix: undetectable alone
    line, index, kind, _ = only_problem(ledger, expected_entries=N)
    assert (line, index, kind) == (N - 1, N - 2, "truncated")
    line, index, kind, _ = only_problem(ledger, expected_head=head)
    assert (line, index, kind) == (N - 1, N - 2, "truncated")


def test_entries_appended_after_the_anchor(ledger: Path) -> None:
    ls = lines(ledger)
    anchored_head = json.loads(ls[3])["entry_hash"]
    line, index, kind, _ = only_problem(ledger, expected_entries=4)
    assert (line, index, kind) == (5, 4, "broken_chain")
    line, _, kind, _ = only_problem(ledger, expected_head=anchored_head)
    assert (line, kind) == (5, "broken_chain")


def test_forked_chain_signed_by_the_key_holder(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write(a)
    writer = LedgerWriter.create(b, SERVER)
    writer.append(body(0))
    writer.append(body(1))
    writer.append(body(2) | {"epsilon": 0.0})  # a second, different entry 2
    ls = lines(a)
    ls.insert(3, lines(b)[2])
    put(a, ls)
    report = verify_ledger(a, SERVER.public_key())
    assert not report.ok
    assert {p.kind for p in report.problems} == {"broken_chain"}
    assert report.first_problem is not None and report.first_problem.line in (3, 4)


def test_missing_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    report = verify_ledger(tmp_path / "nope.jsonl", SERVER.public_key())
    assert not report.ok and report.first_problem is not None


def test_random_garbage_never_raises(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    rng = np.random.default_rng(0)
    path.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    assert not verify_ledger(path, SERVER.public_key()).ok


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_is_detected(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "prop.jsonl"
    if not path.exists():
        write(path, n=3)
    original = path.read_bytes()
    pos = data.draw(st.integers(0, len(original) - 1))
    delta = data.draw(st.integers(1, 255))
    tampered = bytearray(original)
    tampered[pos] ^= delta
    target = tmp_path / "tampered.jsonl"
    target.write_bytes(bytes(tampered))
    report = verify_ledger(target, SERVER.public_key(), expected_entries=3)
    assert not report.ok
    assert report.first_problem is not None and 1 <= report.first_problem.line <= 4


def test_invalid_arguments_raise(ledger: Path) -> None:
    with pytest.raises(LedgerError):
        verify_ledger(ledger, SERVER.public_key(), expected_head="xyz")
    with pytest.raises(LedgerError):
        verify_ledger(ledger, SERVER.public_key(), expected_entries=-1)
    with pytest.raises(LedgerError):
        verify_ledger(ledger, b"short")


# --------------------------------------------------------------------------- writer


def test_create_refuses_an_existing_ledger(ledger: Path) -> None:
    with pytest.raises(LedgerWriteError):
        LedgerWriter.create(ledger, SERVER)


@pytest.mark.parametrize(
    ("bad", "location"),
    [
        ({"eps": float("nan")}, "body.eps"),
        ({"w": [1.0, float("inf")]}, "body.w[1]"),
        ({"by_client": {3: 1.0}}, "body.by_client"),
        ({"x": np.int64(1)}, "body.x"),
        ({"s": {1, 2}}, "body.s"),
    ],
)
def test_append_rejects_non_canonical_body(
    tmp_path: Path, bad: dict[str, object], location: str
) -> None:
    writer = LedgerWriter.create(tmp_path / LEDGER_FILENAME, SERVER)
    with pytest.raises(LedgerWriteError) as info:
        writer.append(bad)
    assert info.value.location == location
    assert writer.next_index == 0 and (tmp_path / LEDGER_FILENAME).read_bytes() == b""


def test_canonical_json_rules() -> None:
    assert canonical_json({"b": 1, "a": [0.1, 1e16, -0.0, 10**30], "c": "é"}) == (
        '{"a":[0.1,1e+16,-0.0,1000000000000000000000000000000],"b":1,"c":"é"}'.encode()
    )


def test_resume_continues_the_chain(ledger: Path) -> None:
    writer = LedgerWriter.resume(ledger, SERVER)
    assert writer.next_index == N
    writer.append(body(N))
    report = verify_ledger(
        ledger, SERVER.public_key(), expected_entries=N + 1, expected_head=writer.head
    )
    assert report.ok


def test_resume_refuses_a_damaged_ledger(ledger: Path) -> None:
    ls = lines(ledger)
    del ls[1]
    put(ledger, ls)
    with pytest.raises(LedgerVerificationError) as info:
        LedgerWriter.resume(ledger, SERVER)
    assert (info.value.line, info.value.entry_index, info.value.kind) == (2, 2, "index_gap")


def test_commit_refuses_a_stale_prepared_entry(tmp_path: Path) -> None:
    writer = LedgerWriter.create(tmp_path / LEDGER_FILENAME, SERVER)
    pending = writer.prepare(body(0))
    writer.append(body(0))
    with pytest.raises(LedgerWriteError):
        writer.commit(pending)


# --------------------------------------------------------------------------- countersignatures


def test_countersignatures(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    writer = LedgerWriter.create(path, SERVER)
    for i in range(3):
        pending = writer.prepare(body(i))
        sigs = {cid: countersign(pending.entry_hash, key) for cid, key in CLIENTS.items()}
        entry = writer.commit(pending, countersignatures=sigs)
        assert set(entry.countersignatures) == {"3", "7"}
    client_pub = {cid: key.public_key() for cid, key in CLIENTS.items()}
    assert verify_ledger(path, SERVER.public_key(), client_public_keys=client_pub).ok

    wrong = {3: CLIENTS[7].public_key(), 7: CLIENTS[7].public_key()}
    report = verify_ledger(path, SERVER.public_key(), client_public_keys=wrong)
    assert [(p.line, p.kind) for p in report.problems] == [
        (1, "bad_signature"),
        (2, "bad_signature"),
        (3, "bad_signature"),
    ]
    assert "client 3" in report.problems[0].message

    unknown = verify_ledger(
        path, SERVER.public_key(), client_public_keys={3: CLIENTS[3].public_key()}
    )
    assert {p.message for p in unknown.problems} == {"countersignature from unknown client 7"}

    # Stripping a countersignature is outside the hash: not detected (documented).
    ls = lines(path)
    obj = json.loads(ls[1])
    del obj["countersignatures"]["7"]
    ls[1] = canonical_json(obj) + b"\n"
    put(path, ls)
    assert verify_ledger(path, SERVER.public_key(), client_public_keys=client_pub).ok


def test_countersignature_is_domain_separated() -> None:
    digest = "cd" * 32
    key = CLIENTS[3]
    sig = countersign(digest, key)
    assert verify_countersignature(digest, sig, key.public_key())
    assert verify_countersignature(digest, sig.hex(), key.public_key().public_bytes_raw())
    assert not verify_countersignature("ce" + digest[2:], sig, key.public_key())
    assert not verify_countersignature(digest, sig, CLIENTS[7].public_key())
    assert not verify_countersignature(digest, sig[:10], key.public_key())
    server_style = key.sign(SIGNATURE_LABEL + bytes.fromhex(digest))
    assert not verify_countersignature(digest, server_style, key.public_key())


# --------------------------------------------------------------------------- keys


def test_key_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    key = generate_server_key()
    assert (
        key.public_key().public_bytes_raw() != generate_server_key().public_key().public_bytes_raw()
    )
    pub_path = save_public_key(key, run_dir / PUBLIC_KEY_FILENAME)
    assert load_public_key(pub_path).public_bytes_raw() == key.public_key().public_bytes_raw()
    save_public_key(key.public_key(), pub_path)  # same key again: no-op
    with pytest.raises(KeyFileError):
        save_public_key(OTHER, pub_path)

    with pytest.raises(KeyFileError):  # never inside the run directory
        save_private_key(key, run_dir / "server.pem")

    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    plain = save_private_key(key, secrets_dir / "server.pem")
    assert stat.S_IMODE(os.stat(plain).st_mode) == 0o600
    assert load_private_key(plain).private_bytes_raw() == key.private_bytes_raw()
    with pytest.raises(KeyFileError):
        save_private_key(key, plain)  # no overwrite

    locked = save_private_key(key, secrets_dir / "server-locked.pem", password=b"pw")
    assert b"ENCRYPTED" in locked.read_bytes()
    assert load_private_key(locked, password=b"pw").private_bytes_raw() == key.private_bytes_raw()
    with pytest.raises(KeyFileError):
        load_private_key(locked, password=b"wrong")
    with pytest.raises(KeyFileError):
        load_public_key(plain)
