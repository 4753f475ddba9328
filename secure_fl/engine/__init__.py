"""The federated engine: one server-side and one client-side engine, shared by every
transport (docs/architecture.md).

* :mod:`.transport`: the contract (envelopes, message kinds, commands, ``drive``);
* :mod:`.server`: :class:`~secure_fl.engine.server.ServerEngine`, the sans-I/O server;
* :mod:`.client`: :class:`~secure_fl.engine.client.ClientEngine`, a site's handler;
* :mod:`.roles`: the protocols (plain, SecAgg+, CKKS with its key holder), server and
  client halves side by side;
* :mod:`.public`: what both sides derive from the public set-up (mechanisms, planned
  events, provisioning, seeds);
* :mod:`.support`, :mod:`.records`: public supports; ledger bodies.
"""
