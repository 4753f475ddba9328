"""``secure-fl audit`` end to end on small real runs (digits, 10 clients).

* a correct secagg + distributed discrete Gaussian run passes ``secure-fl audit`` (which
  hands the secure-fl replay to the audit), its canary lower bound below the claim;
* every tampering of the ledger (8 kinds) fails the audit and is located;
* a forged run (no noise, epsilon claimed, ledger re-signed with a new key) fails both
  the epsilon recomputation and the canary estimate;
* gradient inversion recovers the record from a plain update, not from the masked one;
* report.html loads in headless Chromium without console errors (when installed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from audits.empirical import gradient_inversion
from audits.ledger import (
    LEDGER_FILENAME,
    PUBLIC_KEY_FILENAME,
    SIGNATURE_LABEL,
    LedgerEntry,
    LedgerWriter,
    canonical_json,
    entry_hash_of,
    generate_server_key,
    save_public_key,
)
from secure_fl.audit_rerun import RunReplay
from secure_fl.cli import main as secure_fl_main


def audit_main(argv: list[str]) -> int:
    """``secure-fl audit ARGS`` through the real command line."""
    return secure_fl_main(["audit", *argv])

CHROMIUM = Path("/usr/bin/chromium")


def _run(out: Path, overrides: list[str]) -> Path:
    import secure_fl

    config = secure_fl.load_config(None, ["clients.num=10", *overrides])
    secure_fl.run(config, out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # epsilon = 8 claimed over 8 aggregations; the quick canary re-run uses 3 of them.
    return _run(tmp_path_factory.mktemp("good") / "run", ["rounds=8"])


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("plain") / "run", ["rounds=3", "protocol=plain", "dp.mechanism=none"])


@pytest.fixture(scope="module")
def good_audit(good_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("good_audit")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = audit_main([str(good_run), "--quick", "--out", str(out)])
    return rc, buf.getvalue(), json.loads((out / "audit.json").read_text()), out


def _audit(run_dir: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, dict[str, Any]]:
    rc = audit_main([str(run_dir), "--out", str(out), *extra])
    text = capsys.readouterr().out
    return rc, text, json.loads((out / "audit.json").read_text())


# --------------------------------------------------------------------- correct run


def test_correct_run_passes_with_estimate_below_claim(good_audit: tuple[int, str, dict[str, Any], Path]) -> None:
    rc, text, doc, out = good_audit
    assert rc == 0, text
    assert text.splitlines()[0].startswith("AUDIT PASS")
    assert doc["ledger"]["ok"] and doc["ledger"]["entries"] == 8
    assert doc["epsilon"]["status"] == "agree"
    canary = doc["empirical"]["canary"]
    claimed = float(canary["claimed_epsilon"])
    assert not canary["flagged"]
    assert float(canary["epsilon_lower_bound"]) < claimed
    assert canary["confidence"] == 0.99 and canary["setup"]["canaries_seen"] == 24
    # The runner records a top-bit histogram of every masked upload the server decoded
    # and the masked-vs-true correlation: both must look like uniform noise.
    assert doc["server_view"]["status"] == "pass"
    mia = doc["empirical"]["membership_inference"]
    assert {a["name"].split()[0] for a in mia["attacks"]} == {"loss", "reference-calibrated"}
    assert mia["nonmembers_evaluated"] > 100 and "FPR" in mia["note"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    for question in ("Unit of privacy", "Epsilon and delta", "Accountant and version", "Trust model"):
        assert question in html


# --------------------------------------------------------------------- ledger tampering


def _lines(run: Path) -> list[str]:
    return (run / LEDGER_FILENAME).read_text().splitlines(keepends=True)


def _write(run: Path, lines: list[str]) -> None:
    (run / LEDGER_FILENAME).write_text("".join(lines))


def _edit_body(run: Path) -> int:
    lines = _lines(run)
    obj = json.loads(lines[2])
    obj["body"]["survivors"] = obj["body"]["survivors"][1:]
    lines[2] = canonical_json(obj).decode() + "\n"
    _write(run, lines)
    return 3


def _delete(run: Path) -> int:
    lines = _lines(run)
    del lines[3]
    _write(run, lines)
    return 4


def _swap(run: Path) -> int:
    lines = _lines(run)
    lines[1], lines[2] = lines[2], lines[1]
    _write(run, lines)
    return 2


def _insert_forged(run: Path) -> int:
    lines = _lines(run)
    prev = json.loads(lines[1])
    body = dict(prev["body"], survivors=[])
    key = generate_server_key()
    h = entry_hash_of(2, prev["entry_hash"], body)
    sig = key.sign(SIGNATURE_LABEL + bytes.fromhex(h)).hex()
    lines.insert(2, LedgerEntry(2, prev["entry_hash"], body, h, sig).to_line().decode())
    _write(run, lines)
    return 3


def _duplicate(run: Path) -> int:
    lines = _lines(run)
    lines.insert(5, lines[1])
    _write(run, lines)
    return 6


def _truncate_end(run: Path) -> int:
    lines = _lines(run)
    _write(run, lines[:-1])
    return len(lines)


def _bad_signature(run: Path) -> int:
    lines = _lines(run)
    obj = json.loads(lines[4])
    sig = obj["signature"]
    obj["signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    lines[4] = canonical_json(obj).decode() + "\n"
    _write(run, lines)
    return 5


def _garble(run: Path) -> int:
    lines = _lines(run)
    lines[6] = lines[6][:40] + "}\n"
    _write(run, lines)
    return 7


TAMPERINGS: dict[str, tuple[Callable[[Path], int], str]] = {
    "edited body": (_edit_body, "bad_hash"),
    "deleted entry": (_delete, "index_gap"),
    "reordered entries": (_swap, "reordered"),
    "inserted entry signed by another key": (_insert_forged, "bad_signature"),
    "duplicated entry": (_duplicate, "duplicate"),
    "removed last entry": (_truncate_end, "truncated"),
    "altered signature": (_bad_signature, "bad_signature"),
    "garbled line": (_garble, "malformed"),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_tampered_ledger_is_detected_and_located(
    name: str, good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper, kind = TAMPERINGS[name]
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    line = tamper(run)
    rc, text, doc = _audit(run, tmp_path / "audit", capsys, "--no-empirical")
    assert rc == 1
    assert text.splitlines()[0].startswith("AUDIT FAIL")
    assert f"ledger line {line}" in text, text
    problems = doc["ledger"]["problems"]
    assert any(p["line"] == line and p["kind"] == kind for p in problems), problems


def test_tampered_transcript_and_config_fail(good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    doc = json.loads((run / "transcript.json").read_text())
    doc["records"][3]["size"] += 1
    (run / "transcript.json").write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    cfg = (run / "config.toml").read_text().replace("clip = 0.5", "clip = 5.0")
    (run / "config.toml").write_text(cfg)
    rc, text, result = _audit(run, tmp_path / "audit", capsys, "--no-empirical")
    assert rc == 1
    assert "transcript.json" in text and "summary.json transcript_sha256" in text
    assert any("records of version 1" in p for p in result["transcript"]["problems"])
    assert any(f.startswith("config.toml") for f in result["failures"])


# --------------------------------------------------------------------- broken run


def _forge_claims(run: Path, epsilon: float) -> None:
    """Claim epsilon on a run without noise; re-sign the ledger so signatures verify."""
    bodies = [json.loads(line)["body"] for line in _lines(run)]
    (run / LEDGER_FILENAME).unlink()
    (run / PUBLIC_KEY_FILENAME).unlink()
    key = generate_server_key()
    save_public_key(key, run / PUBLIC_KEY_FILENAME)
    writer = LedgerWriter.create(run / LEDGER_FILENAME, key)
    for body in bodies:
        body.update(
            epsilon_per_client={str(c): epsilon for c in body["survivors"]}, epsilon_max=epsilon, delta=1e-5
        )
        writer.append(body)
    summary = json.loads((run / "summary.json").read_text())
    summary.update(
        epsilon=epsilon,
        epsilon_against_server=epsilon,
        epsilon_released_model=epsilon,
        delta=1e-5,
        accountant="rdp",
        ledger_head=writer.head,
        ledger_entries=writer.next_index,
    )
    (run / "summary.json").write_text(json.dumps(summary))


def test_noise_disabled_but_epsilon_claimed_is_flagged(
    plain_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(plain_run, run)
    _forge_claims(run, 8.0)
    rc, text, doc = _audit(run, tmp_path / "audit", capsys, "--quick")
    assert rc == 1
    # the re-signed ledger carries no valid client countersignature (issue 14)...
    assert not doc["ledger"]["ok"] and doc["ledger"]["problems"][0]["kind"] == "unwitnessed"
    assert doc["epsilon"]["status"] == "disagree"  # ...and its events do not support the claim
    assert doc["epsilon"]["recomputed_epsilon"] == "inf"
    canary = doc["empirical"]["canary"]
    assert canary["flagged"] and float(canary["epsilon_lower_bound"]) > 8.0
    assert "canary estimate" in text and "epsilon:" in text


def test_claimed_noise_not_present_is_caught_by_canaries(
    good_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger is honest about what the code *believes* it added; the code adds nothing."""
    import numpy as np

    from audits.audit import audit_run
    from privacy.mechanisms.distributed import DistributedDiscreteGaussian

    monkeypatch.setattr(
        DistributedDiscreteGaussian, "_sample_noise", lambda self, size, rng: np.zeros(size, dtype=np.int64)
    )
    result = audit_run(good_run, out_dir=tmp_path, quick=True, replay=RunReplay)
    assert not result.ok
    assert result.document["epsilon"]["status"] == "agree"
    assert result.document["empirical"]["canary"]["flagged"]


# --------------------------------------------------------------------- run directories


def _interrupt(run: Path, after: int) -> None:
    """What an interrupted run leaves: ``after`` ledger entries and metrics lines, no
    summary, transcript or model (the runner writes those when the run ends)."""
    for name in ("summary.json", "transcript.json", "model.pt"):
        (run / name).unlink()
    for name in (LEDGER_FILENAME, "metrics.jsonl"):
        lines = (run / name).read_text().splitlines(keepends=True)
        (run / name).write_text("".join(lines[:after]))


def test_interrupted_run_gets_an_incomplete_verdict(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    _interrupt(run, 3)
    rc = audit_main([str(run), "--quick", "--out", str(tmp_path / "audit")])
    out = capsys.readouterr().out
    assert rc == 1
    first = out.splitlines()[0]
    assert first.startswith("AUDIT INCOMPLETE: incomplete run: 3 of 8 aggregations, no summary"), out
    assert "the 3 ledger entries present verify" in first
    assert "transcript.json" not in out and "Traceback" not in out
    doc = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert doc["status"] == "incomplete" and doc["aggregations_recorded"] == 3 and not doc["ok"]


@pytest.mark.parametrize("content", ["empty", "other files"])
def test_directory_that_is_not_a_run_is_a_usage_error(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "notarun"
    target.mkdir()
    if content == "other files":
        (target / "notes.txt").write_text("hello\n")
        (target / "results.csv").write_text("a,b\n1,2\n")
    rc = audit_main([str(target)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "not a run directory" in err and "config.toml" in err
    assert not (target / "audit.json").exists()


# --------------------------------------------------------------------- inversion


def test_gradient_inversion_plain_vs_secagg(plain_run: Path, good_run: Path) -> None:
    plain = gradient_inversion(RunReplay(plain_run))
    assert plain.recovered and plain.server_view_quality is not None
    assert plain.server_view_quality["correlation"] > 0.99 and plain.server_view_quality["ssim"] > 0.95
    masked = gradient_inversion(RunReplay(good_run))
    assert masked.unprotected_quality["correlation"] > 0.99  # the same update in the clear would leak
    assert masked.server_view_quality is not None and not masked.recovered
    assert abs(masked.server_view_quality["correlation"]) < 0.5


# --------------------------------------------------------------------- browser


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed")
def test_report_renders_in_headless_chromium(good_audit: tuple[int, str, dict[str, Any], Path]) -> None:
    out = good_audit[3]
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--enable-logging=stderr", "--v=0", "--dump-dom", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Privacy audit of a secure-fl run" in proc.stdout
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
