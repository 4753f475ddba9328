"""secure-fl: privacy-hardened secure aggregation for federated learning.

Entry points: :func:`run` (one federated job) and :func:`load_config` (TOML plus
``key=value`` overrides). See README.md and docs/.
"""

from __future__ import annotations

__version__ = "0.1.0"

from secure_fl.config import RunConfig, load_config  # noqa: E402
from secure_fl.runner import RunResult, run  # noqa: E402

__all__ = ["RunConfig", "RunResult", "__version__", "load_config", "run"]
