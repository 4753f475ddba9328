"""Strict JSON decoding shared by the ledger and transcript readers: duplicate keys and
the non-standard constants NaN / Infinity are errors, not silently accepted."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads_strict"]


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that raises ``ValueError`` on duplicate keys and NaN/Infinity."""
    return json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
