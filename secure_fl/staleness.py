"""Staleness weights for semi-asynchronous aggregation (FedBuff / FedAsync style).

A client that trained from server version ``v0`` and is aggregated into the buffer
closed at version ``v`` has staleness ``tau = v - v0 >= 0``. Its clipped update is
multiplied by ``s(tau) in (0, 1]`` *by the client itself* (it checks the tau the server
announced in the signed cohort set-up), and the server divides the secure sum by the
public sum of weights. Functions (Xie, Koyejo, Gupta, "Asynchronous Federated
Optimization", 2019; Nguyen et al., "FedBuff", AISTATS 2022):

* ``constant``:   s(tau) = 1
* ``polynomial``: s(tau) = (1 + tau)^(-a)
* ``hinge``:      s(tau) = 1 if tau <= b else 1 / (a (tau - b) + 1)

Because ``s(tau) <= 1``, weighting never increases a client's L2 sensitivity.
"""

from __future__ import annotations

from typing import Literal

from secure_fl.errors import ProtocolError

__all__ = ["StaleUpdateError", "check_staleness", "staleness_weight"]

StalenessFn = Literal["constant", "polynomial", "hinge"]


class StaleUpdateError(ProtocolError):
    """An update is staler than the configured bound and is rejected."""


def staleness_weight(tau: int, *, fn: StalenessFn, a: float = 0.5, b: float = 4.0) -> float:
    """The weight ``s(tau)`` of an update with staleness ``tau`` (see module docstring).

    >>> staleness_weight(3, fn="polynomial", a=0.5)
    0.5
    >>> staleness_weight(6, fn="hinge", a=0.5, b=4)
    0.5
    """
    if tau < 0:
        raise ProtocolError(f"staleness must be >= 0, got {tau}")
    if fn == "constant":
        return 1.0
    if fn == "polynomial":
        return float((1.0 + tau) ** (-a))
    if fn == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    raise ProtocolError(f"unknown staleness function {fn!r}")


def check_staleness(tau: int, *, max_staleness: int) -> None:
    """Raise :class:`StaleUpdateError` when ``tau`` exceeds ``max_staleness``."""
    if tau > max_staleness:
        raise StaleUpdateError(f"update staleness {tau} exceeds the bound {max_staleness}")
