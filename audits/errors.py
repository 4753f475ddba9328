"""Errors of the audit package: every one names *where* the problem is.

``audits`` depends on ``crypto`` and ``privacy`` but not on ``secure_fl``, so the tree
hangs off :class:`crypto.errors.SecureFLError` directly::

    SecureFLError
    └── LedgerError                 an audit artifact cannot be written, read or trusted
        ├── LedgerWriteError        an entry cannot be appended (body not canonical JSON,
        │                           I/O failure, writer out of sync with the file)
        ├── LedgerVerificationError an existing ledger fails verification where the
        │                           caller asked for a strict answer (e.g. resuming)
        ├── KeyFileError            a key file is unreadable, of the wrong type, or
        │                           would be written where it must not be
        ├── TranscriptError         a transcript is malformed or a statistic is invalid
        └── EventCodecError         a DP event cannot be encoded or decoded

Every error carries ``location``: a JSON path such as ``body.cohort[3]`` or
``records[12].sha256``, a file path, or ``line 7`` -- whatever pins the problem down.

Note that :func:`audits.ledger.verify_ledger` never raises on tampering: a tampered
ledger is an *answer* (a :class:`~audits.ledger.LedgerReport`), not an exception.
"""

from __future__ import annotations

from crypto.errors import SecureFLError

__all__ = [
    "EventCodecError",
    "KeyFileError",
    "LedgerError",
    "LedgerVerificationError",
    "LedgerWriteError",
    "TranscriptError",
]


class LedgerError(SecureFLError):
    """Root of the audit errors. ``location`` says where the problem is (or ``None``)."""

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.location = location


class LedgerWriteError(LedgerError):
    """An entry cannot be appended; ``location`` is the offending body path or file."""


class LedgerVerificationError(LedgerError):
    """A ledger failed verification where a strict (raising) answer was requested.

    ``line`` (1-based), ``entry_index`` (``None`` when unknown) and ``kind`` are
    those of the first problem found; see :class:`audits.ledger.LedgerProblem`.
    """

    def __init__(self, message: str, *, line: int, entry_index: int | None, kind: str) -> None:
        super().__init__(message, location=f"line {line}")
        self.line = line
        self.entry_index = entry_index
        self.kind = kind


class KeyFileError(LedgerError):
    """A key file is unreadable, holds the wrong key type, or would be misplaced."""


class TranscriptError(LedgerError):
    """A transcript document or statistic is malformed; ``location`` is its JSON path."""


class EventCodecError(LedgerError):
    """A DP event cannot be encoded or decoded; ``location`` is its JSON path."""
