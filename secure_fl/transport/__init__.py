"""The transports of the federated engine (:mod:`secure_fl.engine`): they move envelopes
and time, nothing else.

* :mod:`secure_fl.transport.inprocess`: simulated parties, a virtual clock, dropouts at
  every stage, a pool of worker processes (``secure-fl run``);
* :mod:`secure_fl.transport.flower`: Flower's SuperLink / SuperNodes over TLS, or
  Flower's simulation runtime. Flower is an optional extra
  (``pip install secure-fl[flower]``): only the modules of this subpackage that define
  the Flower apps import ``flwr``;
* :mod:`secure_fl.transport.dropouts`: the drop plan both accept.
"""

from __future__ import annotations

__all__: list[str] = []
