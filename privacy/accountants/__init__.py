"""Stateful privacy accountants (check the whole event, then compose) and their registry."""

from __future__ import annotations

from privacy.accountants.base import Accountant, BaseAccountant
from privacy.accountants.prv import PrvAccountant
from privacy.accountants.rdp import RdpAccountant, event_rdp
from privacy.accountants.registry import (
    ACCOUNTANTS,
    compute_epsilon,
    create_accountant,
    gaussian_training_event,
)

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "BaseAccountant",
    "PrvAccountant",
    "RdpAccountant",
    "compute_epsilon",
    "create_accountant",
    "event_rdp",
    "gaussian_training_event",
]
