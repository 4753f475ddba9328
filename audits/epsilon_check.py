"""Independent recomputation of a run's epsilon from the DP events in its ledger.

The runner accounts privacy with :mod:`privacy.accountants` (Opacus-based RDP for the
Gaussian, :mod:`privacy.analysis.discrete` for the integer mechanisms). This module
recomputes the same quantities along a *separate code path*, written directly from the
papers, so that a bug (or a forged claim) in one does not silently pass the other:

* **Gaussian mechanism** (Mironov, "Rényi Differential Privacy", CSF 2017, Prop. 7):
  noise multiplier ``z`` (noise std / L2 sensitivity) gives ``r(alpha) = alpha / (2 z^2)``.
* **Sum of n discrete Gaussians** ``N_Z(0, sigma^2)^d`` (Kairouz, Liu, Steinke, ICML 2021,
  Thm. 1 and Prop. 14): with ``s = sqrt(n) sigma``, ``l2 = Delta_2 / s``,
  ``l1 = Delta_1 / s`` and ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1))``,

  ``r(alpha) = min( alpha/2 l2^2 + tau d,  alpha/2 (l2^2 + 2 l1 tau + tau^2 d),
  alpha/2 (l2 + tau sqrt(d))^2 )``.
* **Sum of n Skellam shares** ``Sk(mu/2, mu/2)`` (Agarwal, Kairouz, Liu, NeurIPS 2021):
  with ``V = n mu``,
  ``r(alpha) = alpha Delta_2^2 / (2V) + min( ((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (4 V^2),
  3 Delta_1 / (2V) )``. Both discrete bounds hold at integer orders; a fractional order
  uses the next integer (RDP is non-decreasing in the order).
* **Poisson-sampled Gaussian** at integer orders (Mironov, Talwar, Zhang 2019, Sec. 3.3):
  ``A_alpha = sum_k C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 z^2))``,
  ``r(alpha) = log A_alpha / (alpha - 1)`` (only for the released-model figure).
* **Conversion** (Balle, Barthe, Gaboardi, Hsu, Sato, AISTATS 2020, Thm. 21):
  ``eps = min_alpha r(alpha) + log((alpha-1)/alpha) - (log delta + log alpha)/(alpha - 1)``.

User-level epsilon *against the server* (no amplification: the server knows who took
part) composes, for each client, the events of exactly the aggregations whose
``survivors`` include it (an aborted aggregation released nothing). The recomputed
figures are compared with every claim in the run directory: each ledger entry's
``epsilon_per_client`` and ``epsilon_max``, ``metrics.jsonl``'s ``epsilon`` and
``summary.json``'s ``epsilon`` / ``epsilon_against_server`` / ``epsilon_per_client``
(and ``epsilon_released_model`` where this module can recompute it). A relative
difference above the tolerance (default 2 %) in either direction is a disagreement: an
under-claim hides privacy loss, an over-claim means the two accountants do not
describe the same mechanism.

Only the standard library, numpy and scipy are used here (no :mod:`privacy.analysis`
or Opacus); :func:`audits.events_codec.decode_event` is used to parse the events
strictly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from audits.errors import EventCodecError, LedgerError
from audits.events_codec import decode_event, encode_event
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

__all__ = [
    "AUDIT_ORDERS",
    "DEFAULT_TOLERANCE",
    "EpsilonCheck",
    "EpsilonMismatch",
    "check_epsilon",
    "epsilon_from_rdp",
    "event_curve",
    "rerun_epsilon",
]

DEFAULT_TOLERANCE = 0.02
"""Largest accepted relative difference between a claimed and a recomputed epsilon."""

AUDIT_ORDERS: npt.NDArray[np.float64] = np.unique(
    np.concatenate(
        [
            1.0 + np.arange(1, 100) / 50.0,  # 1.02 .. 2.98
            np.arange(3.0, 16.0, 0.25),
            np.arange(16.0, 128.0, 1.0),
            np.geomspace(128.0, 4096.0, 24).round(),
        ]
    )
)
"""The audit's own grid of Rényi orders (finer than the accountant's near 1)."""

_MAX_REPORTED = 25


# ----------------------------------------------------------------------------- math


def _ddg_tau(sigma: float, n: int) -> float:
    if n <= 1:
        return 0.0
    k = np.arange(1, n, dtype=np.float64)
    logs = -2.0 * math.pi**2 * sigma**2 * k / (k + 1.0)
    return float(10.0 * np.exp(special.logsumexp(logs)))


def _ddg_curve(event: DiscreteGaussianSumEvent, orders: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if event.dimension is None:
        raise LedgerError("a discrete Gaussian event needs its dimension d", location="dimension")
    if event.sigma < 0.5:
        raise LedgerError(
            f"Kairouz et al. Thm. 1 needs sigma >= 1/2, got {event.sigma}", location="sigma"
        )
    a = np.ceil(orders)
    s = math.sqrt(event.num_clients) * event.sigma
    l2, l1 = event.l2_sensitivity / s, event.l1_sensitivity / s
    tau = _ddg_tau(event.sigma, event.num_clients)
    d = float(event.dimension)
    first = a / 2.0 * l2**2 + tau * d
    second = a / 2.0 * (l2**2 + 2.0 * l1 * tau + tau**2 * d)
    third = a / 2.0 * (l2 + math.sqrt(d) * tau) ** 2
    result: npt.NDArray[np.float64] = np.minimum(np.minimum(first, second), third)
    return result


def _skellam_curve(event: SkellamSumEvent, orders: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if not event.mu > 0:
        raise LedgerError(f"Skellam variance must be > 0, got {event.mu}", location="mu")
    a = np.ceil(orders)
    v = event.num_clients * event.mu
    d2, d1 = event.l2_sensitivity**2, event.l1_sensitivity
    extra = np.minimum(((2.0 * a - 1.0) * d2 + 6.0 * d1) / (4.0 * v**2), 3.0 * d1 / (2.0 * v))
    result: npt.NDArray[np.float64] = a * d2 / (2.0 * v) + extra
    return result


def _sampled_gaussian_curve(q: float, z: float, orders: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Mironov-Talwar-Zhang integer-order formula, evaluated at ``ceil(alpha)``."""
    out = np.empty_like(orders)
    cache: dict[int, float] = {}
    for i, alpha in enumerate(orders):
        k_max = int(math.ceil(alpha))
        if k_max not in cache:
            k = np.arange(0, k_max + 1, dtype=np.float64)
            log_terms = (
                special.gammaln(k_max + 1)
                - special.gammaln(k + 1)
                - special.gammaln(k_max - k + 1)
                + (k_max - k) * math.log1p(-q)
                + k * math.log(q)
                + (k * k - k) / (2.0 * z * z)
            )
            cache[k_max] = max(float(special.logsumexp(log_terms)), 0.0) / (k_max - 1)
        out[i] = cache[k_max]
    return out


def event_curve(event: DPEvent, orders: npt.NDArray[np.float64] = AUDIT_ORDERS) -> npt.NDArray[np.float64]:
    """RDP curve of one event at ``orders`` (formulas in the module docstring).

    Raises :class:`~audits.errors.LedgerError` for an event this check cannot account
    (e.g. a sampled discrete mechanism), rather than guess.
    """
    if isinstance(event, NoOpEvent):
        return np.zeros_like(orders)
    if isinstance(event, NonPrivateEvent):
        return np.full_like(orders, np.inf)
    if isinstance(event, GaussianEvent):
        z = float(event.noise_multiplier)
        if z <= 0.0:
            return np.full_like(orders, np.inf)
        result: npt.NDArray[np.float64] = orders / (2.0 * z * z)
        return result
    if isinstance(event, DiscreteGaussianSumEvent):
        return _ddg_curve(event, orders)
    if isinstance(event, SkellamSumEvent):
        return _skellam_curve(event, orders)
    if isinstance(event, SelfComposedEvent):
        return float(event.count) * event_curve(event.event, orders) if event.count else np.zeros_like(orders)
    if isinstance(event, ComposedEvent):
        total = np.zeros_like(orders)
        for sub in event.events:
            total = total + event_curve(sub, orders)
        return total
    if isinstance(event, PoissonSampledEvent):
        q, inner = float(event.sample_rate), event.event
        if q == 0.0 or isinstance(inner, NoOpEvent):
            return np.zeros_like(orders)
        if q == 1.0:
            return event_curve(inner, orders)
        if isinstance(inner, NonPrivateEvent):
            return np.full_like(orders, np.inf)
        if isinstance(inner, GaussianEvent) and inner.noise_multiplier > 0:
            return _sampled_gaussian_curve(q, float(inner.noise_multiplier), orders)
        raise LedgerError(
            f"the audit does not recompute a Poisson-sampled {type(inner).__name__}",
            location="event",
        )
    raise LedgerError(f"unknown DP event type {type(event).__name__}", location="event")


def epsilon_from_rdp(
    curve: npt.NDArray[np.float64], *, delta: float, orders: npt.NDArray[np.float64] = AUDIT_ORDERS
) -> float:
    """Balle et al. (AISTATS 2020, Thm. 21) conversion, minimised over ``orders``.

    ``inf`` when no order gives a finite bound; 0 for an all-zero curve.
    """
    if not 0.0 < delta < 1.0:
        raise LedgerError(f"delta must be in (0, 1), got {delta}", location="delta")
    if not np.any(curve):
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        eps = curve + np.log1p(-1.0 / orders) - (math.log(delta) + np.log(orders)) / (orders - 1.0)
    finite = eps[np.isfinite(eps)]
    if finite.size == 0:
        return math.inf
    return max(float(finite.min()), 0.0)


# ----------------------------------------------------------------------------- check


@dataclass(frozen=True)
class EpsilonMismatch:
    """One claim that disagrees with the recomputation, with where it is."""

    location: str
    claimed: float | None
    recomputed: float
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "claimed": _json_float(self.claimed),
            "recomputed": _json_float(self.recomputed),
            "message": self.message,
        }


@dataclass
class EpsilonCheck:
    """Outcome of :func:`check_epsilon`.

    ``ok`` is true iff every claim agrees within ``tolerance``. ``status`` is one of
    ``"agree"``, ``"disagree"``, ``"no_dp"`` (no claim and no private event: nothing to
    check) or ``"unverifiable"`` (events the check cannot read).
    """

    status: str
    tolerance: float
    delta: float | None
    recomputed_epsilon: float | None
    claimed_epsilon: float | None
    recomputed_released: float | None
    claimed_released: float | None
    per_client: dict[str, float]
    history: list[dict[str, Any]]
    client_series: dict[str, list[tuple[int, float]]]
    mismatches: list[EpsilonMismatch]
    mismatch_count: int
    checked_claims: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("agree", "no_dp")

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "ok": self.ok,
            "tolerance": self.tolerance,
            "delta": self.delta,
            "recomputed_epsilon": _json_float(self.recomputed_epsilon),
            "claimed_epsilon": _json_float(self.claimed_epsilon),
            "recomputed_released_model": _json_float(self.recomputed_released),
            "claimed_released_model": _json_float(self.claimed_released),
            "checked_claims": self.checked_claims,
            "mismatch_count": self.mismatch_count,
            "mismatches": [m.to_json() for m in self.mismatches],
            "per_client": {k: _json_float(v) for k, v in self.per_client.items()},
            "history": self.history,
            "notes": self.notes,
            "orders": {"min": float(AUDIT_ORDERS[0]), "max": float(AUDIT_ORDERS[-1]), "count": int(AUDIT_ORDERS.size)},
        }


def _json_float(x: float | None) -> float | str | None:
    if x is None:
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "nan"
    return float(x)


def _as_float(value: object) -> float | None:
    """A claimed epsilon as written by the runner: a number, ``"inf"`` or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def _disagree(claimed: float, recomputed: float, tolerance: float) -> bool:
    if math.isnan(claimed):
        return True
    if math.isinf(claimed) or math.isinf(recomputed):
        return claimed != recomputed
    scale = max(abs(recomputed), abs(claimed), 1e-9)
    # Tiny epsilons: an absolute slack of tolerance * 0.01 avoids flagging rounding noise.
    return abs(claimed - recomputed) > tolerance * scale and abs(claimed - recomputed) > tolerance * 0.01


def _read_ledger_bodies(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(line number, body) of every parseable line; notes for the others.

    Parsing here is lenient on purpose: chain and signature problems are reported by
    :func:`audits.ledger.verify_ledger`; this check reads what the entries *say*.
    """
    bodies: list[tuple[int, dict[str, Any]]] = []
    notes: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"cannot read {path.name}: {exc}"]
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            notes.append(f"line {number}: not JSON, skipped")
            continue
        body = obj.get("body") if isinstance(obj, dict) else None
        if not isinstance(body, dict):
            notes.append(f"line {number}: no body object, skipped")
            continue
        bodies.append((number, body))
    return bodies, notes


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def _released_sample_rate(run_dir: Path) -> float | None:
    """``q = clients.per_round / clients.num`` from ``config.toml`` (``None`` if unknown)."""
    import tomllib

    try:
        cfg = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    clients = cfg.get("clients", {})
    num = clients.get("num")
    per_round = clients.get("per_round", num)
    if cfg.get("aggregation", {}).get("mode") == "async":
        per_round = cfg.get("aggregation", {}).get("buffer_size") or per_round
    if not isinstance(num, int) or not isinstance(per_round, int) or num <= 0:
        return None
    return min(1.0, per_round / num)


def check_epsilon(
    run_dir: str | Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> EpsilonCheck:
    """Recompute per-client and run epsilon from ``ledger.jsonl`` and compare with claims.

    See the module docstring for the formulas and the composition rule. Never raises
    because of the run directory's content: unreadable events make the status
    ``"unverifiable"`` with a located note.
    """
    root = Path(run_dir)
    bodies, notes = _read_ledger_bodies(root / "ledger.jsonl")
    summary = _read_json(root / "summary.json") or {}
    mismatches: list[EpsilonMismatch] = []
    count = 0
    checked = 0
    unverifiable = False

    def flag(location: str, claimed: float | None, recomputed: float, what: str) -> None:
        nonlocal count
        count += 1
        if len(mismatches) < _MAX_REPORTED:
            c = "missing" if claimed is None else f"{claimed:.6g}"
            mismatches.append(
                EpsilonMismatch(location, claimed, recomputed, f"{what}: claimed {c}, recomputed {recomputed:.6g}")
            )

    # delta: the ledger's, else the summary's.
    deltas = {b.get("delta") for _, b in bodies if b.get("delta") is not None}
    delta_claim = summary.get("delta")
    delta: float | None = None
    for cand in (*deltas, delta_claim):
        if isinstance(cand, int | float) and not isinstance(cand, bool) and 0 < cand < 1:
            delta = float(cand)
            break
    if len(deltas) > 1:
        notes.append(f"ledger entries disagree on delta: {sorted(map(str, deltas))}")

    curves: dict[str, npt.NDArray[np.float64]] = {}
    client_curves: dict[str, npt.NDArray[np.float64]] = {}
    released_curve = np.zeros_like(AUDIT_ORDERS)
    released_ok = True
    q = _released_sample_rate(root)
    any_private_event = False
    any_event = False
    history: list[dict[str, Any]] = []
    series: dict[str, list[tuple[int, float]]] = {}

    def eps_of(curve: npt.NDArray[np.float64]) -> float:
        return epsilon_from_rdp(curve, delta=delta) if delta is not None else math.inf

    for line, body in bodies:
        where = f"ledger line {line} (version {body.get('version')})"
        raw_event = body.get("dp_event")
        if not isinstance(raw_event, dict):
            notes.append(f"{where} body.dp_event: missing or not an object")
            unverifiable = True
            continue
        try:
            event = decode_event(raw_event)
        except EventCodecError as exc:
            notes.append(f"{where} body.dp_event: {exc}")
            unverifiable = True
            continue
        key = json.dumps(encode_event(event), sort_keys=True)
        if key not in curves:
            try:
                curves[key] = event_curve(event)
            except LedgerError as exc:
                notes.append(f"{where} body.dp_event: {exc}")
                unverifiable = True
                continue
        curve = curves[key]
        aborted = body.get("aborted")
        survivors = body.get("survivors") or []
        if not isinstance(survivors, list):
            notes.append(f"{where} body.survivors: not a list")
            unverifiable = True
            continue
        if not aborted and survivors:
            any_event = True
            any_private_event = any_private_event or bool(np.all(np.isfinite(curve)))
            for c in survivors:
                cid = str(c)
                client_curves[cid] = client_curves.get(cid, np.zeros_like(AUDIT_ORDERS)) + curve
                version = body.get("version")
                if isinstance(version, int):
                    series.setdefault(cid, []).append((version, eps_of(client_curves[cid])))
            if q is not None and released_ok:
                try:
                    released_curve = released_curve + event_curve(PoissonSampledEvent(q, event))
                except LedgerError as exc:
                    released_ok = False
                    notes.append(f"released-model epsilon not recomputed: {exc}")
        # Running per-client claims of this entry (only survivors are listed).
        claims = body.get("epsilon_per_client") or {}
        if isinstance(claims, dict):
            for cid, value in claims.items():
                claimed = _as_float(value)
                mine = eps_of(client_curves.get(str(cid), np.zeros_like(AUDIT_ORDERS)))
                checked += 1
                if claimed is None or _disagree(claimed, mine, tolerance):
                    flag(f"{where} body.epsilon_per_client[{cid!r}]", claimed, mine, "per-client epsilon")
        running_max = max((eps_of(c) for c in client_curves.values()), default=0.0)
        claimed_max = _as_float(body.get("epsilon_max"))
        if claimed_max is not None:
            checked += 1
            if _disagree(claimed_max, running_max, tolerance):
                flag(f"{where} body.epsilon_max", claimed_max, running_max, "running maximum epsilon")
        elif any_event and (not math.isinf(running_max) or body.get("dp_mechanism") not in (None, "none")):
            if body.get("dp_mechanism") not in (None, "none"):
                flag(f"{where} body.epsilon_max", None, running_max, "DP mechanism configured but no epsilon recorded")
        history.append(
            {
                "version": body.get("version"),
                "line": line,
                "epsilon_max": _json_float(running_max),
                "claimed_epsilon_max": _json_float(claimed_max),
                "event": encode_event(event),
            }
        )

    per_client = {c: eps_of(curve) for c, curve in client_curves.items()}
    recomputed = max(per_client.values(), default=math.inf if not any_event else 0.0)
    if not any_event:
        recomputed = math.inf

    # summary.json claims
    claimed_eps = _as_float(summary.get("epsilon"))
    for name in ("epsilon", "epsilon_against_server"):
        if name in summary:
            claimed = _as_float(summary.get(name))
            if claimed is None:
                if any_private_event:
                    flag(f"summary.json {name}", None, recomputed, "private events present but no epsilon claimed")
                continue
            checked += 1
            if _disagree(claimed, recomputed, tolerance):
                flag(f"summary.json {name}", claimed, recomputed, "run epsilon (max over clients, against the server)")
    summary_clients = summary.get("epsilon_per_client")
    if isinstance(summary_clients, dict):
        for cid, value in summary_clients.items():
            claimed = _as_float(value)
            mine = per_client.get(str(cid), 0.0)
            checked += 1
            if claimed is None or _disagree(claimed, mine, tolerance):
                flag(f"summary.json epsilon_per_client[{cid!r}]", claimed, mine, "final per-client epsilon")
    recomputed_released: float | None = None
    claimed_released = _as_float(summary.get("epsilon_released_model"))
    if q is not None and released_ok and any_event:
        recomputed_released = eps_of(released_curve)
        if claimed_released is not None:
            checked += 1
            # The integer-order sampled-Gaussian bound is slightly looser than the
            # accountant's fractional orders: a wider tolerance for this secondary figure.
            if _disagree(claimed_released, recomputed_released, max(tolerance, 0.05)):
                flag("summary.json epsilon_released_model", claimed_released, recomputed_released, "released-model epsilon")
    if delta_claim is not None and delta is not None and _as_float(delta_claim) != delta:
        flag("summary.json delta", _as_float(delta_claim), delta, "delta differs from the ledger's")

    # metrics.jsonl running epsilon per version
    by_version = {h["version"]: h for h in history}
    for row_no, row in enumerate(_read_metrics(root / "metrics.jsonl"), start=1):
        claimed = _as_float(row.get("epsilon"))
        h = by_version.get(row.get("version"))
        if claimed is None or h is None:
            continue
        running = _as_float(h["epsilon_max"])
        if running is None:
            continue
        checked += 1
        if _disagree(claimed, running, tolerance):
            flag(f"metrics.jsonl line {row_no} (version {row.get('version')}) epsilon", claimed, running, "running epsilon")

    if not bodies:
        notes.append("no readable ledger entries: nothing to recompute")
        unverifiable = True
    any_claim = claimed_eps is not None or any(
        b.get("epsilon_max") is not None or b.get("epsilon_per_client") for _, b in bodies
    )
    if count:
        status = "disagree"
    elif unverifiable:
        status = "unverifiable"
    elif not any_claim and not any_private_event:
        status = "no_dp"
        notes.append("no differential privacy: every release is non-private, epsilon is infinite")
    else:
        status = "agree"
    return EpsilonCheck(
        status=status,
        tolerance=tolerance,
        delta=delta,
        recomputed_epsilon=recomputed,
        claimed_epsilon=claimed_eps,
        recomputed_released=recomputed_released,
        claimed_released=claimed_released,
        per_client=per_client,
        history=history,
        client_series=series,
        mismatches=mismatches,
        mismatch_count=count,
        checked_claims=checked,
        notes=notes,
    )


def rerun_epsilon(events: Sequence[DPEvent], *, delta: float) -> float:
    """Epsilon of a client that took part in every one of ``events`` (used by the
    empirical audit to bound its own re-run)."""
    total = np.zeros_like(AUDIT_ORDERS)
    for e in events:
        total = total + event_curve(e)
    return epsilon_from_rdp(total, delta=delta)
