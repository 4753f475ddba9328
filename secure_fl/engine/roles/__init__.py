"""The aggregation protocols, each with its server half and client half side by side.

* :mod:`.plain`: FedAvg in the clear (the baseline: the server sees every update);
* :mod:`.secagg`: pairwise masking, SecAgg / SecAgg+ (:mod:`crypto.secagg`);
* :mod:`.ckks`: CKKS encryption with a separate key-holder party (:mod:`crypto.ckks`).

A server half is a generator yielding :mod:`secure_fl.engine.transport` commands and
returning a :class:`~secure_fl.aggregation.AggregateOutcome`-like result; a client half
turns the client's clipped, weighted update into the protocol's uploads.
"""
