"""Audits of a secure-fl run: the signed privacy ledger, the server-view transcript and
the JSON codec of DP events.

* :mod:`audits.ledger` -- append-only, hash-chained, Ed25519-signed ``ledger.jsonl``;
  :func:`verify_ledger` locates every tampering it can detect and documents what it
  cannot (a key holder rewriting everything unless the head is anchored elsewhere).
* :mod:`audits.transcript` -- ``transcript.json``: message digests and top-bit
  histograms of masked uploads, with a chi-square :func:`uniformity_test`.
* :mod:`audits.events_codec` -- exact, strict JSON round trip of ``privacy.events``.
"""

from __future__ import annotations

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
from audits.transcript import (
    TRANSCRIPT_FILENAME,
    Transcript,
    TranscriptWriter,
    load_transcript,
    top_bits_histogram,
    transcript_digest,
    uniformity_test,
)

__all__ = [
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
