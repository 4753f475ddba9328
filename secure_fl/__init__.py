"""secure-fl: privacy-hardened secure aggregation for federated learning.

Entry points: :func:`run` (one federated job) and :func:`load_config` (TOML plus
``key=value`` overrides; protection a file leaves unsaid is inherited from the embedded
default). Derive a configuration with :meth:`RunConfig.with_overrides`. Bring your own
pieces to :func:`run`: ``model_fn`` (any ``torch.nn.Module``), ``sites`` (each site's
``(x, y)`` arrays or map-style dataset, :data:`SiteSource`) and ``loss_fn``
(:data:`LossFn`). See README.md and docs/.

Attributes are imported lazily (PEP 562) so that light users of the package (a Flower
SuperNode handling a protocol message, the CLI parsing arguments) do not pay for
importing torch until they train.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "LossFn",
    "RunConfig",
    "RunResult",
    "SecureFLError",
    "SiteSource",
    "__version__",
    "federated_data_from_sites",
    "load_config",
    "run",
]

if TYPE_CHECKING:
    from secure_fl.config import RunConfig, load_config
    from secure_fl.data import SiteSource, federated_data_from_sites
    from secure_fl.errors import ConfigError, DataError, SecureFLError
    from secure_fl.runner import RunResult, run
    from secure_fl.training import LossFn

_LAZY = {
    "RunConfig": "secure_fl.config",
    "load_config": "secure_fl.config",
    "RunResult": "secure_fl.runner",
    "run": "secure_fl.runner",
    "SiteSource": "secure_fl.data",
    "federated_data_from_sites": "secure_fl.data",
    "LossFn": "secure_fl.training",
    "ConfigError": "secure_fl.errors",
    "DataError": "secure_fl.errors",
    "SecureFLError": "secure_fl.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'secure_fl' has no attribute {name!r}")
