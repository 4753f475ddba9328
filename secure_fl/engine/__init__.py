"""The federated engine: one server-side and one client-side engine, shared by every
transport (:mod:`secure_fl.engine.transport` is the contract)."""
