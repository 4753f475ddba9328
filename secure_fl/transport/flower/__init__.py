"""secure-fl on Flower: a ServerApp and a ClientApp that carry our protocol messages.

* :mod:`~secure_fl.transport.flower.server_app` -- ``app``: the Flower ``ServerApp``
  (cohort set-up, SecAgg/SecAgg+ stages, unmasking, ledger and transcript);
* :mod:`~secure_fl.transport.flower.client_app` -- ``app``: the Flower ``ClientApp``
  (local training, clipping, distributed DP noise, masking; one site per SuperNode);
* :mod:`~secure_fl.transport.flower.codec` -- our messages <-> Flower ``RecordDict``;
* :mod:`~secure_fl.transport.flower.site` -- per-site configuration (data, keys, budget
  cap); importable without Flower.

Only the bytes of :func:`crypto.secagg.wire.encode` travel; Flower's own SecAgg+ and DP
mods are not used. See ``docs/deployment.md``.
"""

from __future__ import annotations

__all__: list[str] = []
