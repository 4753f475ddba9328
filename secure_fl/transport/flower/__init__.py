"""The Flower transport: the federated engine's messages over Flower's Grid.

It only moves bytes and time; every protocol, privacy and orchestration decision is the
engine's (:mod:`secure_fl.engine`), the same code the in-process transport drives.

* :mod:`~secure_fl.transport.flower.grid` -- :class:`FlowerTransport`: the engine's
  commands (exchange, post / next reply, clock) over ``flwr.serverapp.Grid``;
* :mod:`~secure_fl.transport.flower.server_app` -- the ``ServerApp``: settings, run
  directory, ``drive(ServerEngine, FlowerTransport)``;
* :mod:`~secure_fl.transport.flower.client_app` -- the ``ClientApp``: a SuperNode's site
  (from its ``site.toml``, or a virtual SuperNode's partition under Flower's simulation
  runtime) handed to :class:`~secure_fl.engine.client.ClientEngine`; the CKKS key holder
  as its own SuperNode;
* :mod:`~secure_fl.transport.flower.codec` -- envelopes <-> Flower ``RecordDict``; the
  site's state store in ``Context.state``;
* :mod:`~secure_fl.transport.flower.site` -- per-site configuration (data, keys, budget
  ledger); importable without Flower;
* :mod:`~secure_fl.transport.flower.settings` -- the ServerApp's run settings;
* :mod:`~secure_fl.transport.flower.local` -- a whole federation on this machine
  (SuperLink + SuperNodes over TLS) for rehearsals, examples and tests.

Only the bytes of :func:`crypto.secagg.wire.encode` and the engine's public fields
travel; Flower's own SecAgg+ and DP mods are not used. See ``docs/deployment.md``.
"""

from __future__ import annotations

__all__: list[str] = []
