"""What the server engine writes: ledger bodies, metrics lines, the transcript.

A ledger entry holds everything an auditor needs about one aggregation and nothing
about any individual update: message digests only, public staleness weights, the DP
events (against the server: the ``survivors - c`` shares assumed honest; for the
released model: every share present), the cohort and survivors by name, and who was
refused or left out and why. Every survivor countersigns it (:mod:`secure_fl.witness`).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audits.events_codec import encode_event
from privacy.events import DPEvent, NonPrivateEvent
from secure_fl import __version__
from secure_fl.accounting import RunPrivacy
from secure_fl.config import RunConfig
from secure_fl.sparsity import Support
from secure_fl.staleness import staleness_weight

__all__ = ["Outcome", "finite", "ledger_body", "library_versions"]


@dataclass
class Outcome:
    """One aggregation as the server saw it (names or simulated ids, never vectors).

    ``mean`` is ``None`` when the aggregation was aborted (``aborted`` gives the reason).
    """

    mean: Any
    cohort: tuple[Any, ...]
    survivors: tuple[Any, ...]
    dropped: dict[str, list[Any]]
    excluded: dict[Any, str]
    upload_bytes: dict[Any, int]
    download_bytes: dict[Any, int]
    dp_event: DPEvent = field(default_factory=NonPrivateEvent)
    dp_event_released: DPEvent | None = None
    transcript: list[tuple[Any, str, int, str]] = field(default_factory=list)
    aborted: str | None = None
    measurements: dict[str, Any] = field(default_factory=dict)


def finite(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "inf" if x > 0 else "-inf"


def library_versions() -> dict[str, str]:
    """Installed distributions' versions, read from their metadata (importing opacus
    only to read its version would cost seconds of start-up in every run)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "unknown"

    return {
        "secure_fl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cryptography": installed("cryptography"),
        "opacus": installed("opacus"),
        "tenseal": installed("tenseal"),
    }


def transcript_records(outcome: Outcome) -> list[list[Any]]:
    return [[s, stage, size, digest] for s, stage, size, digest in outcome.transcript]


def ledger_body(
    config: RunConfig,
    cfg_hash: str,
    version: int,
    outcome: Outcome,
    support: Support,
    *,
    refused: dict[Any, str],
    rejected: dict[Any, str],
    staleness: dict[Any, int],
    privacy: RunPrivacy,
    versions: dict[str, str],
    transport: str,
) -> dict[str, Any]:
    """One ledger entry (see the module docstring)."""
    st = config.staleness
    records = transcript_records(outcome)
    return {
        "version": version,
        "config_sha256": cfg_hash,
        "protocol": config.protocol,
        "transport": transport,
        "mode": config.aggregation.mode,
        "cohort": list(outcome.cohort),
        "survivors": list(outcome.survivors),
        "dropped": outcome.dropped,
        "excluded": {str(k): v for k, v in outcome.excluded.items()},
        "rejected_stale": {str(k): v for k, v in rejected.items()},
        "budget_refusals": {str(k): v for k, v in refused.items()},
        "staleness": {str(k): v for k, v in staleness.items()},
        "staleness_weights": {
            str(k): staleness_weight(v, fn=st.fn, a=st.a, b=st.b) for k, v in staleness.items()
        },
        "support": support.description,
        "dp_event": encode_event(outcome.dp_event),
        "dp_mechanism": config.dp.mechanism,
        "clip": outcome.measurements.get("clip"),
        "field_bits": config.secagg.bits if config.protocol == "secagg" else None,
        "measurements": {
            k: v for k, v in outcome.measurements.items() if isinstance(v, int | str | float | None)
        },
        "dp_event_released": encode_event(outcome.dp_event_released or outcome.dp_event),
        "colluding_clients_assumed": config.threat.max_colluders,
        "cohort_sampling": privacy.sampling,
        "epsilon_per_client": {
            str(c): finite(privacy.budgets.epsilon(c)) for c in outcome.survivors
        }
        if privacy.server_guarantee
        else {},
        "epsilon_max": finite(privacy.epsilon()),
        "delta": config.dp.delta if privacy.enabled else None,
        "transcript_records_sha256": hashlib.sha256(json.dumps(records).encode()).hexdigest(),
        "messages": len(records),
        "aborted": outcome.aborted,
        "versions": versions,
    }
