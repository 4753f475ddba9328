"""Our protocol messages <-> Flower ``RecordDict`` (the only place that touches both).

A secure-fl message over Flower is an :class:`Envelope`:

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from secure_fl.errors import RemoteProtocolError

__all__ = [
    "ARRAYS",
    "FIELDS",
    "FRAMES",
    "Envelope",
    "FieldValue",
    "get_state",
    "pack",
    "put_state",
    "unpack",
]

FRAMES = "secure_fl.frames"
FIELDS = "secure_fl.fields"
ARRAYS = "secure_fl.arrays"

FieldValue = int | float | str | bytes | bool | list[int] | list[float] | list[str] | list[bytes] | list[bool]
"""Values a field may take (what a Flower ``ConfigRecord`` can carry)."""


@dataclass(frozen=True)
class Envelope:
    """Frames, public fields and public arrays of one Flower message."""

    frames: tuple[bytes, ...] = ()
    fields: Mapping[str, FieldValue] = field(default_factory=dict)
    arrays: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        """Field ``key``, checked to be of ``kind`` (``RemoteProtocolError`` otherwise)."""
        value = self.fields.get(key)
        if value is None or (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise RemoteProtocolError(f"message field {key!r} is missing or not {kind}")
        return value


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
