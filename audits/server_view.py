"""What the server saw: transcript verification and the server-view audit.

Transcript verification (:func:`verify_transcript`)
----------------------------------------------------
``transcript.json`` must parse strictly (:func:`audits.transcript.load_transcript`),
its SHA-256 must equal ``summary.json``'s ``transcript_sha256``, and for every ledger
entry the digest of that aggregation's message records,
``SHA-256(json.dumps([[sender, stage, size, sha256], ...]))`` (the runner's recipe), must
equal the entry's ``transcript_records_sha256`` and their number its ``messages``. The
signed ledger thereby vouches for the transcript record by record.

Server view (:func:`check_server_view`)
---------------------------------------
* ``secagg``: each masked upload ``y = x + m mod 2^b`` must be uniform on Z_2^b
  whatever ``x`` is. The transcript keeps a 16-bin histogram of the top 4 bits of each
  upload; Pearson's chi-square test with 15 degrees of freedom,
  ``X^2 = sum_j (O_j - N/16)^2 / (N/16)``, is run per upload at the Bonferroni level
  ``alpha / m`` (``m`` uploads in the run, ``alpha = 1e-3``) and on every aggregation's
  pooled histogram. Correlation statistics recorded by the simulation harness (names
  containing ``corr``: e.g. the largest absolute Pearson correlation between a masked
  upload and the client's true update, or between two uploads) must stay below
  ``z_{1 - alpha/(2m)} / sqrt(n)`` with ``n`` the coordinates per upload (the null
  distribution of a sample correlation of independent vectors is ~N(0, 1/n)). Without
  histograms the result is ``insufficient_data``, never a pass.
* ``plain``: the server received every individual update in the clear; stated as such.
* ``ckks``: the server received ciphertexts only; decryption needs the secret key of a
  separate key holder (see ``docs/threat-model.md``).

Limits: histograms test each upload's marginal distribution; a reused mask yields
uniform marginals too, which only the correlation statistics can catch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audits.errors import TranscriptError
from audits.transcript import (
    TRANSCRIPT_FILENAME,
    Transcript,
    load_transcript,
    transcript_digest,
    uniformity_test,
)

__all__ = [
    "ServerViewResult",
    "TranscriptCheck",
    "check_server_view",
    "verify_transcript",
]

ALPHA = 1e-3


@dataclass
class TranscriptCheck:
    """Outcome of :func:`verify_transcript`; ``problems`` are located strings."""

    ok: bool
    present: bool
    digest: str | None
    claimed_digest: str | None
    records: int
    problems: list[str] = field(default_factory=list)
    transcript: Transcript | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "present": self.present,
            "sha256": self.digest,
            "summary_sha256": self.claimed_digest,
            "records": self.records,
            "problems": self.problems,
        }


def verify_transcript(
    run_dir: str | Path, ledger_bodies: Sequence[tuple[int, dict[str, Any]]], summary: dict[str, Any]
) -> TranscriptCheck:
    """Check ``transcript.json`` against ``summary.json`` and the ledger (module docstring)."""
    path = Path(run_dir) / TRANSCRIPT_FILENAME
    claimed = summary.get("transcript_sha256")
    claimed_s = claimed if isinstance(claimed, str) else None
    if not path.is_file():
        return TranscriptCheck(False, False, None, claimed_s, 0, [f"{TRANSCRIPT_FILENAME}: missing"])
    problems: list[str] = []
    digest = transcript_digest(path)
    if claimed_s is None:
        problems.append("summary.json transcript_sha256: missing, the transcript is not anchored")
    elif digest != claimed_s:
        problems.append(
            f"{TRANSCRIPT_FILENAME}: SHA-256 {digest[:16]}... differs from summary.json "
            f"transcript_sha256 {claimed_s[:16]}... (the file was changed after the run)"
        )
    try:
        transcript = load_transcript(path)
    except TranscriptError as exc:
        problems.append(f"{TRANSCRIPT_FILENAME} {exc.location or ''}: {exc}")
        return TranscriptCheck(False, True, digest, claimed_s, 0, problems)
    by_version: dict[int, list[list[Any]]] = {}
    for r in transcript.records:
        by_version.setdefault(r.version, []).append([r.sender, r.stage, r.size, r.sha256])
    ledger_versions = set()
    for line, body in ledger_bodies:
        version = body.get("version")
        if not isinstance(version, int):
            continue
        ledger_versions.add(version)
        records = by_version.get(version, [])
        want = body.get("transcript_records_sha256")
        got = hashlib.sha256(json.dumps(records).encode()).hexdigest()
        if want is not None and want != got:
            problems.append(
                f"{TRANSCRIPT_FILENAME} records of version {version}: digest does not match "
                f"ledger line {line} body.transcript_records_sha256"
            )
        count = body.get("messages")
        if isinstance(count, int) and count != len(records):
            problems.append(
                f"{TRANSCRIPT_FILENAME} records of version {version}: {len(records)} messages, "
                f"ledger line {line} body.messages says {count}"
            )
    extra = sorted(set(by_version) - ledger_versions)
    if extra and ledger_bodies:
        problems.append(f"{TRANSCRIPT_FILENAME}: records for versions {extra} that no ledger entry covers")
    return TranscriptCheck(not problems, True, digest, claimed_s, len(transcript.records), problems, transcript)


@dataclass
class ServerViewResult:
    """Outcome of :func:`check_server_view`.

    ``status``: ``pass``, ``fail``, ``insufficient_data`` (secagg without histograms),
    ``plaintext`` (plain: the server saw every update) or ``ciphertext`` (ckks).
    """

    protocol: str
    status: str
    statement: str
    uploads_tested: int = 0
    uploads_rejected: list[dict[str, Any]] = field(default_factory=list)
    aggregations: list[dict[str, Any]] = field(default_factory=list)
    correlation_checks: list[dict[str, Any]] = field(default_factory=list)
    threshold: float | None = None
    min_p_value: float | None = None
    p_values: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """False only for a demonstrated failure; plaintext/insufficient are hazards."""
        return self.status != "fail"

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "status": self.status,
            "statement": self.statement,
            "uploads_tested": self.uploads_tested,
            "bonferroni_threshold": self.threshold,
            "min_p_value": self.min_p_value,
            "uploads_rejected": self.uploads_rejected[:50],
            "aggregations": self.aggregations,
            "correlation_checks": self.correlation_checks[:50],
        }


def check_server_view(protocol: str, transcript: Transcript | None, *, alpha: float = ALPHA) -> ServerViewResult:
    """Audit the server's view of the run (see the module docstring)."""
    if protocol == "plain":
        return ServerViewResult(
            protocol,
            "plaintext",
            "The server saw every individual client update in the clear (protocol = plain). "
            "Secure aggregation was not used; only the DP noise, if any, protects the released model, "
            "and nothing protects an individual update from the server.",
        )
    if protocol == "ckks":
        return ServerViewResult(
            protocol,
            "ciphertext",
            "The server received CKKS ciphertexts only and holds the public context, not the secret key; "
            "a separate key holder decrypts only the aggregate. Server and key holder colluding breaks this "
            "(docs/threat-model.md, section 1.3).",
        )
    if protocol != "secagg":
        return ServerViewResult(protocol, "insufficient_data", f"unknown protocol {protocol!r}: not audited")
    aggs = transcript.aggregations if transcript is not None else ()
    uploads = [(a, u) for a in aggs for u in a.uploads]
    corr = [(a, name, value) for a in aggs for name, value in a.statistics.items() if "corr" in name.lower()]
    if not uploads:
        return ServerViewResult(
            protocol,
            "insufficient_data",
            "Not enough data: the transcript holds no per-upload histograms of the masked vectors, so "
            "uniformity of what the server saw cannot be tested (the runner must record "
            "TranscriptWriter.observe_masked_upload for each masked input).",
        )
    m = len(uploads)
    threshold = alpha / m
    result = ServerViewResult(protocol, "pass", "", uploads_tested=0, threshold=threshold)
    p_values: list[float] = []
    for a, u in uploads:
        try:
            stat, p = uniformity_test(list(u.top4_histogram))
        except TranscriptError as exc:
            result.uploads_rejected.append(
                {"version": a.version, "sender": u.sender, "reason": f"not testable: {exc}"}
            )
            continue
        result.uploads_tested += 1
        p_values.append(p)
        if p < threshold:
            result.uploads_rejected.append(
                {"version": a.version, "sender": u.sender, "chi2": stat, "p_value": p,
                 "histogram": list(u.top4_histogram)}
            )
    for a in aggs:
        if not a.uploads:
            continue
        try:
            stat, p = uniformity_test(list(a.top4_histogram))
        except TranscriptError:
            continue
        entry = {"version": a.version, "uploads": len(a.uploads), "coordinates": a.coordinates,
                 "chi2": stat, "p_value": p, "rejected": p < alpha / max(1, len(aggs))}
        result.aggregations.append(entry)
    from scipy import stats  # deferred: scipy.stats is slow to import

    for a, name, value in corr:
        n = max((u.coordinates for u in a.uploads), default=0)
        k = max(1, len(a.uploads))
        bound = float(stats.norm.isf(alpha / (2 * k * max(1, len(aggs))))) / math.sqrt(n) if n else math.inf
        result.correlation_checks.append(
            {"version": a.version, "statistic": name, "value": value, "bound": bound, "ok": abs(value) <= bound}
        )
    result.p_values = p_values
    result.min_p_value = min(p_values) if p_values else None
    failed = [u for u in result.uploads_rejected if "p_value" in u]
    failed_aggs = [a for a in result.aggregations if a["rejected"]]
    failed_corr = [c for c in result.correlation_checks if not c["ok"]]
    if failed or failed_aggs or failed_corr:
        result.status = "fail"
        where = "; ".join(
            [f"version {u['version']} sender {u['sender']} p={u['p_value']:.2e}" for u in failed[:5]]
            + [f"version {a['version']} pooled p={a['p_value']:.2e}" for a in failed_aggs[:3]]
            + [f"version {c['version']} {c['statistic']}={c['value']:.3g} > {c['bound']:.3g}" for c in failed_corr[:3]]
        )
        result.statement = (
            f"FAIL: masked uploads the server saw are not indistinguishable from uniform ({where}). "
            "Masking did not hide these inputs."
        )
    elif result.uploads_tested == 0:
        result.status = "insufficient_data"
        result.statement = "Not enough data: no upload histogram had enough coordinates for a chi-square test."
    else:
        corr_note = (
            f" {len(result.correlation_checks)} correlation statistics are within their bounds."
            if result.correlation_checks
            else " No correlation statistics were recorded, so correlation with the true updates is not tested."
        )
        result.statement = (
            f"{result.uploads_tested} masked uploads pass the chi-square uniformity test of their top 4 bits "
            f"at the Bonferroni level {threshold:.2g} (smallest p = {result.min_p_value:.3g})." + corr_note
        )
    return result
