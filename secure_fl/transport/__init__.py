"""Deployment transports for secure-fl's protocols.

:mod:`secure_fl.transport.flower` runs the same sans-I/O protocol objects as the
in-process simulator (:mod:`crypto.secagg`) across machines on Flower (SuperLink /
SuperNodes over TLS). Flower is an optional extra (``pip install secure-fl[flower]``):
this package imports nothing from ``flwr`` at module level, and only the modules of
``secure_fl.transport.flower`` that define the Flower apps do.
"""

from __future__ import annotations

__all__: list[str] = []
