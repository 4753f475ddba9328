"""JSON encoding of :mod:`privacy.events` DP events, for the ledger and audit reports.

Each event becomes a plain ``dict`` with a ``"type"`` tag and one key per dataclass
field; nested events are encoded recursively (``ComposedEvent.events`` as a list)::

    >>> encode_event(PoissonSampledEvent(0.01, GaussianEvent(1.1)))
    {'type': 'poisson_sampled', 'sample_rate': 0.01, 'event': {'type': 'gaussian', 'noise_multiplier': 1.1}}

``decode_event(encode_event(e)) == e`` for every event (floats go through JSON as
``repr`` and come back bit-exact). Decoding is strict, because the auditor recomputes
epsilon from these dicts: an unknown ``type`` tag, an unknown or missing field, a
wrong JSON type (``true`` for a count, a string for a float), a non-finite number or
nesting deeper than :data:`MAX_DEPTH` raises :class:`~audits.errors.EventCodecError`
naming the JSON path (e.g. ``$.events[2].sigma``). A field that has a default in the
dataclass (e.g. ``DiscreteGaussianSumEvent.dimension``) may be absent, so ledgers
written before the field existed still decode.

The tags are fixed here (stable on disk, independent of class names); the fields are
read from the dataclasses, so a field added in ``privacy.events`` is picked up. A field
whose annotation this codec does not know is refused rather than guessed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from audits.errors import EventCodecError
from privacy.events import (
    ComposedEvent,
    DiscreteGaussianSumEvent,
    DPEvent,
    GaussianEvent,
    NonPrivateEvent,
    NoOpEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    SkellamSumEvent,
)

__all__ = ["EVENT_TAGS", "MAX_DEPTH", "decode_event", "encode_event"]

#: Stable on-disk tag of each event class.
EVENT_TAGS: Mapping[type, str] = {
    NoOpEvent: "noop",
    NonPrivateEvent: "non_private",
    GaussianEvent: "gaussian",
    DiscreteGaussianSumEvent: "discrete_gaussian_sum",
    SkellamSumEvent: "skellam_sum",
    PoissonSampledEvent: "poisson_sampled",
    SelfComposedEvent: "self_composed",
    ComposedEvent: "composed",
}
_CLASSES: dict[str, type] = {tag: cls for cls, tag in EVENT_TAGS.items()}
#: Deepest nesting of composed/sampled events accepted when decoding.
MAX_DEPTH = 64

# Field annotations (strings, because privacy.events uses postponed annotations) that
# this codec knows how to encode, mapped to a kind.
_KINDS: dict[str, str] = {
    "float": "float",
    "int": "int",
    "int | None": "optional_int",
    "float | None": "optional_float",
    "DPEvent": "event",
    "tuple[DPEvent, ...]": "events",
}


def _fields(cls: type, path: str) -> list[tuple[dataclasses.Field[Any], str]]:
    out: list[tuple[dataclasses.Field[Any], str]] = []
    for f in dataclasses.fields(cls):
        annotation = (
            f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
        )
        kind = _KINDS.get(annotation)
        if kind is None:
            raise EventCodecError(
                f"{cls.__name__}.{f.name} has annotation {annotation!r}, which the codec does not know",
                location=f"{path}.{f.name}",
            )
        out.append((f, kind))
    return out


def _encode_float(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventCodecError(f"expected a number, got {type(value).__name__}", location=path)
    result = float(value)
    if not math.isfinite(result):
        raise EventCodecError(f"non-finite value {value!r} has no JSON form", location=path)
    return result


def _encode_int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventCodecError(f"expected an int, got {type(value).__name__}", location=path)
    return value


def _encode(event: object, path: str) -> dict[str, Any]:
    tag = EVENT_TAGS.get(type(event))
    if tag is None:
        raise EventCodecError(f"unknown DP event type {type(event).__name__}", location=path)
    out: dict[str, Any] = {"type": tag}
    for f, kind in _fields(type(event), path):
        value = getattr(event, f.name)
        where = f"{path}.{f.name}"
        if kind == "float" or (kind == "optional_float" and value is not None):
            out[f.name] = _encode_float(value, where)
        elif kind == "int" or (kind == "optional_int" and value is not None):
            out[f.name] = _encode_int(value, where)
        elif kind in ("optional_int", "optional_float"):
            out[f.name] = None
        elif kind == "event":
            out[f.name] = _encode(value, where)
        else:  # events
            if not isinstance(value, tuple | list):
                raise EventCodecError("expected a tuple of events", location=where)
            out[f.name] = [_encode(e, f"{where}[{i}]") for i, e in enumerate(value)]
    return out


def encode_event(event: DPEvent) -> dict[str, Any]:
    """The JSON-ready dict of ``event`` (see the module docstring for the format)."""
    return _encode(event, "$")


def _decode_float(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventCodecError(f"expected a number, got {type(value).__name__}", location=path)
    result = float(value)
    if not math.isfinite(result):
        raise EventCodecError("non-finite number", location=path)
    return result


def _decode_int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventCodecError(f"expected an integer, got {type(value).__name__}", location=path)
    return value


def _decode(data: object, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise EventCodecError(f"events nested deeper than {MAX_DEPTH}", location=path)
    if not isinstance(data, Mapping):
        raise EventCodecError(f"expected an event object, got {type(data).__name__}", location=path)
    tag = data.get("type")
    cls = _CLASSES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise EventCodecError(f"unknown event type {tag!r}", location=f"{path}.type")
    fields = _fields(cls, path)
    known = {f.name for f, _ in fields}
    unknown = sorted(str(k) for k in data if k != "type" and k not in known)
    if unknown:
        raise EventCodecError(f"unknown field(s) {unknown} for {tag!r}", location=path)
    kwargs: dict[str, Any] = {}
    for f, kind in fields:
        where = f"{path}.{f.name}"
        if f.name not in data:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise EventCodecError(f"missing field for {tag!r}", location=where)
        value = data[f.name]
        if kind == "float" or (kind == "optional_float" and value is not None):
            kwargs[f.name] = _decode_float(value, where)
        elif kind == "int" or (kind == "optional_int" and value is not None):
            kwargs[f.name] = _decode_int(value, where)
        elif kind in ("optional_int", "optional_float"):
            kwargs[f.name] = None
        elif kind == "event":
            kwargs[f.name] = _decode(value, where, depth + 1)
        else:  # events
            if not isinstance(value, list | tuple):
                raise EventCodecError("expected a list of events", location=where)
            kwargs[f.name] = tuple(
                _decode(e, f"{where}[{i}]", depth + 1) for i, e in enumerate(value)
            )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a future __post_init__ validation
        raise EventCodecError(f"invalid {tag!r}: {exc}", location=path) from exc


def decode_event(data: Mapping[str, Any]) -> DPEvent:
    """The event encoded by ``data``; :class:`EventCodecError` (with JSON path) if invalid."""
    event: DPEvent = _decode(data, "$", 0)
    return event
