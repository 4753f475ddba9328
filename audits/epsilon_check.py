"""Independent check of every epsilon a run claims, from the DP events in its ledger.

Two code paths live here.

* The **reference** used to judge claims (:mod:`audits.reference_epsilon`): Google's
  ``dp_accounting`` for the Gaussian family (RDP on a finer grid of orders; PLD with the
  optimistic estimate for sampled events) and Rényi divergences computed numerically
  from the exact pmfs of the discrete noise sums at a concrete worst-case shift. Each
  reference is a *lower* bound of what an honest Rényi-DP accountant can claim, so the
  test is **one-sided**: a claim below the reference by more than numerical error
  (:data:`NUMERICAL_SLACK`) is an under-claim and fails the audit, naming the field. A
  claim above it is conservative, never a failure.
* The paper bounds (:func:`event_curve`, :func:`rerun_epsilon`, written from the papers
  without :mod:`privacy`): an *upper* bound used by the empirical audit to bound its
  own re-run.

What is composed (docs/threat-model.md; the summary states the same):

* **against the server** (``epsilon_against_server``, ledger ``epsilon_per_client`` /
  ``epsilon_max``, ``metrics.jsonl`` ``epsilon``): for each client, the ledger's
  ``dp_event`` (noise shares assumed honest: survivors minus the colluders) of exactly
  the aggregations whose ``survivors`` include it, zero-out relation; maximum over
  clients (0 when no aggregation released a sum: every entry aborted, no survivors).
  ``protocol = "plain"`` has no guarantee against the server: any number claimed
  there fails.
* ``epsilon_against_server_replace_one``: the same with every shift doubled.
* ``epsilon_released_model``: ``dp_event_released`` (every share; the ledger's
  ``dp_event`` for runs that predate it), per client for runs without amplification;
  for ``plain`` runs with Poisson cohorts the sampled Gaussian over all aggregations.
  Asynchronous buffers must claim ``null``.

Only standard-library code, numpy, scipy and ``dp_accounting`` compute the references;
:func:`audits.events_codec.decode_event` parses the events strictly.
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

from audits import reference_epsilon as ref
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
    "NUMERICAL_SLACK",
    "EpsilonCheck",
    "EpsilonMismatch",
    "check_epsilon",
    "epsilon_from_rdp",
    "event_curve",
    "rerun_epsilon",
]

DEFAULT_TOLERANCE = 0.02
"""Over-claims (conservative figures) beyond this relative margin are noted, not failed."""

NUMERICAL_SLACK = 1e-6
"""Relative numerical error allowed below the reference before a claim is an under-claim."""

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

    ``ok`` is true iff no claim is below its independent reference. ``status`` is one
    of ``"agree"``, ``"disagree"`` (an under-claim), ``"no_dp"`` (no claim and no
    private event: nothing to check) or ``"unverifiable"`` (events the check cannot
    read). ``recomputed_*`` hold the references (lower bounds); ``recomputed_epsilon``
    is ``None`` for a plain run (no guarantee against the server).
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


def _run_config(run_dir: Path) -> dict[str, Any]:
    import tomllib

    try:
        cfg = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _released_sample_rate(cfg: dict[str, Any]) -> float | None:
    """``q = clients.per_round / clients.num`` from ``config.toml`` (``None`` if unknown)."""
    clients = cfg.get("clients", {})
    num = clients.get("num")
    per_round = clients.get("per_round", num)
    if not isinstance(num, int) or not isinstance(per_round, int) or num <= 0:
        return None
    return min(1.0, per_round / num)


_EventKey = str


class _Reference:
    """Reference epsilons of compositions of ledger events, cached by their multiset."""

    def __init__(self, events: dict[_EventKey, DPEvent], delta: float | None) -> None:
        self.events = events
        self.delta = delta
        self._cache: dict[tuple[tuple[_EventKey, int], ...], float] = {}
        self._curves: dict[tuple[_EventKey, bool], npt.NDArray[np.float64] | None] = {}

    def _curve(self, key: _EventKey, replace_one: bool) -> npt.NDArray[np.float64] | None:
        ck = (key, replace_one)
        if ck not in self._curves:
            event = self.events[key]
            if isinstance(event, GaussianEvent):
                z = float(event.noise_multiplier) / (2.0 if replace_one else 1.0)
                self._curves[ck] = (
                    ref.LOWER_ORDERS / (2.0 * z * z) if z > 0 else np.full_like(ref.LOWER_ORDERS, np.inf)
                )
            else:
                self._curves[ck] = ref.lower_rdp_curve(event, replace_one=replace_one)
        return self._curves[ck]

    def epsilon(self, counts: dict[_EventKey, int], *, replace_one: bool = False) -> float:
        if self.delta is None:
            return math.inf
        sig = tuple(sorted(counts.items())) + ((("replace-one", 1),) if replace_one else ())
        if sig in self._cache:
            return self._cache[sig]
        items = [(self.events[k], c) for k, c in counts.items() if c]
        value: float
        if any(isinstance(e, NonPrivateEvent) for e, _ in items):
            value = math.inf
        elif not items or all(isinstance(e, NoOpEvent) for e, _ in items):
            value = 0.0
        elif all(isinstance(e, GaussianEvent | PoissonSampledEvent | NoOpEvent) for e, _ in items) and all(
            not isinstance(e, PoissonSampledEvent) or isinstance(e.event, GaussianEvent) for e, _ in items
        ):
            scaled = [
                (GaussianEvent(e.noise_multiplier / 2.0) if replace_one and isinstance(e, GaussianEvent) else e, c)
                for e, c in items
                if not isinstance(e, NoOpEvent)
            ]
            if replace_one and any(isinstance(e, PoissonSampledEvent) for e, _ in scaled):
                scaled = [
                    (PoissonSampledEvent(e.sample_rate, GaussianEvent(e.event.noise_multiplier / 2.0)), c)
                    if isinstance(e, PoissonSampledEvent) and isinstance(e.event, GaussianEvent)
                    else (e, c)
                    for e, c in scaled
                ]
            value = ref.gaussian_epsilon(scaled, delta=self.delta)
        else:
            total = np.zeros_like(ref.LOWER_ORDERS)
            for (key, c) in counts.items():
                if not c or isinstance(self.events[key], NoOpEvent):
                    continue
                curve = self._curve(key, replace_one)
                if curve is None:
                    raise LedgerError(
                        f"no independent reference for {type(self.events[key]).__name__}", location="dp_event"
                    )
                total = total + c * curve
            value = ref.conversion_lower_bound(total, delta=self.delta)
        self._cache[sig] = value
        return value


def _under(claimed: float, reference: float) -> bool:
    """An under-claim beyond numerical error (the one-sided test)."""
    if math.isnan(claimed):
        return True
    if math.isinf(reference):
        return not math.isinf(claimed)
    return claimed < reference * (1.0 - NUMERICAL_SLACK) - 1e-9


def check_epsilon(
    run_dir: str | Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> EpsilonCheck:
    """Check every claimed epsilon of ``run_dir`` against the independent references.

    See the module docstring. One-sided: a claim below its reference by more than
    :data:`NUMERICAL_SLACK` fails (status ``"disagree"``, the field named); a claim more
    than ``tolerance`` above it is noted as conservative. Never raises because of the
    run directory's content: unreadable events make the status ``"unverifiable"``.
    """
    root = Path(run_dir)
    bodies, notes = _read_ledger_bodies(root / "ledger.jsonl")
    summary = _read_json(root / "summary.json") or {}
    cfg = _run_config(root)
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
                EpsilonMismatch(
                    location, claimed, recomputed,
                    f"{what}: claimed {c}, below the independent reference {recomputed:.6g}",
                )
            )

    def judge(location: str, value: object, reference: float, what: str, *, required: bool) -> None:
        nonlocal checked
        claimed = _as_float(value)
        if claimed is None:
            if required and math.isfinite(reference):
                flag(location, None, reference, what + " (no figure claimed)")
            return
        checked += 1
        if _under(claimed, reference):
            flag(location, claimed, reference, what)
        elif math.isfinite(reference) and claimed > reference * (1 + tolerance) + 1e-9 and location.startswith(
            "summary.json"
        ):
            notes.append(f"{location}: claimed {claimed:.6g} is conservative (reference {reference:.6g})")

    deltas = {b.get("delta") for _, b in bodies if b.get("delta") is not None}
    delta_claim = summary.get("delta")
    delta: float | None = None
    for cand in (*deltas, delta_claim):
        if isinstance(cand, int | float) and not isinstance(cand, bool) and 0 < cand < 1:
            delta = float(cand)
            break
    if len(deltas) > 1:
        notes.append(f"ledger entries disagree on delta: {sorted(map(str, deltas))}")

    protocol = cfg.get("protocol", summary.get("protocol"))
    mode = cfg.get("aggregation", {}).get("mode", "sync")
    sampling = "async-buffer" if mode == "async" else cfg.get("clients", {}).get("sampling", "fixed")
    plain = protocol == "plain"
    q = _released_sample_rate(cfg)
    amplified = plain and sampling == "poisson" and q is not None

    events: dict[_EventKey, DPEvent] = {}
    reference = _Reference(events, delta)
    server_counts: dict[str, dict[_EventKey, int]] = {}
    released_counts: dict[str, dict[_EventKey, int]] = {}
    released_sampled: dict[_EventKey, int] = {}
    any_private_event = False
    any_event = False
    history: list[dict[str, Any]] = []
    series: dict[str, list[tuple[int, float]]] = {}

    def parse(raw: object, where: str, name: str) -> _EventKey | None:
        nonlocal unverifiable
        if not isinstance(raw, dict):
            notes.append(f"{where} body.{name}: missing or not an object")
            unverifiable = True
            return None
        try:
            event = decode_event(raw)
        except EventCodecError as exc:
            notes.append(f"{where} body.{name}: {exc}")
            unverifiable = True
            return None
        key = json.dumps(encode_event(event), sort_keys=True)
        events.setdefault(key, event)
        return key

    def eps_of(counts: dict[_EventKey, int], *, replace_one: bool = False) -> float:
        nonlocal unverifiable
        try:
            return reference.epsilon(counts, replace_one=replace_one)
        except (LedgerError, ValueError) as exc:
            if not unverifiable:
                notes.append(f"reference not computable: {exc}")
            unverifiable = True
            return math.inf

    for line, body in bodies:
        where = f"ledger line {line} (version {body.get('version')})"
        key = parse(body.get("dp_event"), where, "dp_event")
        if key is None:
            continue
        rkey = parse(body.get("dp_event_released", body.get("dp_event")), where, "dp_event_released") or key
        survivors = body.get("survivors") or []
        if not isinstance(survivors, list):
            notes.append(f"{where} body.survivors: not a list")
            unverifiable = True
            continue
        if not body.get("aborted") and survivors:
            any_event = True
            any_private_event = any_private_event or not isinstance(events[key], NonPrivateEvent)
            for c in survivors:
                cid = str(c)
                sc = server_counts.setdefault(cid, {})
                sc[key] = sc.get(key, 0) + 1
                rc = released_counts.setdefault(cid, {})
                rc[rkey] = rc.get(rkey, 0) + 1
            if amplified and q is not None:
                sk = json.dumps(encode_event(PoissonSampledEvent(q, events[rkey])), sort_keys=True)
                events.setdefault(sk, PoissonSampledEvent(q, events[rkey]))
                released_sampled[sk] = released_sampled.get(sk, 0) + 1
        claims = body.get("epsilon_per_client") or {}
        running = max((eps_of(sc) for sc in server_counts.values()), default=0.0)
        if plain:
            if claims or _as_float(body.get("epsilon_max")) not in (None, math.inf):
                flag(f"{where} body.epsilon_max", _as_float(body.get("epsilon_max")), math.inf,
                     "protocol = plain claims a guarantee against the server")
        else:
            if isinstance(claims, dict):
                for cid, value in claims.items():
                    mine = eps_of(server_counts.get(str(cid), {}))
                    judge(f"{where} body.epsilon_per_client[{cid!r}]", value, mine, "per-client epsilon",
                          required=True)
                    if isinstance(body.get("version"), int):
                        series.setdefault(str(cid), []).append((int(body["version"]), mine))
            mech = body.get("dp_mechanism")
            judge(f"{where} body.epsilon_max", body.get("epsilon_max"), running, "running maximum epsilon",
                  required=any_event and mech not in (None, "none"))
        history.append(
            {
                "version": body.get("version"),
                "line": line,
                "epsilon_max": _json_float(running),
                "claimed_epsilon_max": _json_float(_as_float(body.get("epsilon_max"))),
                "event": encode_event(events[key]),
            }
        )

    per_client = {c: eps_of(sc) for c, sc in server_counts.items()}
    # No aggregation released a sum (every entry aborted or without survivors): nothing
    # about any client left the protocol, epsilon 0. No readable entry at all: unknown.
    recomputed = max(per_client.values(), default=0.0) if any_event or bodies else math.inf
    claimed_eps = _as_float(summary.get("epsilon"))

    # summary.json: against the server
    for name in ("epsilon", "epsilon_against_server"):
        if name not in summary:
            continue
        if plain:
            if _as_float(summary.get(name)) is not None:
                flag(f"summary.json {name}", _as_float(summary.get(name)), math.inf,
                     "protocol = plain claims a guarantee against the server")
            continue
        judge(f"summary.json {name}", summary.get(name), recomputed,
              "run epsilon (max over clients, against the server)", required=any_private_event)
    if "epsilon_against_server_replace_one" in summary and not plain:
        replace = max((eps_of(sc, replace_one=True) for sc in server_counts.values()), default=0.0)
        judge("summary.json epsilon_against_server_replace_one", summary.get("epsilon_against_server_replace_one"),
              replace, "replace-one epsilon against the server", required=any_private_event)
    summary_clients = summary.get("epsilon_per_client")
    if isinstance(summary_clients, dict):
        for cid, value in summary_clients.items():
            judge(f"summary.json epsilon_per_client[{cid!r}]", value, per_client.get(str(cid), 0.0),
                  "final per-client epsilon", required=True)

    # summary.json: released model
    recomputed_released: float | None = None
    claimed_released = _as_float(summary.get("epsilon_released_model"))
    if sampling == "async-buffer":
        if claimed_released is not None:
            flag("summary.json epsilon_released_model", claimed_released, math.inf,
                 "asynchronous buffers have no sampling analysis, yet a released-model figure is claimed")
    elif any_event:
        if amplified:
            recomputed_released = eps_of(released_sampled)
        else:
            recomputed_released = max((eps_of(rc) for rc in released_counts.values()), default=0.0)
        if "epsilon_released_model" in summary:
            judge("summary.json epsilon_released_model", summary.get("epsilon_released_model"),
                  recomputed_released, "released-model epsilon", required=any_private_event)
    if delta_claim is not None and delta is not None and _as_float(delta_claim) != delta:
        flag("summary.json delta", _as_float(delta_claim), delta, "delta differs from the ledger's")

    # metrics.jsonl running epsilon per version
    by_version = {h["version"]: h for h in history}
    for row_no, row in enumerate(_read_metrics(root / "metrics.jsonl"), start=1):
        h = by_version.get(row.get("version"))
        if h is None:
            continue
        if plain:
            if _as_float(row.get("epsilon")) not in (None, math.inf):
                flag(f"metrics.jsonl line {row_no} (version {row.get('version')}) epsilon",
                     _as_float(row.get("epsilon")), math.inf, "protocol = plain claims a guarantee against the server")
            continue
        running_ref = _as_float(h["epsilon_max"])
        if running_ref is None:
            continue
        judge(f"metrics.jsonl line {row_no} (version {row.get('version')}) epsilon", row.get("epsilon"),
              running_ref, "running epsilon", required=False)

    if not bodies:
        notes.append("no readable ledger entries: nothing to recompute")
        unverifiable = True
    any_claim = claimed_eps is not None or claimed_released is not None or any(
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
        recomputed_epsilon=None if plain and any_event else recomputed,
        claimed_epsilon=claimed_eps,
        recomputed_released=recomputed_released,
        claimed_released=claimed_released,
        per_client=per_client if not plain else {},
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
