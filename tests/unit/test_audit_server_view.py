"""The server-view audit: uniform masked uploads pass, a leaking upload is located,
missing histograms are "insufficient data" (never a pass), and the transcript is
bound to summary.json and to the ledger record by record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from audits.server_view import check_server_view, verify_transcript
from audits.transcript import TRANSCRIPT_FILENAME, TranscriptWriter

BITS = 16


def _transcript(*, leak: tuple[int, int] | None = None, corr: float | None = None) -> TranscriptWriter:
    rng = np.random.default_rng(0)
    tw = TranscriptWriter("secagg")
    for version in (1, 2):
        for sender in range(5):
            masked = rng.integers(0, 2**BITS, size=2000, dtype=np.uint32)
            if leak == (version, sender):
                masked = rng.integers(0, 300, size=2000, dtype=np.uint32)  # small unmasked integers
            tw.observe_masked_upload(version=version, sender=sender, masked=masked, bits=BITS)
            tw.add_message(version=version, sender=sender, stage="masked_input", size=4000, sha256="ab" * 32)
        if corr is not None:
            tw.add_statistic(version=version, name="max_abs_corr_masked_vs_true", value=corr)
    return tw


def test_uniform_uploads_pass() -> None:
    view = check_server_view("secagg", _transcript(corr=0.01).transcript())
    assert view.status == "pass" and view.uploads_tested == 10
    assert view.correlation_checks and all(c["ok"] for c in view.correlation_checks)


def test_unmasked_upload_fails_and_is_located() -> None:
    view = check_server_view("secagg", _transcript(leak=(2, 3)).transcript())
    assert view.status == "fail" and not view.ok
    assert [(u["version"], u["sender"]) for u in view.uploads_rejected] == [(2, 3)]
    assert "version 2 sender 3" in view.statement


def test_correlated_upload_fails() -> None:
    view = check_server_view("secagg", _transcript(corr=0.5).transcript())
    assert view.status == "fail" and "max_abs_corr_masked_vs_true" in view.statement


def test_no_histograms_is_not_a_pass() -> None:
    tw = TranscriptWriter("secagg")
    tw.add_message(version=1, sender=0, stage="masked_input", size=10, sha256="00" * 32)
    view = check_server_view("secagg", tw.transcript())
    assert view.status == "insufficient_data" and "Not enough data" in view.statement
    assert check_server_view("secagg", None).status == "insufficient_data"


def test_plain_and_ckks_are_stated() -> None:
    assert "in the clear" in check_server_view("plain", None).statement
    assert check_server_view("ckks", None).status == "ciphertext"


def test_transcript_bound_to_summary_and_ledger(tmp_path: Path) -> None:
    tw = _transcript()
    digest = tw.write(tmp_path / TRANSCRIPT_FILENAME)
    records = [[s, "masked_input", 4000, "ab" * 32] for s in range(5)]
    good = hashlib.sha256(json.dumps(records).encode()).hexdigest()
    bodies = [(1, {"version": 1, "transcript_records_sha256": good, "messages": 5}),
              (2, {"version": 2, "transcript_records_sha256": good, "messages": 5})]
    ok = verify_transcript(tmp_path, bodies, {"transcript_sha256": digest})
    assert ok.ok, ok.problems
    bad_summary = verify_transcript(tmp_path, bodies, {"transcript_sha256": "0" * 64})
    assert not bad_summary.ok and "summary.json transcript_sha256" in bad_summary.problems[0]
    bodies[1] = (2, {"version": 2, "transcript_records_sha256": "1" * 64, "messages": 4})
    bad_ledger = verify_transcript(tmp_path, bodies, {"transcript_sha256": digest})
    assert any("version 2" in p and "ledger line 2" in p for p in bad_ledger.problems)
    assert any("says 4" in p for p in bad_ledger.problems)
