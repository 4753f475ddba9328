"""Errors of the privacy package (rooted, like every secure-fl error, at SecureFLError)."""

from __future__ import annotations

from crypto.errors import SecureFLError

__all__ = ["AccountingError", "BudgetExhaustedError", "PrivacyError"]


class PrivacyError(SecureFLError):
    """A differential-privacy mechanism or accountant was misused."""


class AccountingError(PrivacyError):
    """An accountant cannot account for an event; it names the unsupported part."""


class BudgetExhaustedError(PrivacyError):
    """A privacy budget would be exceeded; the site or the run must stop."""
