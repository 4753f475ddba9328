"""secure-fl's exception tree, in one place.

Every error the library raises on purpose derives from :class:`SecureFLError`. The
classes of the cryptographic core live in :mod:`crypto.errors` and those of the privacy
package in :mod:`privacy.errors` (those packages do not depend on ``secure_fl``); they
are re-exported here so users import from one module::

    SecureFLError
    ├── ConfigError            a configuration field is invalid (names the field)
    ├── DataError              a data file is missing or malformed (names the file)
    ├── CheckpointError        a run directory cannot be resumed (names what disagrees)
    ├── CryptoError
    │   └── DecryptionError    opaque: one error for every decryption/authentication failure
    ├── ProtocolError
    │   ├── LocalProtocolError
    │   ├── RemoteProtocolError   carries ``sender`` so the round can exclude it
    │   └── RoundAbortedError     too few honest survivors
    ├── FieldOverflowError     a sum could wrap around silently
    └── PrivacyError
        ├── AccountingError    an accountant cannot account for an event
        └── BudgetExhaustedError
"""

from __future__ import annotations

from crypto.errors import (
    CryptoError,
    DecryptionError,
    FieldOverflowError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    RoundAbortedError,
    SecureFLError,
)
from privacy.errors import AccountingError, BudgetExhaustedError, PrivacyError

__all__ = [
    "AccountingError",
    "BudgetExhaustedError",
    "CheckpointError",
    "ConfigError",
    "CryptoError",
    "DataError",
    "DecryptionError",
    "FieldOverflowError",
    "LocalProtocolError",
    "PrivacyError",
    "ProtocolError",
    "RemoteProtocolError",
    "RoundAbortedError",
    "SecureFLError",
]


class ConfigError(SecureFLError):
    """The run configuration is invalid. ``field`` is the dotted name of the culprit."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class DataError(SecureFLError):
    """A data source is missing or malformed (missing file, label column, bad values)."""


class CheckpointError(SecureFLError):
    """A run cannot be resumed from its directory: the checkpoint is missing, damaged or
    not signed by the run's key, or disagrees with the ledger, the metrics or the
    configuration. ``field`` names the culprit when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
