"""Audits of a secure-fl run: the signed privacy ledger, the server-view transcript and
the JSON codec of DP events.

* :mod:`audits.ledger` -- append-only, hash-chained, Ed25519-signed ``ledger.jsonl``;
  :func:`verify_ledger` locates every tampering it can detect and documents what it
  cannot (a key holder rewriting everything unless the head is anchored elsewhere).
* :mod:`audits.transcript` -- ``transcript.json``: message digests and top-bit
  histograms of masked uploads, with a chi-square :func:`uniformity_test`.
* :mod:`audits.events_codec` -- exact, strict JSON round trip of ``privacy.events``.
* :mod:`audits.audit` -- :func:`audit_run`, the pipeline of ``secure-fl audit``
  (CLI: :func:`audits.cli.audit_main`), writing ``audit.json`` and ``report.html``.
* :mod:`audits.epsilon_check` -- independent recomputation of epsilon from the ledger.
* :mod:`audits.server_view` -- transcript verification and the server-view audit.
* :mod:`audits.empirical` -- one-shot canary estimate (failing a run only on a one-sided
  lower confidence bound), membership inference, gradient inversion; they re-run the
  job through a :class:`audits.replay.JobReplay` their caller supplies (``audits``
  never imports ``secure_fl``).
* :mod:`audits.replay` -- what the empirical tests need from the software that made a run.
* :mod:`audits.report` -- the self-contained HTML report.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Submodule of each public name. Imported on first use (PEP 562): `import audits.ledger`
# from a run must not pay for dp_accounting, which only the epsilon check needs.
_EXPORTS: dict[str, str] = {
    "AUDIT_JSON": "audits.audit",
    "AUDIT_REPORT": "audits.audit",
    "AuditResult": "audits.audit",
    "NotARunError": "audits.audit",
    "audit_run": "audits.audit",
    "canary_check": "audits.audit",
    "CANARY_CONFIDENCE": "audits.empirical",
    "CanaryBound": "audits.empirical",
    "CanaryResult": "audits.empirical",
    "EmpiricalSizes": "audits.empirical",
    "InversionResult": "audits.empirical",
    "MiaResult": "audits.empirical",
    "canary_estimate": "audits.empirical",
    "canary_lower_bound": "audits.empirical",
    "epsilon_two_gaussians": "audits.empirical",
    "gradient_inversion": "audits.empirical",
    "membership_inference": "audits.empirical",
    "one_shot_epsilon": "audits.empirical",
    "EpsilonCheck": "audits.epsilon_check",
    "check_epsilon": "audits.epsilon_check",
    "EventCodecError": "audits.errors",
    "KeyFileError": "audits.errors",
    "LedgerError": "audits.errors",
    "LedgerVerificationError": "audits.errors",
    "LedgerWriteError": "audits.errors",
    "TranscriptError": "audits.errors",
    "decode_event": "audits.events_codec",
    "encode_event": "audits.events_codec",
    "LEDGER_FILENAME": "audits.ledger",
    "LedgerEntry": "audits.ledger",
    "LedgerProblem": "audits.ledger",
    "LedgerReport": "audits.ledger",
    "LedgerWriter": "audits.ledger",
    "PUBLIC_KEY_FILENAME": "audits.ledger",
    "canonical_json": "audits.ledger",
    "countersign": "audits.ledger",
    "generate_server_key": "audits.ledger",
    "load_ledger": "audits.ledger",
    "load_private_key": "audits.ledger",
    "load_public_key": "audits.ledger",
    "save_private_key": "audits.ledger",
    "save_public_key": "audits.ledger",
    "verify_countersignature": "audits.ledger",
    "verify_ledger": "audits.ledger",
    "CanaryRerun": "audits.replay",
    "JobFacts": "audits.replay",
    "JobReplay": "audits.replay",
    "Records": "audits.replay",
    "ReplayFactory": "audits.replay",
    "ServerViewResult": "audits.server_view",
    "TranscriptCheck": "audits.server_view",
    "check_server_view": "audits.server_view",
    "verify_transcript": "audits.server_view",
    "TRANSCRIPT_FILENAME": "audits.transcript",
    "Transcript": "audits.transcript",
    "TranscriptWriter": "audits.transcript",
    "load_transcript": "audits.transcript",
    "top_bits_histogram": "audits.transcript",
    "transcript_digest": "audits.transcript",
    "uniformity_test": "audits.transcript",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from audits.audit import (
        AUDIT_JSON,
        AUDIT_REPORT,
        AuditResult,
        NotARunError,
        audit_run,
        canary_check,
    )
    from audits.empirical import (
        CANARY_CONFIDENCE,
        CanaryBound,
        CanaryResult,
        EmpiricalSizes,
        InversionResult,
        MiaResult,
        canary_estimate,
        canary_lower_bound,
        epsilon_two_gaussians,
        gradient_inversion,
        membership_inference,
        one_shot_epsilon,
    )
    from audits.epsilon_check import EpsilonCheck, check_epsilon
    from audits.errors import (
        EventCodecError,
        KeyFileError,
        LedgerError,
        LedgerVerificationError,
        LedgerWriteError,
        TranscriptError,
    )
    from audits.events_codec import decode_event, encode_event
    from audits.ledger import (
        LEDGER_FILENAME,
        PUBLIC_KEY_FILENAME,
        LedgerEntry,
        LedgerProblem,
        LedgerReport,
        LedgerWriter,
        canonical_json,
        countersign,
        generate_server_key,
        load_ledger,
        load_private_key,
        load_public_key,
        save_private_key,
        save_public_key,
        verify_countersignature,
        verify_ledger,
    )
    from audits.replay import CanaryRerun, JobFacts, JobReplay, Records, ReplayFactory
    from audits.server_view import (
        ServerViewResult,
        TranscriptCheck,
        check_server_view,
        verify_transcript,
    )
    from audits.transcript import (
        TRANSCRIPT_FILENAME,
        Transcript,
        TranscriptWriter,
        load_transcript,
        top_bits_histogram,
        transcript_digest,
        uniformity_test,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "AUDIT_JSON",
    "AUDIT_REPORT",
    "CANARY_CONFIDENCE",
    "AuditResult",
    "CanaryBound",
    "CanaryRerun",
    "CanaryResult",
    "JobFacts",
    "JobReplay",
    "NotARunError",
    "Records",
    "ReplayFactory",
    "canary_check",
    "canary_lower_bound",
    "EmpiricalSizes",
    "EpsilonCheck",
    "InversionResult",
    "MiaResult",
    "ServerViewResult",
    "TranscriptCheck",
    "audit_run",
    "canary_estimate",
    "check_epsilon",
    "check_server_view",
    "epsilon_two_gaussians",
    "gradient_inversion",
    "membership_inference",
    "one_shot_epsilon",
    "verify_transcript",
    "LEDGER_FILENAME",
    "PUBLIC_KEY_FILENAME",
    "TRANSCRIPT_FILENAME",
    "EventCodecError",
    "KeyFileError",
    "LedgerEntry",
    "LedgerError",
    "LedgerProblem",
    "LedgerReport",
    "LedgerVerificationError",
    "LedgerWriteError",
    "LedgerWriter",
    "Transcript",
    "TranscriptError",
    "TranscriptWriter",
    "canonical_json",
    "countersign",
    "decode_event",
    "encode_event",
    "generate_server_key",
    "load_ledger",
    "load_private_key",
    "load_public_key",
    "load_transcript",
    "save_private_key",
    "save_public_key",
    "top_bits_histogram",
    "transcript_digest",
    "uniformity_test",
    "verify_countersignature",
    "verify_ledger",
]
