"""Witnessed ledger entries: every surviving client countersigns what the server records.

The server signs each ledger entry with its own key, which proves only "the key holder
wrote this": a server can rewrite its whole ledger and re-sign it consistently. Here,
at the end of each aggregation, the server prepares the entry (:meth:`LedgerWriter.prepare`)
and sends ``(index, prev_hash, body)`` to every survivor. Each client

1. checks that the body is about the aggregation it took part in (the version, its own
   name among the survivors and in the cohort, the session id when the protocol has
   one), and that the chain moves forward from the last entry it countersigned;
2. recomputes the entry hash itself, ``SHA-256(canonical_json({index, prev_hash, body}))``
   (:func:`audits.ledger.entry_hash_of`), and signs
   ``b"secure-fl/ledger/participation/v1" || entry_hash`` with its identity key
   (:func:`audits.ledger.countersign`).

The server writes the countersignatures on the entry's line
(:meth:`LedgerWriter.commit`), and ``secure-fl audit`` verifies them against the
roster's identity keys (:func:`audits.ledger.verify_ledger` with ``require_witnesses``).
Because each entry hash commits to all earlier entries, a countersignature on entry k
pins entries 0..k: a rewritten ledger fails at the first rewritten entry that recorded a
release. What a countersignature does not prove: that the body's numbers are right
beyond what the client could check (e.g. the DP event of the released sum is checked by
the audit's independent recomputation, not by the client).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits.ledger import LedgerEntry, LedgerWriter, countersign, entry_hash_of
from secure_fl.errors import RemoteProtocolError
from secure_fl.identities import ClientIdentities
from secure_fl.roster import build_roster

__all__ = [
    "RUN_ROSTER_FILENAME",
    "WITNESS_STATE_KEY",
    "Witness",
    "WitnessRequest",
    "check_entry",
    "remember_round",
    "site_countersign",
    "witness_and_commit",
    "write_run_roster",
]


@dataclass(frozen=True)
class WitnessRequest:
    """What the server sends a survivor to countersign."""

    index: int
    prev_hash: str
    body: Mapping[str, Any]

    @classmethod
    def of(cls, entry: LedgerEntry) -> WitnessRequest:
        return cls(entry.index, entry.prev_hash, entry.body)


def check_entry(
    request: WitnessRequest, *, member: str, version: int, session_id: str | None = None
) -> str:
    """Check a ledger entry a client is asked to countersign; return its entry hash.

    Raises :class:`RemoteProtocolError` (the server misstates the aggregation) when the
    body's ``version`` is not the one the client took part in, the client is not in its
    ``cohort`` and ``survivors``, or ``measurements.session_id`` differs from the
    session the client ran (when given).
    """
    body = request.body
    if not isinstance(body, Mapping):
        raise RemoteProtocolError("the ledger entry body is not an object")
    if body.get("version") != version:
        raise RemoteProtocolError(
            f"the ledger entry records version {body.get('version')!r}, this client took part in {version}"
        )
    cohort = [str(c) for c in body.get("cohort") or []]
    survivors = [str(c) for c in body.get("survivors") or []]
    if member not in cohort or member not in survivors:
        raise RemoteProtocolError(f"the ledger entry does not list {member} in its cohort and survivors")
    if session_id is not None:
        recorded = (body.get("measurements") or {}).get("session_id")
        if recorded != session_id:
            raise RemoteProtocolError("the ledger entry records another session id than this client's")
    if not isinstance(request.index, int) or request.index < 0:
        raise RemoteProtocolError("the ledger entry index is not a non-negative integer")
    return entry_hash_of(request.index, request.prev_hash, body)


class Witness:
    """One client's countersigning role: checks each entry, keeps the chain moving forward.

    ``last`` is the (index, entry hash) of the last entry this client countersigned; a
    request for an earlier or equal index is refused (the server would be forking the
    chain or replaying), so one client never signs two histories of the same length.
    """

    def __init__(self, key: Ed25519PrivateKey, *, member: str) -> None:
        self._key = key
        self.member = member
        self.last: tuple[int, str] | None = None

    def countersign(self, request: WitnessRequest, *, version: int, session_id: str | None = None) -> bytes:
        digest = check_entry(request, member=self.member, version=version, session_id=session_id)
        if self.last is not None and request.index <= self.last[0]:
            raise RemoteProtocolError(
                f"asked to countersign entry {request.index} after entry {self.last[0]}: the chain must move forward"
            )
        signature = countersign(digest, self._key)
        self.last = (request.index, digest)
        return signature


def witness_and_commit(
    ledger: LedgerWriter,
    body: Mapping[str, Any],
    identities: ClientIdentities,
    *,
    witnesses: dict[str, Witness] | None = None,
) -> LedgerEntry:
    """Simulation: prepare the entry, have every survivor countersign it, commit.

    ``witnesses`` keeps each simulated client's :class:`Witness` across aggregations
    (created on first use); the run passes the same dict every time.
    """
    entry = ledger.prepare(body)
    request = WitnessRequest.of(entry)
    pool = witnesses if witnesses is not None else {}
    signatures: dict[str, bytes] = {}
    survivors: Sequence[Any] = [] if entry.body.get("aborted") else (entry.body.get("survivors") or [])
    session = (entry.body.get("measurements") or {}).get("session_id")
    for cid in survivors:
        name = str(cid)
        witness = pool.get(name)
        if witness is None:
            witness = pool[name] = Witness(identities.key(int(cid)), member=name)
        signatures[name] = witness.countersign(
            request, version=int(entry.body["version"]), session_id=session if isinstance(session, str) else None
        )
    return ledger.commit(entry, countersignatures=signatures)


RUN_ROSTER_FILENAME = "roster.toml"


def write_run_roster(path: Path, identities: ClientIdentities) -> Path:
    """Simulation: write the simulated clients' public identity keys as a roster
    (``RUN_DIR/roster.toml``, the format of :mod:`secure_fl.roster`).

    It lets ``secure-fl audit`` verify the countersignatures of a simulated run. A roster
    stored in the run directory proves only self-consistency (whoever rewrites the run
    can rewrite it too); in a deployment the auditor passes the sites' own roster
    (``secure-fl audit RUN_DIR --roster roster.toml``).
    """
    keys = identities.public_keys()
    if len(keys) >= 2:
        text = build_roster(keys, min_cohort=2, min_threshold=2).to_toml()
    else:  # a one-client run has no cohort rules, only the key to verify with
        text = "".join(f'[[sites]]\nname = "{name}"\nidentity_key = "{key.hex()}"\n' for name, key in keys.items())
    target = path / RUN_ROSTER_FILENAME
    target.write_text(text, encoding="utf-8")
    return target


# -- the Flower site's countersigning step (state kept in the SuperNode's Context.state) ------
WITNESS_STATE_KEY = "secure_fl.witness"


def remember_round(state: MutableMapping[str, Any], *, version: int, session_id: bytes,
                   put: Callable[..., None], get: Callable[..., Any]) -> None:
    """At set-up: remember which aggregation (version, session) this site is in, so it
    later countersigns only an entry about that aggregation."""
    values = dict(get(state, WITNESS_STATE_KEY) or {"last_index": -1})
    values.update(version=version, session_id=session_id.hex())
    put(state, WITNESS_STATE_KEY, values)


def site_countersign(
    state: MutableMapping[str, Any],
    request: WitnessRequest,
    key: Ed25519PrivateKey,
    *,
    member: str,
    put: Callable[..., None],
    get: Callable[..., Any],
) -> bytes:
    """A site's countersignature of ``request``: only for the aggregation it remembered at
    set-up (version and session id), only moving the chain forward."""
    values = get(state, WITNESS_STATE_KEY)
    if not values or "version" not in values:
        raise RemoteProtocolError("asked to countersign, but this site took part in no aggregation")
    witness = Witness(key, member=member)
    last = int(values.get("last_index", -1))
    if last >= 0:
        witness.last = (last, "")
    signature = witness.countersign(request, version=int(values["version"]), session_id=str(values["session_id"]))
    put(state, WITNESS_STATE_KEY, {"last_index": request.index})  # one signature per aggregation
    return signature
