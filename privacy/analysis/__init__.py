"""Pure privacy mathematics: RDP curves, paper bounds and conversions (no state).

Stateful accountants in :mod:`privacy.accountants` are built on these functions,
following Opacus's split between ``analysis`` and ``accountants``.
"""

from __future__ import annotations

from privacy.analysis.discrete import ddg_rdp, ddg_tau, skellam_rdp
from privacy.analysis.rdp import (
    DEFAULT_ORDERS,
    gaussian_rdp,
    poisson_subsampled_rdp_upper_bound,
    rdp_to_epsilon,
)

__all__ = [
    "DEFAULT_ORDERS",
    "ddg_rdp",
    "ddg_tau",
    "gaussian_rdp",
    "poisson_subsampled_rdp_upper_bound",
    "rdp_to_epsilon",
    "skellam_rdp",
]
