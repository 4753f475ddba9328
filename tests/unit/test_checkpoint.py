"""Resume building blocks: state dicts restore exactly, the checkpoint is signed and
atomic, and recovery brings ledger and metrics to the checkpoint or refuses."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits.errors import LedgerVerificationError
from audits.ledger import (
    LEDGER_FILENAME,
    PUBLIC_KEY_FILENAME,
    LedgerEntry,
    LedgerWriter,
    canonical_json,
    countersign,
    save_public_key,
    verify_ledger,
)
from audits.transcript import TranscriptWriter, transcript_from_json
from crypto.prg import Csprng
from privacy import RdpAccountant
from privacy.budget import ClientBudgets
from privacy.errors import PrivacyError
from privacy.events import DiscreteGaussianSumEvent, GaussianEvent, PoissonSampledEvent
from secure_fl.clip_control import ClipController
from secure_fl.config import RunConfig, ServerConfig
from secure_fl.engine.checkpoint import (
    CHECKPOINT_FILENAME,
    SERVER_KEY_FILENAME,
    Snapshot,
    create_server_key,
    csprng_from_state,
    csprng_state,
    decode_tree,
    encode_tree,
    generator_from_state,
    generator_state,
    load_checkpoint,
    load_server_key,
    open_resume,
    recover,
    resume_snapshot,
    server_state_dir,
    write_checkpoint,
)
from secure_fl.errors import CheckpointError
from secure_fl.server_opt import ServerOptimizer
from secure_fl.sparsity import MagnitudePruner
from secure_fl.transport.flower.site import SiteBudget, SiteConfig

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
CLIENT = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
CFG = "ab" * 32


# -- CSPRNG and numpy generator positions ------------------------------------------------------
@pytest.mark.parametrize("offset", [0, 1, 15, 16, 17, 4095, 100_003])
def test_csprng_at_continues_the_stream_byte_for_byte(offset: int) -> None:
    seed = bytes(range(32))
    g = Csprng(seed)
    g.random_bytes(offset)
    rest = g.random_bytes(257)
    assert Csprng.at(seed, offset).random_bytes(257) == rest


def test_csprng_position_counts_every_draw_kind() -> None:
    g = Csprng(bytes(32))
    g.random_bytes(5)
    buf = bytearray(40)
    g.random_into(buf)
    g.uniform_mod_pow2(3, bits=16)
    g.integers_below(1000, 7)
    g.standard_normal(3)
    g.fork()
    seed, offset = g.position()
    copy = Csprng.at(seed, offset)
    assert copy.random_bytes(64) == g.random_bytes(64)
    assert copy.standard_normal(4).tolist() == g.standard_normal(4).tolist()


def test_csprng_state_is_withheld_unless_public() -> None:
    g = Csprng(bytes(32))
    assert csprng_state(g, public=False) is None
    assert csprng_from_state(None).random_bytes(16) != Csprng(bytes(32)).random_bytes(16)
    state = decode_tree(encode_tree(csprng_state(g, public=True)))
    assert csprng_from_state(state).random_bytes(16) == g.random_bytes(16)


def test_numpy_generator_state_round_trips_through_a_checkpoint_tree() -> None:
    rng = np.random.default_rng([7, 0x5EED])
    rng.random(13)
    restored = generator_from_state(decode_tree(json.loads(json.dumps(encode_tree(generator_state(rng))))))
    assert restored.random(5).tolist() == rng.random(5).tolist()


# -- state dicts ---------------------------------------------------------------------------------
def _tree_trip(state: object) -> object:
    """Through the checkpoint encoding and JSON text, as a resumed run sees it."""
    return decode_tree(json.loads(json.dumps(encode_tree(state))))


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_server_optimizer_resumes_bit_identically(opt: str) -> None:
    cfg = ServerConfig(optimizer=opt, lr=0.5)
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=6) for _ in range(4)]
    w = np.zeros(6)
    a = ServerOptimizer(cfg)
    for d in deltas[:2]:
        w = a.step(w, d)
    b = ServerOptimizer(cfg)
    b.load_state_dict(_tree_trip(a.state_dict()))  # type: ignore[arg-type]
    wa, wb = w, w
    for d in deltas[2:]:
        wa, wb = a.step(wa, d), b.step(wb, d)
    assert wa.tobytes() == wb.tobytes()


def test_server_optimizer_refuses_another_optimizers_state() -> None:
    a = ServerOptimizer(ServerConfig(optimizer="adam"))
    a.step(np.zeros(3), np.ones(3))
    with pytest.raises(CheckpointError, match="server.optimizer"):
        ServerOptimizer(ServerConfig(optimizer="momentum")).load_state_dict(a.state_dict())


def test_pruner_restores_its_mask_and_checks_its_schedule() -> None:
    prunable = np.array([True] * 8 + [False] * 2)
    p = MagnitudePruner(dim=10, density=0.5, start=0, end=4, prunable=prunable)
    w = np.arange(10, dtype=np.float64)
    p.update(w, 2)
    q = MagnitudePruner(dim=10, density=0.5, start=0, end=4, prunable=prunable)
    q.load_state_dict(_tree_trip(p.state_dict()))  # type: ignore[arg-type]
    assert q.mask.tolist() == p.mask.tolist() and not q.mask.all()
    assert q.update(w, 3).tolist() == p.update(w, 3).tolist()
    other = MagnitudePruner(dim=10, density=0.25, start=0, end=4, prunable=prunable)
    with pytest.raises(CheckpointError, match="density"):
        other.load_state_dict(p.state_dict())
    bad = p.state_dict()
    bad["mask"] = np.zeros(10, dtype=bool)  # prunes the non-prunable biases
    with pytest.raises(CheckpointError, match="not prunable"):
        q.load_state_dict(bad)


def _adaptive_config() -> RunConfig:
    return RunConfig().with_overrides(
        ["dp.mechanism=gaussian", "protocol=plain", "dp.noise_multiplier=1.0", "dp.adaptive_clip=true"]
    )


def test_adaptive_clip_resumes_at_the_clip_it_had_reached() -> None:
    config = _adaptive_config()
    a = ClipController(config, expected_clients=40)
    a.observe(3.0, num_clients=40)
    a.observe(-2.0, num_clients=40)
    b = ClipController(config, expected_clients=40)
    assert b.clip != a.clip
    b.load_state_dict(_tree_trip(a.state_dict()))  # type: ignore[arg-type]
    assert b.clip == a.clip and b.kappa == a.kappa
    with pytest.raises(CheckpointError, match="dp.adaptive_clip"):
        ClipController(config, expected_clients=60).load_state_dict(a.state_dict())


def test_client_budgets_resume_with_identical_epsilons_and_history() -> None:
    dg = DiscreteGaussianSumEvent(sigma=30.0, num_clients=5, l2_sensitivity=100.0, l1_sensitivity=1000.0, dimension=50)
    a = ClientBudgets(delta=1e-5, default_cap=math.inf, caps={3: 4.0})
    for v in range(3):
        a.join(3, GaussianEvent(2.0), aggregation=v)
        a.charge(1, dg)
    a.join(3, GaussianEvent(0.3), aggregation=9)  # refused: recorded
    b = ClientBudgets(delta=1e-5, default_cap=math.inf, caps={3: 4.0})
    b.load_state_dict(_tree_trip(a.state_dict()))  # type: ignore[arg-type]
    for c in (1, 3):
        assert b.epsilon(c) == a.epsilon(c)
        assert b.history(c) == a.history(c)
        assert b.aggregations_joined(c) == a.aggregations_joined(c)
    assert b.refusals == a.refusals
    b.charge(1, dg)
    a.charge(1, dg)
    assert b.epsilon(1) == a.epsilon(1)
    with pytest.raises(PrivacyError, match="delta"):
        ClientBudgets(delta=1e-6, caps={3: 4.0}).load_state_dict(a.state_dict())
    with pytest.raises(PrivacyError, match="caps"):
        ClientBudgets(delta=1e-5, caps={3: 5.0}).load_state_dict(a.state_dict())


def test_rdp_accountant_from_curve() -> None:
    acc = RdpAccountant()
    acc.compose(PoissonSampledEvent(0.1, GaussianEvent(1.1)))
    again = RdpAccountant.from_curve(acc.orders, [float(x) for x in acc.rdp])
    assert again.epsilon(1e-5) == acc.epsilon(1e-5)
    with pytest.raises(ValueError):
        RdpAccountant.from_curve(acc.orders, [-1.0] * len(acc.orders))


def test_transcript_writer_resumes_from_its_json() -> None:
    tw = TranscriptWriter("secagg")
    tw.add_message(version=1, sender=2, stage="masked_input", size=10, sha256="0" * 64)
    tw.observe_masked_upload(version=1, sender=2, masked=np.arange(32, dtype=np.uint32), bits=16)
    tw.add_statistic(version=1, name="corr", value=0.1)
    again = TranscriptWriter.from_transcript(transcript_from_json(_tree_trip(tw.transcript().to_json())))
    assert again.transcript() == tw.transcript()


def test_transcript_writer_resumes_from_its_compact_state() -> None:
    """The checkpoint's columnar transcript state restores the writer exactly, and a
    damaged state is refused with the field named."""
    from audits.errors import TranscriptError

    tw = TranscriptWriter("secagg")
    for v in (1, 2):
        for sender, stage in ((0, "advertise"), (3, "masked_input"), (1, "unmask")):
            tw.add_message(version=v, sender=sender, stage=stage, size=100 * v + sender,
                           sha256=hashlib.sha256(bytes([v, sender])).hexdigest())
        tw.observe_masked_upload(version=v, sender=3, masked=np.arange(64, dtype=np.uint32), bits=16)
        tw.add_statistic(version=v, name="corr", value=0.25 * v)
    again = TranscriptWriter.from_state(_tree_trip(tw.state()))
    assert again.transcript() == tw.transcript()
    assert TranscriptWriter.from_state(_tree_trip(TranscriptWriter("plain").state())).transcript() == (
        TranscriptWriter("plain").transcript())
    good = _tree_trip(tw.state())
    for field, bad in (("digests", good["digests"][:-1]), ("senders", good["senders"][:-1]),
                       ("stage_codes", good["stage_codes"] + 7), ("sizes", [1, 2]), ("stages", "advertise")):
        with pytest.raises(TranscriptError):
            TranscriptWriter.from_state({**good, field: bad})


def test_budget_history_compaction_round_trips_and_refuses_dangling_indices() -> None:
    from secure_fl.engine.checkpoint import _compact_history, _expand_history

    a = ClientBudgets(delta=1e-5, default_cap=math.inf)
    for v in range(4):
        for c in range(5):
            a.charge(c, GaussianEvent(2.0 + (v % 2)))
    compact = _tree_trip(_compact_history(a.state_dict()))
    assert len(compact["events"]) == 2  # one entry per distinct event, not per charge
    b = ClientBudgets(delta=1e-5, default_cap=math.inf)
    b.load_state_dict(_expand_history(compact))
    assert all(b.history(c) == a.history(c) and b.epsilon(c) == a.epsilon(c) for c in range(5))
    compact["history"][0][1] = np.array([0, 5])
    with pytest.raises(CheckpointError, match="do not exist"):
        _expand_history(compact)


# -- tree encoding -------------------------------------------------------------------------------
def test_tree_encoding_round_trips_exactly() -> None:
    tree = {
        "w": np.linspace(-1, 1, 7, dtype=np.float32).reshape(7, 1),
        "mask": np.array([True, False]),
        "ints": {3: "a", 10: [1, 2]},
        "t": (1, 2.5, None),
        "cap": math.inf,
        "neg": -math.inf,
        "b": b"\x00\xff",
        "ev": PoissonSampledEvent(0.25, GaussianEvent(1.5)),
        "x": 0.1,
    }
    back = _tree_trip(tree)
    assert isinstance(back, dict)
    assert back["w"].dtype == np.float32 and back["w"].shape == (7, 1)
    assert back["w"].tobytes() == tree["w"].tobytes()  # type: ignore[union-attr]
    assert back["mask"].dtype == np.bool_
    assert back["ints"] == {3: "a", 10: [1, 2]}
    assert back["t"] == (1, 2.5, None) and back["cap"] == math.inf and back["neg"] == -math.inf
    assert back["b"] == b"\x00\xff" and back["ev"] == tree["ev"] and back["x"] == 0.1


@pytest.mark.parametrize(
    "bad", [{"nan": math.nan}, {"$x": 1}, {1: 1, "a": 2}, {"o": object()}, {"a": np.array([np.inf])}]
)
def test_tree_encoding_refuses_what_it_cannot_restore(bad: object) -> None:
    with pytest.raises(CheckpointError):
        encode_tree(bad)


# -- the checkpoint file -------------------------------------------------------------------------
def _ledger(run: Path, n: int) -> LedgerWriter:
    save_public_key(KEY, run / PUBLIC_KEY_FILENAME)
    ledger = LedgerWriter.create(run / LEDGER_FILENAME, KEY)
    for v in range(1, n + 1):
        _commit(ledger, v)
    return ledger


def _body(v: int) -> dict[str, object]:
    return {"version": v, "survivors": [9], "cohort": [9], "aborted": None}


def _commit(ledger: LedgerWriter, v: int) -> None:
    entry = ledger.prepare(_body(v))
    ledger.commit(entry, countersignatures={"9": countersign(entry.entry_hash, CLIENT)})


def _snapshot(ledger: LedgerWriter, v: int, *, ahead: bool) -> tuple[Snapshot, bytes]:
    """The checkpoint of aggregation v; ``ahead``: its entry prepared but not committed."""
    entry = ledger.prepare(_body(v))
    signed = LedgerEntry(
        entry.index, entry.prev_hash, entry.body, entry.entry_hash, entry.signature,
        {"9": countersign(entry.entry_hash, CLIENT).hex()},
    )
    line = signed.to_line()
    if not ahead:
        ledger.commit(entry, countersignatures={"9": countersign(entry.entry_hash, CLIENT)})
    snap = Snapshot(
        run_id="r1",
        version=v,
        config_sha256=CFG,
        ledger_entries=v,
        ledger_head=entry.entry_hash,
        metrics_lines=v,
        ledger_line=line[:-1].decode(),
        metrics_line=json.dumps({"version": v}),
        state={"w": np.ones(3, dtype=np.float32), "budgets": {1: [GaussianEvent(2.0)]}},
    )
    return snap, line


def _metrics(run: Path, n: int) -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps({"version": v}) + "\n" for v in range(1, n + 1)))


def test_checkpoint_is_signed_and_refuses_edits(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 2)
    snap, _ = _snapshot(ledger, 3, ahead=False)
    write_checkpoint(tmp_path, snap, KEY)
    loaded = load_checkpoint(tmp_path, KEY.public_key())
    assert loaded is not None and loaded.version == 3 and loaded.run_id == "r1"
    assert loaded.state["budgets"] == {1: [GaussianEvent(2.0)]}
    again = resume_snapshot(tmp_path)
    assert again is not None and (again.version, again.ledger_head) == (loaded.version, loaded.ledger_head)
    assert loaded.state["w"].tobytes() == np.ones(3, dtype=np.float32).tobytes()
    assert not list(tmp_path.glob(".checkpoint*"))  # no temp file left behind
    raw = (tmp_path / CHECKPOINT_FILENAME).read_bytes()  # the file is itself canonical JSON
    assert raw == canonical_json(json.loads(raw)) + b"\n"
    # someone without the key resets the budgets: refused
    doc = json.loads((tmp_path / CHECKPOINT_FILENAME).read_text())
    doc["checkpoint"]["state"]["budgets"] = {"$intmap": []}
    (tmp_path / CHECKPOINT_FILENAME).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(tmp_path, KEY.public_key())
    # ... and recomputes the digest: the signature still fails
    doc["sha256"] = hashlib.sha256(canonical_json(doc["checkpoint"])).hexdigest()
    (tmp_path / CHECKPOINT_FILENAME).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="signature"):
        load_checkpoint(tmp_path, KEY.public_key())


def test_recover_when_ledger_and_metrics_match(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 2)
    snap, _ = _snapshot(ledger, 3, ahead=False)
    _metrics(tmp_path, 4)  # a metrics line written after the checkpoint is dropped
    assert recover(tmp_path, snap, KEY.public_key(), config_sha256=CFG) == "ledger matches the checkpoint"
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == [json.dumps({"version": v}) for v in (1, 2, 3)]


@pytest.mark.parametrize("torn", [0, 1, 40])
def test_recover_rolls_the_written_ahead_entry_forward(tmp_path: Path, torn: int) -> None:
    ledger = _ledger(tmp_path, 2)
    snap, line = _snapshot(ledger, 3, ahead=True)
    if torn:
        with open(tmp_path / LEDGER_FILENAME, "ab") as fh:
            fh.write(line[:torn])  # crash in the middle of the append
    _metrics(tmp_path, 2)
    note = recover(tmp_path, snap, KEY.public_key(), config_sha256=CFG)
    assert "rolled ledger entry 2 forward" in note
    report = verify_ledger(
        tmp_path / LEDGER_FILENAME, KEY.public_key(), client_public_keys={"9": CLIENT.public_key()},
        require_witnesses=True, expected_entries=3, expected_head=snap.ledger_head,
    )
    assert report.ok and report.entries == 3 and report.witnessed == 3
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    writer = LedgerWriter.resume(tmp_path / LEDGER_FILENAME, KEY, expected_entries=3, expected_head=snap.ledger_head)
    _commit(writer, 4)
    assert verify_ledger(tmp_path / LEDGER_FILENAME, KEY.public_key()).entries == 4


def test_recover_refuses_an_entry_committed_after_the_checkpoint(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 2)
    snap, _ = _snapshot(ledger, 3, ahead=False)
    _commit(ledger, 4)
    _metrics(tmp_path, 4)
    with pytest.raises(CheckpointError, match="committed after the last checkpoint"):
        recover(tmp_path, snap, KEY.public_key())


def test_recover_refuses_a_removed_tail_a_damaged_chain_and_another_config(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 3)
    snap, _ = _snapshot(ledger, 4, ahead=False)
    _metrics(tmp_path, 4)
    with pytest.raises(CheckpointError, match="config_sha256"):
        recover(tmp_path, snap, KEY.public_key(), config_sha256="cd" * 32)
    path = tmp_path / LEDGER_FILENAME
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))  # two entries removed
    with pytest.raises(CheckpointError, match="tail removed"):
        recover(tmp_path, snap, KEY.public_key())
    path.write_bytes(lines[0] + lines[2] + lines[1] + lines[3])  # reordered
    with pytest.raises(CheckpointError, match="fails verification"):
        recover(tmp_path, snap, KEY.public_key())


def test_ledger_resume_checks_the_checkpoint_anchors(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 3)
    head = ledger.head
    with pytest.raises(LedgerVerificationError):
        LedgerWriter.resume(tmp_path / LEDGER_FILENAME, KEY, expected_entries=2)
    with pytest.raises(LedgerVerificationError):
        LedgerWriter.resume(tmp_path / LEDGER_FILENAME, KEY, expected_head="0" * 64)
    other = Ed25519PrivateKey.from_private_bytes(bytes([5]) * 32)
    with pytest.raises(LedgerVerificationError):
        LedgerWriter.resume(tmp_path / LEDGER_FILENAME, other)
    writer = LedgerWriter.resume(tmp_path / LEDGER_FILENAME, KEY, expected_entries=3, expected_head=head)
    assert writer.next_index == 3 and writer.head == head


# -- the server key --------------------------------------------------------------------------------
def test_server_key_lives_outside_the_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    key = create_server_key(run)
    state = server_state_dir(run)
    assert state == tmp_path / "run.server"
    assert stat.S_IMODE(os.stat(state / SERVER_KEY_FILENAME).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert not any(p.suffix == ".key" for p in run.iterdir())
    assert load_server_key(run).public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    os.chmod(state / SERVER_KEY_FILENAME, 0o644)
    with pytest.raises(CheckpointError, match="0600"):
        load_server_key(run)
    with pytest.raises(CheckpointError, match="missing"):
        load_server_key(run, state_dir=tmp_path / "elsewhere")


def test_open_resume_end_to_end(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    key = create_server_key(run)
    ledger = LedgerWriter.create(run / LEDGER_FILENAME, key)
    entry = ledger.prepare(_body(1))
    snap = Snapshot(
        run_id="r9", version=1, config_sha256=CFG, ledger_entries=1, ledger_head=entry.entry_hash,
        metrics_lines=1, ledger_line=entry.to_line()[:-1].decode(), metrics_line='{"version": 1}',
    )
    write_checkpoint(run, snap, key)  # crash before the ledger commit
    resumed = open_resume(run, config_sha256=CFG)
    assert resumed.snapshot == snap and resumed.run_id == "r9"
    assert resumed.ledger.next_index == 1 and resumed.ledger.head == entry.entry_hash
    (run / "summary.json").write_text("{}")
    with pytest.raises(CheckpointError, match="finished run"):
        open_resume(run, config_sha256=CFG)


# -- the site's charge-once rule ---------------------------------------------------------------------
def _site(tmp_path: Path) -> SiteConfig:
    return SiteConfig(name="clinic", data=tmp_path / "none.csv", keys_dir=tmp_path / "keys", budget_cap=50.0)


def test_site_is_charged_once_per_release_even_across_processes(tmp_path: Path) -> None:
    site = _site(tmp_path)
    event = GaussianEvent(2.0)
    budget = SiteBudget(site, delta=1e-5)
    assert budget.charge(event, version=3, run="r1", session="s1") is True
    once = budget.epsilon()
    # the SuperNode re-processes the same message after a restart: same release, no charge
    again = SiteBudget(site, delta=1e-5)
    assert again.charged(run="r1", version=3, session="s1")
    assert again.charge(event, version=3, run="r1", session="s1") is False
    assert again.epsilon() == once
    assert len((site.keys_dir / "budget.jsonl").read_text().splitlines()) == 1


def test_a_rerun_of_an_aggregation_is_a_new_release_and_is_charged(tmp_path: Path) -> None:
    """Attack: a server fakes a crash after unmasking aggregation 3, "resumes" and re-runs
    version 3 in a new session, collecting a second independently noised sum. Two
    releases: the site must pay twice, or averaging the sums strips the noise unnoticed."""
    site = _site(tmp_path)
    event = GaussianEvent(2.0)
    budget = SiteBudget(site, delta=1e-5)
    budget.charge(event, version=3, run="r1", session="first")
    budget.charge(event, version=3, run="r1", session="after-restart")
    two = ClientBudgets(delta=1e-5)
    two.charge("x", event)
    two.charge("x", event)
    assert budget.epsilon() == pytest.approx(two.epsilon("x"))
    # without a session id there is nothing to tell releases apart: always charged
    budget.charge(event, version=4, run="r1")
    budget.charge(event, version=4, run="r1")
    assert len((site.keys_dir / "budget.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("sites", [(0, 1), ("hospital-1", "hospital-2")])
def test_record_level_accountants_resume_under_any_site_names(sites: tuple[int, int] | tuple[str, str]) -> None:
    """DP-SGD accountants are keyed by the party's ident: the simulator's client index,
    or on Flower the site's name; both must survive a checkpoint (a Flower run with
    ``dp.record_level`` crashed at its first checkpoint on ``int('hospital-1')``)."""
    from secure_fl.accounting import RunPrivacy, calibrate_config
    from secure_fl.engine.checkpoint import load_privacy_state, privacy_state
    from secure_fl.runner import make_aggregator

    config = calibrate_config(RunConfig())
    a = RunPrivacy(config, make_aggregator(config, dim=8))
    for i, site in enumerate(sites):
        a.record_training(site, PoissonSampledEvent(0.1 * (i + 1), GaussianEvent(1.1)))  # type: ignore[arg-type]
    b = RunPrivacy(config, make_aggregator(config, dim=8))
    load_privacy_state(b, _tree_trip(privacy_state(a)))  # type: ignore[arg-type]
    assert b.record_epsilons() == a.record_epsilons()
    assert set(b.record_accountants) == set(sites)
