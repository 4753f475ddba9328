"""A self-contained ``report.html`` for compliance reviewers (no scripts, no external
resources; plots are PNGs embedded as base64 ``data:`` URIs, drawn with matplotlib's
object API so no GUI backend or global pyplot state is touched).

The report answers the questions of NIST SP 800-226, "Guidelines for Evaluating
Differential Privacy Guarantees" (2025): what is the unit of privacy, what are epsilon
and delta (delta compared with 1/N), which accountant (and version) produced them,
what is the trust model (who holds which key, thresholds, collusion assumptions), what
are the parameters, and which privacy hazards remain. Then it shows the evidence: the
ledger and transcript verification, the independent epsilon recomputation, the server's
view, and the empirical attacks (plots of epsilon per client over aggregations,
accuracy, canary cosines, membership-inference ROC, gradient-inversion images).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["render_report"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#1d1d1f;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.verdict{font-size:1.2em;padding:.7em 1em;border-radius:6px;font-weight:600}
.pass{background:#e6f4ea;color:#137333}.fail{background:#fce8e6;color:#a50e0e}
.warn{background:#fef7e0;color:#8a5a00;padding:.4em .8em;border-radius:4px;margin:.3em 0}
.loud{background:#a50e0e;color:#fff;padding:.6em 1em;border-radius:4px;margin:.4em 0;font-weight:700}
table{border-collapse:collapse;margin:.6em 0;width:100%}td,th{border:1px solid #ddd;padding:.35em .6em;
text-align:left;vertical-align:top;font-size:.93em}th{background:#f6f8fa;width:28%}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}img{max-width:100%;height:auto}
.grid{display:flex;flex-wrap:wrap;gap:1em}.grid>figure{flex:1 1 460px;margin:0}
figcaption{font-size:.85em;color:#555}.small{font-size:.85em;color:#555}
"""


def _roster_line(roster: Any) -> str:
    """The roster the countersignatures were verified against, and where it came from."""
    if not isinstance(roster, dict):
        return "none"
    return f"{roster.get('members')} members, from {roster.get('source')}, SHA-256 {str(roster.get('sha256'))[:16]}..."


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}g}"
    return str(value)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 6.4, height: float = 3.6) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _img(uri: str, alt: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{_e(alt)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _as_float(x: object) -> float:
    if isinstance(x, int | float) and not isinstance(x, bool):
        return float(x)
    if x == "inf":
        return math.inf
    return math.nan


# ----------------------------------------------------------------------------- plots


def plot_epsilon(series: Mapping[str, Sequence[tuple[int, float]]], claimed: Sequence[tuple[int, float]]) -> str | None:
    """Recomputed epsilon per client over aggregations (one line per client)."""
    if not series:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    finite_any = False
    for points in list(series.values())[:200]:
        xs = [v for v, e in points if math.isfinite(e)]
        ys = [e for _, e in points if math.isfinite(e)]
        if xs:
            finite_any = True
            ax.plot(xs, ys, color="#1a73e8", alpha=0.25, linewidth=0.8)
    pts = [(v, e) for v, e in claimed if math.isfinite(e)]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color="#d93025", markersize=3,
                label="claimed maximum (ledger)")
        ax.legend(loc="upper left", fontsize=8)
    if not finite_any and not pts:
        ax.text(0.5, 0.5, "epsilon is infinite (no DP)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("aggregation (model version)")
    ax.set_ylabel("epsilon (recomputed)")
    ax.set_title(f"User-level epsilon per client ({min(len(series), 200)} clients)")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_accuracy(metrics: Sequence[Mapping[str, Any]]) -> str | None:
    xs = [m.get("version") for m in metrics]
    ys = [m.get("test_accuracy") for m in metrics]
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if isinstance(x, int) and isinstance(y, int | float)]
    if not pts:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", markersize=3, color="#188038")
    ax.set_xlabel("aggregation (model version)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Global model accuracy")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_canaries(seen: Sequence[float], unseen: Sequence[float]) -> str | None:
    if not seen or not unseen:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    lo = min(min(seen), min(unseen))
    hi = max(max(seen), max(unseen))
    bins = np.linspace(lo, hi, 40).tolist()
    ax.hist(unseen, bins=bins, density=True, alpha=0.55, color="#5f6368", label=f"unseen canaries ({len(unseen)})")
    ax.hist(seen, bins=bins, density=True, alpha=0.6, color="#d93025", label=f"seen canaries ({len(seen)})")
    ax.set_xlabel("cosine(canary direction, final model delta)")
    ax.set_ylabel("density")
    ax.set_title("One-shot canary statistics (Andrew et al. 2024)")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_roc(attacks: Sequence[Mapping[str, Any]]) -> str | None:
    if not attacks:
        return None
    fig = _figure(5.2, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    floor = 1e-4
    for a in attacks:
        fpr = np.maximum(np.asarray(a["fpr"], dtype=float), floor)
        tpr = np.maximum(np.asarray(a["tpr"], dtype=float), floor)
        ax.step(fpr, tpr, where="post", label=f"{a['name']} (AUC {a['auc']:.3f})")
    ax.plot([floor, 1], [floor, 1], "--", color="#999", linewidth=0.8, label="chance")
    ax.axvline(1e-3, color="#d93025", linewidth=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Membership inference ROC (log-log)")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def plot_inversion(
    truth: Sequence[float], plain: Sequence[float], view: Sequence[float] | None, shape: Sequence[int],
    view_title: str, label: int,
) -> str | None:
    if not truth:
        return None
    side = [int(s) for s in shape if int(s) > 1]
    if len(side) != 2 or side[0] * side[1] != len(truth):
        side = [1, len(truth)]
    panels = [("true record" + (f" (label {label})" if label >= 0 else ""), truth),
              ("attack on the update in the clear", plain)]
    if view is not None:
        panels.append((view_title, view))
    fig = _figure(3.0 * len(panels), 3.2)
    for i, (title, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        arr = np.asarray(values, dtype=float).reshape(side)
        if not np.all(np.isfinite(arr)):
            arr = np.nan_to_num(arr)
        ax.imshow(arr, cmap="gray_r", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig)


# ----------------------------------------------------------------------------- HTML


def _table(rows: Sequence[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _list(items: Sequence[str], cls: str = "") -> str:
    if not items:
        return "<p>None.</p>"
    attr = f' class="{cls}"' if cls else ""
    return "".join(f"<div{attr}>{_e(i)}</div>" for i in items)


def render_report(doc: Mapping[str, Any], extras: Mapping[str, Any], path: str | Path) -> Path:
    """Write the HTML report for the audit document ``doc`` (the content of ``audit.json``).

    ``extras`` carries plot data that is too bulky for ``audit.json``: ``client_series``
    (client -> [(version, epsilon)]), ``metrics`` (rows of ``metrics.jsonl``), ROC
    curves in ``mia_curves`` and the inversion images in ``inversion_images``.
    """
    nist = doc.get("nist", {})
    verdict = doc.get("verdict", "")
    ok = bool(doc.get("ok"))
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'>",
        f"<title>secure-fl privacy audit: {_e(doc.get('run_dir', ''))}</title><style>{_CSS}</style></head><body>",
        "<h1>Privacy audit of a secure-fl run</h1>",
        f"<p class='small'>Run directory <code>{_e(doc.get('run_dir', ''))}</code> · audited "
        f"{_e(doc.get('audited_at', ''))} · audit {'quick' if doc.get('quick') else 'full'} mode · "
        f"{_fmt(doc.get('wall_time_s'))} s</p>",
        f"<div class='verdict {'pass' if ok else 'fail'}'>{_e(verdict)}</div>",
    ]
    loud = [h for h in doc.get("hazards", []) if h.get("severity") == "critical"]
    for h in loud:
        parts.append(f"<div class='loud'>⚠ {_e(h['text'])}</div>")
    failures = doc.get("failures", [])
    if failures:
        parts.append("<h2>Failed checks</h2>" + _list(failures, "warn"))

    # --- NIST SP 800-226 questions
    parts.append("<h2>Privacy guarantee (NIST SP 800-226 questions)</h2>")
    parts.append(_table([(k, _e(v)) for k, v in nist.items()]))

    # --- hazards
    parts.append("<h2>Remaining privacy hazards</h2>")
    hz = doc.get("hazards", [])
    parts.append(
        "".join(
            f"<div class='{'loud' if h.get('severity') == 'critical' else 'warn'}'>"
            f"[{_e(h.get('severity'))}] {_e(h.get('text'))}</div>"
            for h in hz
        )
        or "<p>None identified.</p>"
    )

    # --- parameters
    params = doc.get("parameters", {})
    parts.append("<h2>Parameters</h2>" + _table([(k, _e(_fmt(v))) for k, v in params.items()]))

    # --- ledger
    ledger = doc.get("ledger", {})
    parts.append("<h2>1. Signed ledger</h2>")
    parts.append(
        _table(
            [
                ("Result", "verified" if ledger.get("ok") else "<b>FAILED</b>"),
                ("Entries in the chain", _e(ledger.get("entries"))),
                ("Head hash", f"<code>{_e(ledger.get('head'))}</code>"),
                ("Anchors checked", _e(ledger.get("anchors"))),
                ("Public key", f"<code>{_e(ledger.get('public_key_sha256'))}</code> (SHA-256 of the PEM)"),
                ("Configuration hash", _e(ledger.get("config_check"))),
                ("Client countersignatures", _e(ledger.get("witnesses"))),
                ("Roster", _e(_roster_line(ledger.get("roster")))),
            ]
        )
    )
    probs = ledger.get("problems", [])
    if probs:
        parts.append(
            "<table><tr><th>Line</th><th>Entry</th><th>Kind</th><th>Message</th></tr>"
            + "".join(
                f"<tr><td>{_e(p['line'])}</td><td>{_e(p['entry_index'])}</td><td>{_e(p['kind'])}</td>"
                f"<td>{_e(p['message'])}</td></tr>"
                for p in probs[:100]
            )
            + "</table>"
        )
    parts.append(f"<p class='small'><b>What the signatures prove.</b> {_e(ledger.get('limits', ''))}</p>")

    # --- epsilon
    eps = doc.get("epsilon", {})
    parts.append("<h2>2. Independent epsilon recomputation</h2>")
    parts.append(
        _table(
            [
                ("Result", _e(eps.get("status"))),
                ("Recomputed epsilon (max over clients, against the server)", _e(_fmt(_as_float(eps.get("recomputed_epsilon"))))),
                ("Claimed epsilon (summary.json)", _e(_fmt(_as_float(eps.get("claimed_epsilon"))))),
                ("Recomputed / claimed released-model epsilon",
                 _e(f"{_fmt(_as_float(eps.get('recomputed_released_model')))} / {_fmt(_as_float(eps.get('claimed_released_model')))}")),
                ("delta", _e(_fmt(eps.get("delta")))),
                ("Claims checked / disagreeing", _e(f"{eps.get('checked_claims')} / {eps.get('mismatch_count')}")),
                ("Tolerance", _e(f"{100 * float(eps.get('tolerance', 0)):.1f}% relative")),
            ]
        )
    )
    mism = eps.get("mismatches", [])
    if mism:
        parts.append(_list([m["location"] + ": " + m["message"] for m in mism], "warn"))
    if eps.get("notes"):
        parts.append(_list(eps["notes"], "small"))
    figs: list[str] = []
    series = extras.get("client_series") or {}
    claimed_hist = [
        (h["version"], _as_float(h.get("claimed_epsilon_max")))
        for h in eps.get("history", [])
        if isinstance(h.get("version"), int)
    ]
    uri = plot_epsilon(series, claimed_hist)
    if uri:
        figs.append(_img(uri, "epsilon per client", "Recomputed epsilon of each client after each aggregation it joined; red: the ledger's claimed maximum."))
    uri = plot_accuracy(extras.get("metrics") or [])
    if uri:
        figs.append(_img(uri, "accuracy", "Test accuracy of the global model per aggregation (metrics.jsonl)."))
    if figs:
        parts.append("<div class='grid'>" + "".join(figs) + "</div>")

    # --- transcript / server view
    tr = doc.get("transcript", {})
    sv = doc.get("server_view", {})
    parts.append("<h2>3. What the server saw</h2>")
    parts.append(
        _table(
            [
                ("Transcript", "verified" if tr.get("ok") else ("<b>FAILED</b>" if tr.get("present") else "missing")),
                ("Messages recorded", _e(tr.get("records"))),
                ("Server view", _e(sv.get("status"))),
                ("Statement", _e(sv.get("statement"))),
            ]
        )
    )
    if tr.get("problems"):
        parts.append(_list(tr["problems"], "warn"))

    # --- empirical
    emp = doc.get("empirical", {})
    parts.append("<h2>4. Empirical privacy tests</h2>")
    if emp.get("skipped"):
        parts.append(f"<p>{_e(emp['skipped'])}</p>")
    can = emp.get("canary") or {}
    if can.get("error"):
        parts.append(f"<div class='warn'>Canary estimate not run: {_e(can['error'])}</div>")
    elif can:
        setup = can.get("setup", {})
        parts.append("<h3>One-shot canary estimate (Andrew et al., ICLR 2024)</h3>")
        parts.append(
            _table(
                [
                    ("Verdict", _e(can.get("verdict"))),
                    ("Estimated epsilon (released model)", _e(f"{_fmt(_as_float(can.get('epsilon_estimate')))} "
                     f"at delta={can.get('delta')} (point estimate: never fails a run by itself)")),
                    ("One-sided lower confidence bound (decides the verdict)", _e(
                     f"{_fmt(_as_float(can.get('epsilon_lower_bound')))} at {float(can.get('confidence') or 0):.0%} "
                     f"confidence, from {setup.get('canaries_seen')} seen and {setup.get('canaries_unseen')} unseen "
                     "canaries; the run fails only if it exceeds the claimed epsilon or the re-run's bound")),
                    ("Claimed epsilon", _e(_fmt(_as_float(can.get("claimed_epsilon"))))),
                    ("Accountant bound of the re-run itself", _e(_fmt(_as_float(can.get("rerun_epsilon_bound"))))),
                    ("Separate-variance fit (paper's estimator)", _e(_fmt(can.get("fit", {}).get("epsilon_separate_variances")))),
                    ("Re-run", _e(
                        f"{setup.get('aggregations')} of {setup.get('configured_aggregations')} aggregations, "
                        f"{setup.get('real_clients_per_aggregation')} real clients + {setup.get('canaries_seen')} seen canaries "
                        f"(participation {setup.get('canary_participation_rate')}), {setup.get('canaries_unseen')} unseen, "
                        f"d = {setup.get('dimension')}, protocol {setup.get('protocol')}, mechanism {setup.get('mechanism')}, "
                        f"z = {setup.get('noise_multiplier')}")),
                ]
            )
        )
        uri = plot_canaries(can.get("seen_cosines", []), can.get("unseen_cosines", []))
        if uri:
            parts.append(_img(uri, "canary cosines", "Cosines of seen (inserted) vs unseen canary directions with the final model delta. Overlap means the model reveals little about any one client."))
    mia = emp.get("membership_inference") or {}
    if mia.get("error"):
        parts.append(f"<div class='warn'>Membership inference not run: {_e(mia['error'])}</div>")
    elif mia:
        parts.append("<h3>Membership inference on records</h3>")
        parts.append(
            "<table><tr><th>Attack</th><th>AUC</th><th>TPR at 0.1% FPR</th></tr>"
            + "".join(
                f"<tr><td>{_e(a['name'])}</td><td>{a['auc']:.3f}</td><td>{a['tpr_at_0.1%_fpr']:.4f}</td></tr>"
                for a in mia.get("attacks", [])
            )
            + "</table>"
        )
        parts.append(f"<p class='small'>{_e(mia.get('note', ''))} Reference models: {_e(mia.get('reference_models'))}, "
                     f"each trained on {_e(mia.get('reference_training_records'))} records disjoint from those evaluated.</p>")
        uri = plot_roc(extras.get("mia_curves") or [])
        if uri:
            parts.append(_img(uri, "membership inference ROC", "ROC of the attacks on log-log axes; the dotted line marks 0.1% FPR."))
    inv = emp.get("gradient_inversion") or {}
    if inv.get("error"):
        parts.append(f"<div class='warn'>Gradient inversion not run: {_e(inv['error'])}</div>")
    elif inv:
        parts.append("<h3>Gradient inversion of one client's update</h3>")
        q_un = inv.get("unprotected_update_attack") or {}
        q_sv = inv.get("server_view_attack") or {}
        parts.append(
            _table(
                [
                    ("What the server saw", _e(inv.get("server_saw"))),
                    ("Attack on the update in the clear (what a plain server sees)", _e(", ".join(f"{k} {_fmt(v)}" for k, v in q_un.items()))),
                    ("Attack on what the server saw", _e(", ".join(f"{k} {_fmt(v)}" for k, v in q_sv.items()) or "not applicable")),
                    ("Record recovered by the server", "<b>yes</b>" if inv.get("recovered_from_server_view") else "no"),
                    ("Note", _e(inv.get("note"))),
                ]
            )
        )
        images = extras.get("inversion_images") or {}
        uri = plot_inversion(
            images.get("truth", ()), images.get("plain", ()), images.get("view"), images.get("shape", ()),
            images.get("view_title", "attack on what the server saw"), int(images.get("label", -1)),
        )
        if uri:
            parts.append(_img(uri, "gradient inversion", "Left: the client's record. Middle: analytic inversion of its one-step update (Phong et al. 2018; Geiping et al. 2020). Right: the same attack on what the server actually received."))
    parts.append(
        "<h2>How to read this report</h2><p class='small'>Verification (ledger, transcript, epsilon) is exact: a "
        "failure is a finding. The empirical tests are measurements of specific attacks on a reduced re-run "
        "and on the released model; passing them does not prove privacy, failing them disproves a claim. "
        "The machine-readable version of everything above is <code>audit.json</code>.</p>"
    )
    parts.append("</body></html>")
    target = Path(path)
    target.write_text("\n".join(parts), encoding="utf-8")
    return target
