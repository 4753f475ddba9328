"""Engine envelopes <-> Flower ``RecordDict`` (the only place that touches both).

A secure-fl message over Flower is the engine's
:class:`~secure_fl.engine.transport.Envelope`:

* ``frames``: protocol frames, each the exact bytes of :func:`crypto.secagg.wire.encode`
  (versioned, length-checked, masked vectors bit-packed), carried as a list of ``bytes``
  in the ``ConfigRecord`` ``"secure_fl.frames"``; Flower never sees a protocol object;
* ``fields``: public scalar fields (cohort set-up, site metadata, evaluation metrics) in
  the ``ConfigRecord`` ``"secure_fl.fields"``;
* ``arrays``: public float arrays (the global model broadcast) in the ``ArrayRecord``
  ``"secure_fl.arrays"``.

Anything else in a received ``RecordDict`` is rejected: a peer cannot smuggle content
past the protocol. Malformed content raises :class:`~secure_fl.errors.RemoteProtocolError`.

Client-side state between messages (Flower starts a fresh ClientApp process per
message) is stored with :func:`put_state` / :func:`get_state` in ``Context.state``,
which the SuperNode keeps at the site and never sends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from secure_fl.engine.transport import Envelope, FieldValue
from secure_fl.errors import RemoteProtocolError

__all__ = [
    "ARRAYS",
    "FIELDS",
    "FRAMES",
    "Envelope",
    "FieldValue",
    "RecordState",
    "drop_state",
    "get_state",
    "pack",
    "put_state",
    "unpack",
]

FRAMES = "secure_fl.frames"
FIELDS = "secure_fl.fields"
ARRAYS = "secure_fl.arrays"

def pack(
    *,
    frames: Sequence[bytes] = (),
    fields: Mapping[str, FieldValue] | None = None,
    arrays: Mapping[str, npt.NDArray[Any]] | None = None,
) -> Any:
    """Build the Flower ``RecordDict`` of an envelope."""
    records: dict[str, Any] = {}
    records[FRAMES] = ConfigRecord({"frames": [bytes(f) for f in frames]})
    if fields:
        records[FIELDS] = ConfigRecord(dict(fields))
    if arrays:
        records[ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return RecordDict(records)


def unpack(content: Any) -> Envelope:
    """Read an envelope from a Flower ``RecordDict``; reject anything unexpected."""
    if not isinstance(content, RecordDict):
        raise RemoteProtocolError("message content is not a RecordDict")
    unknown = sorted(set(content.keys()) - {FRAMES, FIELDS, ARRAYS})
    if unknown:
        raise RemoteProtocolError(f"unexpected records in message: {unknown}")
    frames: tuple[bytes, ...] = ()
    if FRAMES in content:
        rec = content[FRAMES]
        raw = rec.get("frames", []) if isinstance(rec, ConfigRecord) else None
        if not isinstance(raw, list) or not all(isinstance(f, bytes) for f in raw):
            raise RemoteProtocolError("frames must be a list of bytes")
        frames = tuple(f for f in raw if isinstance(f, bytes))
    fields: dict[str, FieldValue] = {}
    if FIELDS in content:
        rec = content[FIELDS]
        if not isinstance(rec, ConfigRecord):
            raise RemoteProtocolError("fields must be a ConfigRecord")
        fields = dict(rec)
    arrays: dict[str, npt.NDArray[Any]] = {}
    if ARRAYS in content:
        rec = content[ARRAYS]
        if not isinstance(rec, ArrayRecord):
            raise RemoteProtocolError("arrays must be an ArrayRecord")
        try:
            arrays = {k: np.asarray(v.numpy()) for k, v in rec.items()}
        except Exception as exc:  # noqa: BLE001 - any deserialisation failure is the peer's
            raise RemoteProtocolError(f"unreadable array: {exc}") from exc
    return Envelope(frames, fields, arrays)


def put_state(state: Any, key: str, values: Mapping[str, FieldValue]) -> None:
    """Store ``values`` under ``key`` in a ``Context.state`` (kept at the site)."""
    state[key] = ConfigRecord(dict(values))


def get_state(state: Any, key: str) -> dict[str, FieldValue] | None:
    """The values stored under ``key`` (``None`` if absent)."""
    if key not in state:
        return None
    rec = state[key]
    if not isinstance(rec, ConfigRecord):
        return None
    return dict(rec)


def drop_state(state: Any, key: str) -> None:
    """Forget ``key`` (e.g. the secrets of a finished round)."""
    if key in state:
        del state[key]


class RecordState:
    """A client's state store backed by a SuperNode's ``Context.state`` (a ``RecordDict``).

    Flower starts a fresh ClientApp process (or, in simulation, a fresh call) for each
    message and keeps ``Context.state`` at the site between them; nothing in it is ever
    sent. Each key holds one ``ConfigRecord`` of public-type values (the round's
    secrets included: they stay at the site and are dropped when the round is over).
    """

    def __init__(self, state: Any) -> None:
        self.state = state

    def get(self, key: str) -> dict[str, FieldValue] | None:
        return get_state(self.state, key)

    def put(self, key: str, values: Mapping[str, FieldValue]) -> None:
        put_state(self.state, key, values)

    def drop(self, key: str) -> None:
        drop_state(self.state, key)

    def __contains__(self, key: object) -> bool:
        return key in self.state

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.state.keys()))
