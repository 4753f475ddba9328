"""The root of secure-fl's exception tree, and the errors of the cryptographic core.

``crypto`` depends on nothing else in secure-fl, so the root class lives here; the
public place to import every error from is :mod:`secure_fl.errors`.

Tree::

    SecureFLError
    ├── ConfigError                    (secure_fl.errors)  invalid configuration field
    ├── DataError                      (secure_fl.errors)  missing/malformed data files
    ├── CryptoError                    opaque failure of a cryptographic operation
    │   └── DecryptionError            one error for every decryption/authentication failure
    ├── ProtocolError                  a protocol round cannot proceed
    │   ├── LocalProtocolError         *we* were asked to do something illegal
    │   ├── RemoteProtocolError        a peer sent something illegal (malformed, replayed, ...)
    │   └── RoundAbortedError          too few honest survivors: the round is abandoned
    ├── FieldOverflowError             a sum could wrap around in Z_2^b
    └── PrivacyError                   (privacy.errors)
        ├── AccountingError            an accountant cannot account for an event
        └── BudgetExhaustedError       a privacy budget is spent
"""

from __future__ import annotations

__all__ = [
    "CryptoError",
    "DecryptionError",
    "FieldOverflowError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "RoundAbortedError",
    "SecureFLError",
]


class SecureFLError(Exception):
    """Base class of every error secure-fl raises on purpose."""


class CryptoError(SecureFLError):
    """A cryptographic operation failed (bad key, bad length, bad parameters)."""


class DecryptionError(CryptoError):
    """Decryption or authentication failed.

    Deliberately opaque: the message never says *why* (wrong key, truncated bytes,
    forged tag), so that the error is not an oracle for an attacker.
    """

    def __init__(self, message: str = "decryption failed") -> None:
        super().__init__(message)


class ProtocolError(SecureFLError):
    """A protocol round cannot proceed as asked."""


class LocalProtocolError(ProtocolError):
    """Our own side was asked to do something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """A peer sent a message the protocol forbids (malformed, replayed, out of stage).

    ``sender`` names the offending party when it is known, so the round can exclude it.
    """

    def __init__(self, message: str, *, sender: int | None = None) -> None:
        super().__init__(message)
        self.sender = sender


class RoundAbortedError(ProtocolError):
    """The round was abandoned: too few honest survivors remain for the threshold.

    Nothing about any individual input is revealed when this is raised.
    """


class FieldOverflowError(SecureFLError):
    """A configured field size cannot hold the sum without silent wrap-around."""
