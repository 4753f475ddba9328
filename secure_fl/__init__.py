"""secure-fl: privacy-hardened secure aggregation for federated learning.

Entry points: :func:`run` (one federated job) and :func:`load_config` (TOML plus
``key=value`` overrides). See README.md and docs/.

Attributes are imported lazily (PEP 562) so that light users of the package (a Flower
SuperNode handling a protocol message, the CLI parsing arguments) do not pay for
importing torch until they train.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["RunConfig", "RunResult", "__version__", "load_config", "run"]

if TYPE_CHECKING:
    from secure_fl.config import RunConfig, load_config
    from secure_fl.runner import RunResult, run

_LAZY = {
    "RunConfig": "secure_fl.config",
    "load_config": "secure_fl.config",
    "RunResult": "secure_fl.runner",
    "run": "secure_fl.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'secure_fl' has no attribute {name!r}")
