"""The audit pipeline behind ``secure-fl audit RUN_DIR``: :func:`audit_run`.

Steps (docs/audit-guide.md), each recorded in ``audit.json`` and ``report.html``:

1. **Ledger**: :func:`audits.ledger.verify_ledger` under ``ledger_public_key.pem``,
   anchored by ``summary.json``'s ``ledger_entries`` / ``ledger_head``; every entry's
   ``config_sha256`` must be the SHA-256 of ``config.toml``.
2. **Epsilon**: :func:`audits.epsilon_check.check_epsilon`, an independent recomputation
   from the ledger's DP events, compared with every claim.
3. **Transcript and server view**: :mod:`audits.server_view`.
4. **Empirical tests** (:mod:`audits.empirical`): one-shot canary estimate, membership
   inference, gradient inversion. They re-run the job through a
   :class:`audits.replay.JobReplay` that the caller supplies (``secure-fl audit`` passes
   the secure-fl runner's; ``audits`` never imports ``secure_fl``); without one they are
   skipped and the report says so.
5. **Report**: ``audit.json`` (machine-readable) and ``report.html`` (NIST SP 800-226
   questions, hazards, plots).

The audit *fails* (non-zero exit in the CLI) when the ledger or transcript fails
verification, the configuration does not match the ledger, the recomputed epsilon
disagrees with a claim (or cannot be recomputed), masked uploads are shown not to be
uniform, or the canary test gives statistically significant evidence that the noise
claimed is not present (its one-sided lower confidence bound, not its point estimate,
exceeds a claim; see :mod:`audits.empirical`). Hazards
(plaintext protocol, predictable noise, infinite epsilon, missing server-view data...)
are reported loudly but do not by themselves fail the audit: they are true statements
about a run, not evidence of tampering.

Two directories are not audited at all: one that is not a run (none of
:data:`RUN_FILES` is in it) raises :class:`NotARunError` (a usage error in the CLI), and
an interrupted run (no ``summary.json``) gets the verdict ``incomplete run: N of M
aggregations, no summary`` after its partial ledger is verified.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audits.empirical import (
    CanaryResult,
    EmpiricalSizes,
    canary_estimate,
    gradient_inversion,
    membership_inference,
)
from audits.epsilon_check import EpsilonCheck, check_epsilon
from audits.errors import KeyFileError, LedgerError
from audits.ledger import (
    LEDGER_FILENAME,
    PUBLIC_KEY_FILENAME,
    LedgerReport,
    load_public_key,
    verify_ledger,
)
from audits.replay import JobReplay, ReplayFactory, facts_json
from audits.report import render_report
from audits.server_view import (
    ServerViewResult,
    TranscriptCheck,
    check_server_view,
    verify_transcript,
)
from crypto.errors import SecureFLError

__all__ = ["AUDIT_JSON", "AUDIT_REPORT", "RUN_FILES", "AuditResult", "NotARunError", "audit_run", "canary_check"]

AUDIT_JSON = "audit.json"
AUDIT_REPORT = "report.html"
#: Files a run directory holds from its first aggregation on; a directory with none is not a run.
RUN_FILES = ("config.toml", LEDGER_FILENAME, "metrics.jsonl", "summary.json")


class NotARunError(LedgerError):
    """The directory given to the audit is not a run directory (``location`` names it)."""

LEDGER_LIMITS = (
    "What the signatures prove: the server's signature, that the holder of the server key wrote these entries in "
    "this order; the clients' countersignatures, verified against the roster's identity keys, that every survivor "
    "of each released aggregation accepted that entry, and through the hash chain every entry before it. A server "
    "that rewrites and re-signs the ledger with its own key therefore fails at the first rewritten entry that "
    "recorded a release, and so does an entry with a countersignature removed. This holds against a server that "
    "does not also hold the survivors' identity keys (it may collude with fewer clients than survive), and only "
    "with a roster the server cannot substitute: pass the sites' own roster (--roster); a roster.toml read from "
    "the run directory proves self-consistency only. Entries that record no release (aborted) and a tail after the "
    "last countersigned entry are vouched for by the server alone. Whether the bodies are true beyond what clients "
    "checked (their version, session and membership) is for the epsilon, transcript and empirical checks."
)

ROSTER_FILENAME = "roster.toml"


def load_roster_keys(path: Path) -> dict[str, bytes]:
    """Site name -> 32-byte identity key from a roster file (``[[sites]]`` with ``name``
    and hex ``identity_key``, as ``secure-fl roster build`` writes it). Read here as data:
    the audit does not import the orchestration package."""
    try:
        tree = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LedgerError(f"cannot read roster: {exc}", location=str(path)) from None
    sites = tree.get("sites")
    if not isinstance(sites, list) or not sites:
        raise LedgerError("the roster lists no [[sites]]", location=str(path))
    keys: dict[str, bytes] = {}
    for i, site in enumerate(sites):
        name = site.get("name") if isinstance(site, dict) else None
        hexkey = site.get("identity_key") if isinstance(site, dict) else None
        try:
            raw = bytes.fromhex(hexkey) if isinstance(hexkey, str) else b""
        except ValueError:
            raw = b""
        if not isinstance(name, str) or not name or len(raw) != 32 or name in keys:
            raise LedgerError(f"sites[{i}] needs a unique name and a 64-hex identity_key", location=str(path))
        keys[name] = raw
    return keys


@dataclass
class AuditResult:
    """Outcome of :func:`audit_run`: ``ok``, a one-line ``verdict``, the full ``document``
    (the content of ``audit.json``) and where the files were written."""

    ok: bool
    verdict: str
    failures: list[str]
    document: dict[str, Any]
    json_path: Path | None
    html_path: Path | None
    details: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


# ----------------------------------------------------------------------------- helpers


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return float(value)
    if hasattr(value, "item"):
        return _clean(value.item())
    return str(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _read_bodies(path: Path) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return out
    for n, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("body"), dict):
            out.append((n, obj["body"]))
    return out


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                rows.append(obj)
    except OSError:
        pass
    return rows


def _num(x: object) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, int | float):
        return float(x)
    if x == "inf":
        return math.inf
    return None


def _first_dict(bodies: list[tuple[int, dict[str, Any]]], key: str) -> dict[str, Any]:
    """The first ledger body's ``key`` that is an object (``{}`` if none)."""
    for _, body in bodies:
        value = body.get(key)
        if isinstance(value, dict):
            return value
    return {}


def _fmt(x: float | None) -> str:
    if x is None:
        return "none"
    if math.isinf(x):
        return "inf"
    return f"{x:.4g}"


# ----------------------------------------------------------------------------- checks


def _ledger_section(root: Path, summary: dict[str, Any], bodies: list[tuple[int, dict[str, Any]]],
                    failures: list[str], roster: Path | None = None) -> dict[str, Any]:
    pem = root / PUBLIC_KEY_FILENAME
    section: dict[str, Any] = {"ok": False, "entries": 0, "head": None, "problems": [], "limits": LEDGER_LIMITS}
    try:
        key = load_public_key(pem)
        section["public_key_sha256"] = hashlib.sha256(pem.read_bytes()).hexdigest()
    except (KeyFileError, OSError) as exc:
        failures.append(f"ledger: cannot load {PUBLIC_KEY_FILENAME}: {exc}")
        section["problems"] = [{"line": 0, "entry_index": None, "kind": "malformed", "message": str(exc)}]
        return section
    entries = summary.get("ledger_entries")
    head = summary.get("ledger_head")
    exp_entries = entries if isinstance(entries, int) and not isinstance(entries, bool) and entries >= 0 else None
    exp_head = head if isinstance(head, str) and len(head) == 64 else None
    section["anchors"] = (
        f"ledger_entries={exp_entries}, ledger_head={'set' if exp_head else 'missing'} (from summary.json)"
    )
    if not (root / LEDGER_FILENAME).is_file():
        failures.append(f"ledger: {LEDGER_FILENAME} is missing")
        section["problems"] = [{"line": 0, "entry_index": None, "kind": "truncated", "message": "file missing"}]
        return section
    roster_path = roster if roster is not None else root / ROSTER_FILENAME
    witnesses: dict[str, bytes] | None = None
    if roster is None and not roster_path.is_file():
        section["witnesses"] = "no roster: countersignatures NOT verified (pass the sites' roster with --roster)"
        failures.append("ledger: no roster to verify the clients' countersignatures against (pass --roster ROSTER)")
    else:
        try:
            witnesses = load_roster_keys(roster_path)
        except LedgerError as exc:
            failures.append(f"ledger: {exc}")
            return section
        section["roster"] = {
            "path": str(roster_path),
            "source": "given (--roster)" if roster is not None else "run directory (self-consistency only)",
            "sha256": hashlib.sha256(roster_path.read_bytes()).hexdigest(),
            "members": len(witnesses),
        }
    try:
        report: LedgerReport = verify_ledger(root / LEDGER_FILENAME, key, expected_entries=exp_entries,
                                             expected_head=exp_head, client_public_keys=witnesses,
                                             require_witnesses=witnesses is not None)
    except LedgerError as exc:
        failures.append(f"ledger: {exc}")
        return section
    if witnesses is not None:
        section["witnesses"] = (
            f"{report.countersignatures} countersignatures verified; {report.witnessed} released aggregation(s) "
            f"countersigned by every survivor"
        )
        section["countersignatures"] = report.countersignatures
        section["witnessed_entries"] = report.witnessed
    section.update(
        ok=report.ok,
        entries=report.entries,
        head=report.head,
        lines=report.lines,
        problems=[
            {"line": p.line, "entry_index": p.entry_index, "kind": p.kind, "message": p.message}
            for p in report.problems
        ],
    )
    for p in report.problems[:10]:
        failures.append(f"ledger line {p.line} (entry {p.entry_index}): {p.kind}: {p.message}")
    if len(report.problems) > 10:
        failures.append(f"ledger: {len(report.problems) - 10} more problems (see audit.json)")
    # configuration binding
    cfg = root / "config.toml"
    if cfg.is_file():
        digest = hashlib.sha256(cfg.read_bytes()).hexdigest()
        bad = [line for line, b in bodies if b.get("config_sha256") not in (None, digest)]
        if bad:
            section["config_check"] = f"MISMATCH: config.toml SHA-256 {digest[:16]}... differs from ledger lines {bad[:5]}"
            failures.append(
                f"config.toml: SHA-256 differs from body.config_sha256 of ledger line {bad[0]} "
                "(the configuration is not the one the ledger was signed for)"
            )
        else:
            section["config_check"] = f"config.toml SHA-256 {digest[:16]}... matches every ledger entry"
    else:
        section["config_check"] = "config.toml missing"
        failures.append("config.toml is missing")
    return section


def _hazards(config: dict[str, Any], summary: dict[str, Any], eps: EpsilonCheck, view: ServerViewResult,
             bodies: list[tuple[int, dict[str, Any]]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def add(severity: str, text: str) -> None:
        out.append({"severity": severity, "text": text})

    sim = config.get("simulation", {})
    dp = config.get("dp", {})
    protocol = config.get("protocol", summary.get("protocol"))
    mechanism = dp.get("mechanism", "none")
    if sim.get("reproducible_noise"):
        add("critical", "simulation.reproducible_noise = true: all DP noise, rounding and masks were derived from the "
            "public seed. Anyone who knows the configuration can regenerate and subtract the noise; the differential "
            "privacy guarantee is VOID for this run. Use it for research reproducibility only.")
    if protocol == "plain":
        add("critical", "protocol = plain: the server received every individual client update in the clear. "
            "Nothing protects an individual update from the server (or anyone who breaches it).")
    recomputed = eps.recomputed_epsilon
    record_level = bool(dp.get("record_level"))
    if mechanism == "none" and not record_level:
        add("critical", "no differential privacy: dp.mechanism = 'none' and no record-level DP-SGD; epsilon is "
            "undefined (infinite) for every unit")
    elif mechanism == "none":
        add("high", "no client-level differential privacy (dp.mechanism = 'none'): a client's whole contribution is "
            "protected only through the record-level DP-SGD guarantee of each of its records "
            f"(record-level epsilon {_fmt(_num(summary.get('epsilon_record_level_max')))})")
    elif protocol != "plain" and (recomputed is None or math.isinf(recomputed)):
        add("critical", f"no guarantee against the server although dp.mechanism = {mechanism!r}: an aggregation "
            "released a sum without honest noise (epsilon is infinite)")
    # The released event carries every noise share (dp_event may be non-private against the
    # server only because all survivors could be colluders).
    nonprivate = [line for line, b in bodies if not b.get("aborted")
                  and isinstance(ev := b.get("dp_event_released", b.get("dp_event")), dict)
                  and ev.get("type") == "non_private"]
    if mechanism != "none" and nonprivate:
        add("critical", f"dp.mechanism = {mechanism!r} but {len(nonprivate)} aggregation(s) released without noise "
            f"(ledger lines {nonprivate[:5]}): noise was disabled")
    n_clients = config.get("clients", {}).get("num")
    delta = eps.delta
    if delta is not None and isinstance(n_clients, int) and n_clients > 0 and delta >= 1.0 / n_clients:
        add("high", f"delta = {delta:g} is not small compared with 1/N = 1/{n_clients}: a mechanism could publish one "
            "client's data outright with probability delta")
    claimed_server = _num(summary.get("epsilon_against_server"))
    if claimed_server is not None and math.isfinite(claimed_server) and claimed_server > 10:
        add("high", f"epsilon = {claimed_server:.3g} > 10 against the server: a weak guarantee (NIST SP 800-226 "
            "calls large epsilons a hazard)")
    if summary.get("epsilon_exceeds_target"):
        add("high", f"epsilon {_fmt(claimed_server)} exceeds the target {summary.get('target_epsilon')}: "
            f"{summary.get('epsilon_exceeds_target_reason', '')}")
    for h in summary.get("hazards") or []:
        add("high", "release outside the accounting: " + str(h))
    if view.status == "insufficient_data":
        add("high", "server view not testable: " + view.statement)
    if protocol == "secagg" and mechanism == "none":
        add("high", "secure aggregation without DP: the server never sees an individual update, but the exact "
            "aggregate (and the model) can reveal individual contributions, e.g. by differencing cohorts")
    if protocol == "secagg":
        add("medium", "secure aggregation assumes fewer than t colluding clients in any neighbourhood: the server "
            "together with t clients of a client's neighbourhood can unmask that client's update")
    colluders = summary.get("colluding_clients_assumed", config.get("threat", {}).get("max_colluders"))
    if mechanism != "none" and protocol != "plain":
        add("medium", f"the epsilon against the server assumes at most {colluders} client(s) collude with it "
            "(threat.max_colluders): more colluders subtract more noise shares")
    if protocol == "ckks":
        add("medium", "CKKS assumes the key holder does not collude with the server and an honest-but-curious "
            "server; together they decrypt every individual ciphertext")
    if summary.get("epsilon_released_model_reason") and mechanism != "none":
        add("medium", "no released-model epsilon: " + str(summary["epsilon_released_model_reason"]))
    for w in summary.get("privacy_warnings") or []:
        add("medium", str(w))
    if mechanism != "none" and not record_level:
        add("info", "record-level (example-level) DP is not enabled; records are protected only through the "
            "client-level guarantee of the client holding them")
    add("info", "the empirical tests measure specific attacks on a reduced re-run and the released model: they "
        "can refute a claim, never prove one")
    return out


def _nist(config: dict[str, Any], summary: dict[str, Any], eps: EpsilonCheck,
          bodies: list[tuple[int, dict[str, Any]]]) -> dict[str, str]:
    """The NIST SP 800-226 rows, each computed from this run's configuration, summary
    and ledger (the independent references come from :mod:`audits.epsilon_check`)."""
    dp = config.get("dp", {})
    protocol = config.get("protocol", summary.get("protocol", "?"))
    mechanism = dp.get("mechanism", "none")
    record_level = bool(dp.get("record_level"))
    n = config.get("clients", {}).get("num")
    per_round = config.get("clients", {}).get("per_round", n)
    delta = eps.delta if eps.delta is not None else _num(summary.get("delta"))
    colluders = summary.get("colluding_clients_assumed", config.get("threat", {}).get("max_colluders", "?"))
    sampling = summary.get("cohort_sampling", "?")
    units: list[str] = []
    if mechanism != "none":
        units.append("client (user level): one client's whole clipped update to one aggregation")
    if record_level:
        units.append("record (example level): one training example of a site, via DP-SGD inside the client")
    unit = "; ".join(units) if units else "none: no differential privacy was applied"
    relations: list[str] = []
    if mechanism != "none":
        relations.append(
            "client level: zero-out (the client's update is replaced by zero, its noise share stays); "
            "replace-one reported beside it"
        )
    if record_level:
        relations.append("record level: add or remove one training example (Poisson-sampled DP-SGD batches)")
    eps_rows: list[str] = []
    if mechanism != "none":
        if protocol == "plain":
            eps_rows.append("against the server: none (protocol = plain: the server sees every update in the clear)")
        else:
            eps_rows.append(
                f"against the server (the server plus up to {colluders} colluding client(s), no amplification): "
                f"epsilon = {_fmt(_num(summary.get('epsilon_against_server')))} zero-out, "
                f"{_fmt(_num(summary.get('epsilon_against_server_replace_one')))} replace-one (maximum over "
                f"clients; independent reference {_fmt(eps.recomputed_epsilon)})"
            )
        released = _num(summary.get("epsilon_released_model"))
        if released is None:
            eps_rows.append(
                "released model: none (" + str(summary.get("epsilon_released_model_reason", "no sound bound")) + ")"
            )
        else:
            eps_rows.append(
                f"released model ({sampling} cohorts): epsilon = {_fmt(released)} (independent reference "
                f"{_fmt(eps.recomputed_released)}): {summary.get('epsilon_released_model_analysis', '')}"
            )
    if record_level:
        per_site = summary.get("epsilon_record_level_per_site") or {}
        eps_rows.append(
            f"record level (each site's own examples, against everyone): epsilon = "
            f"{_fmt(_num(summary.get('epsilon_record_level_max')))} (maximum over {len(per_site)} sites)"
        )
    eps_text = "; ".join(eps_rows) if eps_rows else "epsilon = ∞ (no formal guarantee)"
    if delta is not None and isinstance(n, int) and n > 0 and eps_rows:
        ratio = (1.0 / n) / delta
        eps_text += (
            f"; delta = {delta:g} vs 1/N = 1/{n} = {1.0 / n:.3g}: delta is {ratio:,.0f} times smaller than 1/N"
            if ratio > 1
            else f"; delta = {delta:g} is NOT below 1/N = {1.0 / n:.3g}"
        )
    versions = _first_dict(bodies, "versions")
    accountant = (
        f"{summary.get('accountant') or 'none'} (Rényi DP composed per client, converted with Balle et al. 2020) in "
        f"secure-fl {versions.get('secure_fl', summary.get('secure_fl_version', '?'))} (privacy.accountants; Opacus "
        f"{versions.get('opacus', '?')}); checked against independent references (dp_accounting for the Gaussian "
        f"family, exact-pmf Rényi divergences for discrete sums; one-sided): {eps.status}"
    )
    meas = _first_dict(bodies, "measurements")
    noise = {
        "discrete_gaussian": "distributed discrete Gaussian noise shares (Kairouz et al. 2021)",
        "skellam": "distributed Skellam noise shares (Agarwal et al. 2021)",
        "gaussian": "Gaussian noise shares encrypted with the update" if protocol == "ckks"
        else "central Gaussian noise added by the server",
    }.get(mechanism)
    honest = (
        f" Noise is provisioned so that the shares of the survivors minus {colluders} colluding client(s) alone "
        "reach the target."
        if mechanism != "none" and protocol != "plain"
        else ""
    )
    if protocol == "secagg":
        neighbours = meas.get("neighbors")
        trust = (
            "Pairwise-masking secure aggregation (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020). No key holder: "
            "each client holds its own X25519/Ed25519 keys and self-mask seed; the server holds no secret and sees "
            f"only masked vectors and the sum. Threshold t = {meas.get('threshold', 'not recorded')} within "
            + (f"neighbourhoods of {neighbours} clients" if neighbours else "the complete graph (every cohort member)")
            + "; the server colluding with t clients of a neighbourhood can unmask a client. "
            + (f"Clients add {noise} so the server never sees an un-noised sum." if noise else
               "No DP noise (dp.mechanism = 'none'): the server sees the exact sum of the cohort's updates.")
            + honest
        )
    elif protocol == "ckks":
        trust = (
            "CKKS homomorphic encryption: a separate key holder holds the secret key and decrypts only the "
            "aggregate; the server holds the public context only. Server + key holder collusion breaks "
            "confidentiality; a malicious server is not defended (honest-but-curious assumed). "
            + (f"Clients add {noise}." if noise else "No DP noise (dp.mechanism = 'none').")
            + honest
        )
    else:
        trust = (
            "None: the server is trusted with every individual update (plain FedAvg). "
            + ("Noise is added by the server to the sum (central DP), so the server itself is not constrained by DP."
               if mechanism != "none" else "No client-level noise is added.")
        )
    if mechanism != "none":
        z = summary.get("noise_multiplier", dp.get("noise_multiplier"))
        mech_text = (
            f"{mechanism}, noise multiplier z = {_fmt(_num(z))}, clip C = {dp.get('clip')} (L2 per client update), "
            f"{summary.get('aggregations_completed', config.get('rounds'))} aggregations of "
            f"{per_round} of {n} clients ({sampling} cohorts)"
        )
    else:
        mech_text = "no client-level mechanism"
    if record_level:
        mech_text += (
            f"; record level: Opacus DP-SGD, noise multiplier {dp.get('record_noise_multiplier', 1.0)}, "
            f"per-example clip {dp.get('record_clip', 1.0)}"
        )
    return {
        "Unit of privacy": unit,
        "Neighbouring relation": "; ".join(relations) if relations else "none (no differential privacy)",
        "Epsilon and delta": eps_text,
        "Accountant and version": accountant,
        "Trust model (keys, thresholds, collusion)": trust,
        "Mechanism": mech_text,
    }


def _epsilon_headline(summary: dict[str, Any], eps: EpsilonCheck) -> str:
    """Every unit of privacy of the run in one phrase (the summary's figures, with the
    independent references), matching the run's last line."""
    parts: list[str] = []
    if summary.get("neighbouring_relation") is not None:
        if summary.get("epsilon_against_server") is not None:
            parts.append(
                f"client-level {_fmt(_num(summary.get('epsilon_against_server')))} against the server "
                f"({summary.get('neighbouring_relation')}, {summary.get('colluding_clients_assumed')} colluder(s); "
                f"reference {_fmt(eps.recomputed_epsilon)})"
            )
        else:
            parts.append("no protection against the server")
        parts.append(f"released model {_fmt(_num(summary.get('epsilon_released_model')))}")
    elif summary.get("epsilon") is None and summary.get("epsilon_record_level_max") is None:
        parts.append("no differential privacy")
    if summary.get("epsilon_record_level_max") is not None:
        parts.append(f"record-level {_fmt(_num(summary.get('epsilon_record_level_max')))}")
    return ", ".join(parts) if parts else "no differential privacy"


def _parameters(config: dict[str, Any], summary: dict[str, Any], bodies: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    dp = config.get("dp", {})
    clients = config.get("clients", {})
    meas = _first_dict(bodies, "measurements")
    n = clients.get("num")
    per_round = clients.get("per_round", n)
    private = dp.get("mechanism", "none") != "none" or bool(dp.get("record_level"))
    rows = {
        "protocol": config.get("protocol"),
        "aggregation mode": config.get("aggregation", {}).get("mode"),
        "aggregations (rounds)": config.get("rounds"),
        "clients": n,
        "clients per aggregation": per_round,
        "sampling rate q": (per_round / n) if isinstance(n, int) and isinstance(per_round, int) and n else None,
        "dataset": config.get("data", {}).get("dataset"),
        "partition": config.get("data", {}).get("partition"),
        "model": config.get("model", {}).get("kind"),
        "parameters d": summary.get("num_parameters"),
        "local epochs / lr": f"{config.get('train', {}).get('local_epochs')} / {config.get('train', {}).get('lr')}",
        "DP mechanism": dp.get("mechanism", "none"),
        "noise multiplier": dp.get("noise_multiplier") if dp.get("mechanism", "none") != "none" else None,
        "target epsilon": dp.get("target_epsilon") if dp.get("mechanism", "none") != "none" else None,
        "delta": dp.get("delta") if private else None,
        "clip": dp.get("clip") if dp.get("mechanism", "none") != "none" else None,
        "colluding clients assumed": summary.get("colluding_clients_assumed")
        if dp.get("mechanism", "none") != "none" and config.get("protocol") != "plain"
        else None,
        "cohort sampling": summary.get("cohort_sampling"),
        "record-level DP-SGD (noise / clip)": (
            f"{dp.get('record_noise_multiplier', 1.0)} / {dp.get('record_clip', 1.0)}" if dp.get("record_level") else None
        ),
        "field bits": config.get("secagg", {}).get("bits") if config.get("protocol") == "secagg" else None,
        "secagg threshold / neighbours": (
            f"{meas.get('threshold')} / {meas.get('neighbors') or 'complete graph'}"
            if config.get("protocol") == "secagg" and meas.get("threshold") is not None
            else None
        ),
        "wrap probability": meas.get("wrap_probability") if config.get("protocol") == "secagg" else None,
        "sparsity": config.get("sparsity", {}).get("kind"),
        "dropout": config.get("simulation", {}).get("dropout"),
        "reproducible noise": config.get("simulation", {}).get("reproducible_noise"),
        "final accuracy": summary.get("final_accuracy"),
    }
    # Rows that do not apply to this run are left out rather than shown as "None".
    return {k: v for k, v in rows.items() if v is not None}


def canary_check(
    replay: JobReplay, summary: dict[str, Any], *, sizes: EmpiricalSizes, delta: float | None = None
) -> CanaryResult:
    """The canary test exactly as :func:`audit_run` runs it: the claim is the run's
    released-model epsilon (else its epsilon against the server) at the summary's delta
    (else ``delta``); fresh canary randomness on every call."""
    claimed = _num(summary.get("epsilon_released_model"))
    if claimed is None:
        claimed = _num(summary.get("epsilon"))
    dlt = _num(summary.get("delta")) or delta
    return canary_estimate(replay, claimed_epsilon=claimed, delta=dlt, sizes=sizes)


def _empirical(root: Path, summary: dict[str, Any], eps: EpsilonCheck, quick: bool,
               failures: list[str], extras: dict[str, Any], replay_factory: ReplayFactory) -> dict[str, Any]:
    sizes = EmpiricalSizes.quick() if quick else EmpiricalSizes()
    section: dict[str, Any] = {"sizes": _clean(vars(sizes))}
    try:
        replay: JobReplay = replay_factory(root)
    except (SecureFLError, ValueError, OSError, RuntimeError) as exc:
        return {**section, "skipped": f"empirical tests not run: the job cannot be replayed ({exc})"}
    section["replayed_job"] = facts_json(replay.facts)
    try:
        canary = canary_check(replay, summary, sizes=sizes, delta=eps.delta)
        section["canary"] = canary.to_json()
        if canary.flagged:
            failures.append("canary estimate: " + canary.verdict)
    except (SecureFLError, ValueError, OSError, RuntimeError) as exc:
        section["canary"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        mia = membership_inference(replay, sizes=sizes)
        section["membership_inference"] = mia.to_json()
        extras["mia_curves"] = [
            {"name": a.name, "auc": a.auc, "fpr": a.fpr, "tpr": a.tpr} for a in mia.attacks
        ]
    except (SecureFLError, ValueError, OSError, RuntimeError) as exc:
        section["membership_inference"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        inv = gradient_inversion(replay)
        section["gradient_inversion"] = inv.to_json()
        extras["inversion_images"] = {
            "truth": inv.truth,
            "plain": inv.unprotected,
            "view": inv.server_view if inv.protocol != "plain" else None,
            "shape": inv.image_shape,
            "label": inv.label,
            "view_title": "attack on the masked upload" if inv.protocol == "secagg" else "attack on what the server saw",
        }
    except (SecureFLError, ValueError, OSError, RuntimeError) as exc:
        section["gradient_inversion"] = {"error": f"{type(exc).__name__}: {exc}"}
    return section


def _aggregations_recorded(bodies: list[tuple[int, dict[str, Any]]], metrics: list[dict[str, Any]]) -> int:
    """Aggregations an interrupted run completed: its highest ledger (or metrics) version."""
    versions = [b.get("version") for _, b in bodies] or [m.get("version") for m in metrics]
    ints = [v for v in versions if isinstance(v, int) and not isinstance(v, bool)]
    return max(ints) if ints else len(versions)


def _incomplete_run(root: Path, config: dict[str, Any], bodies: list[tuple[int, dict[str, Any]]],
                    out_dir: str | Path | None, write: bool, roster: Path | None) -> AuditResult:
    """Verdict on a run that stopped before writing ``summary.json``."""
    done = _aggregations_recorded(bodies, _read_metrics(root / "metrics.jsonl"))
    rounds = config.get("rounds")
    total = str(rounds) if isinstance(rounds, int) and not isinstance(rounds, bool) else "?"
    headline = f"incomplete run: {done} of {total} aggregations, no summary"
    failures = [headline]
    ledger = _ledger_section(root, {}, bodies, failures, roster)
    ledger_text = (
        f"the {ledger.get('entries')} ledger entries present verify" if ledger.get("ok")
        else "its partial ledger does NOT verify (see audit.json)"
    )
    verdict = (
        f"AUDIT INCOMPLETE: {headline} ({ledger_text}). The run stopped before it finished: "
        "no final epsilon, model or transcript to audit. Finish or resume the run, then audit it."
    )
    doc: dict[str, Any] = _clean({
        "format": "secure-fl/audit",
        "format_version": 1,
        "run_dir": str(root),
        "audited_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "ok": False,
        "status": "incomplete",
        "verdict": verdict,
        "aggregations_recorded": done,
        "aggregations_configured": rounds,
        "failures": failures,
        "ledger": ledger,
    })
    json_path = None
    if write:
        target = Path(out_dir) if out_dir is not None else root
        target.mkdir(parents=True, exist_ok=True)
        json_path = target / AUDIT_JSON
        json_path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    details = [f"FAIL {f}" for f in failures[1:]]
    return AuditResult(False, verdict, failures, doc, json_path, None, details)


# ----------------------------------------------------------------------------- pipeline


def audit_run(
    run_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    quick: bool = False,
    empirical: bool = True,
    write: bool = True,
    roster: str | Path | None = None,
    replay: ReplayFactory | None = None,
) -> AuditResult:
    """Audit the run directory ``run_dir``; write ``audit.json`` and ``report.html``
    to ``out_dir`` (default: ``run_dir``). ``quick`` shrinks the empirical tests;
    ``empirical=False`` skips them (verification only). ``roster``: the sites' roster
    file whose identity keys verify the countersignatures (default: ``roster.toml`` in
    the run directory, which proves self-consistency only). ``replay`` builds the
    :class:`~audits.replay.JobReplay` the empirical tests re-run the job with; without
    it they are skipped.

    Raises :class:`NotARunError` when ``run_dir`` is not a run directory. A run without
    ``summary.json`` (interrupted) gets an ``incomplete run`` verdict and no report.
    """
    start = time.perf_counter()
    root = Path(run_dir)
    if not root.is_dir():
        raise NotARunError("not a directory", location=str(root))
    if not any((root / name).is_file() for name in RUN_FILES):
        raise NotARunError(
            "not a run directory: it holds none of " + ", ".join(RUN_FILES)
            + " (give the directory `secure-fl run --out` wrote)",
            location=str(root),
        )
    try:
        config = tomllib.loads((root / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    bodies = _read_bodies(root / LEDGER_FILENAME)
    if not (root / "summary.json").exists():
        return _incomplete_run(root, config, bodies, out_dir, write, Path(roster) if roster is not None else None)
    failures: list[str] = []
    extras: dict[str, Any] = {}
    summary = _read_json(root / "summary.json")
    if summary is None:
        failures.append("summary.json: not a JSON object")
        summary = {}

    ledger = _ledger_section(root, summary, bodies, failures, Path(roster) if roster is not None else None)
    eps = check_epsilon(root)
    if eps.status == "disagree":
        first = eps.mismatches[0] if eps.mismatches else None
        failures.append(
            f"epsilon: {eps.mismatch_count} claim(s) disagree with the independent recomputation"
            + (f"; first at {first.location}: {first.message}" if first else "")
        )
    elif eps.status == "unverifiable":
        failures.append("epsilon: cannot be recomputed from the ledger (" + "; ".join(eps.notes[:3]) + ")")
    tcheck: TranscriptCheck = verify_transcript(root, bodies, summary)
    for p in tcheck.problems:
        failures.append("transcript: " + p)
    protocol = str(config.get("protocol", summary.get("protocol", "")))
    view = check_server_view(protocol, tcheck.transcript)
    if view.status == "fail":
        failures.append("server view: " + view.statement)

    metrics = _read_metrics(root / "metrics.jsonl")
    extras["metrics"] = metrics
    extras["client_series"] = eps.client_series
    emp: dict[str, Any]
    if empirical and config and replay is not None:
        emp = _empirical(root, summary, eps, quick, failures, extras, replay)
    elif not empirical:
        emp = {"skipped": "empirical tests skipped (--no-empirical)"}
    elif not config:
        emp = {"skipped": "empirical tests skipped (config.toml unreadable)"}
    else:
        emp = {"skipped": "empirical tests skipped: no job replay was supplied (`secure-fl audit` supplies one)"}

    ok = not failures
    can = emp.get("canary") or {}
    parts = [
        f"ledger {'verified (' + str(ledger.get('entries')) + ' entries)' if ledger.get('ok') else 'FAILED'}"
        + (f", {ledger['countersignatures']} countersignatures verified" if ledger.get("ok")
           and "countersignatures" in ledger else ""),
        f"epsilon {'no client-level DP' if eps.status == 'no_dp' else eps.status}: "
        f"{_epsilon_headline(summary, eps)}",
        f"transcript {'verified' if tcheck.ok else 'FAILED'}",
        f"server view {view.status}",
    ]
    if "epsilon_estimate" in can:
        parts.append(
            f"canary estimate {_fmt(_num(can['epsilon_estimate']))} (lower bound "
            f"{_fmt(_num(can.get('epsilon_lower_bound')))} at {_num(can.get('confidence')) or 0:.0%})"
        )
    verdict = ("AUDIT PASS: " if ok else "AUDIT FAIL: ") + "; ".join(parts)
    hazards = _hazards(config, summary, eps, view, bodies)
    doc: dict[str, Any] = {
        "format": "secure-fl/audit",
        "format_version": 1,
        "run_dir": str(root),
        "audited_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "ok": ok,
        "verdict": verdict,
        "failures": failures,
        "hazards": hazards,
        "nist": _nist(config, summary, eps, bodies),
        "parameters": _parameters(config, summary, bodies),
        "ledger": ledger,
        "epsilon": eps.to_json(),
        "record_level": {
            "epsilon_max": summary.get("epsilon_record_level_max"),
            "per_site": summary.get("epsilon_record_level_per_site"),
            "relation": summary.get("neighbouring_relation_record_level"),
        }
        if summary.get("epsilon_record_level_max") is not None
        else None,
        "transcript": tcheck.to_json(),
        "server_view": view.to_json(),
        "empirical": emp,
    }
    doc["wall_time_s"] = round(time.perf_counter() - start, 3)
    doc = _clean(doc)
    json_path = html_path = None
    if write:
        target = Path(out_dir) if out_dir is not None else root
        target.mkdir(parents=True, exist_ok=True)
        json_path = target / AUDIT_JSON
        json_path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        html_path = render_report(doc, extras, target / AUDIT_REPORT)
    details = [*(f"FAIL {f}" for f in failures), *(f"{h['severity'].upper()} {h['text']}" for h in hazards
                                                    if h["severity"] in ("critical", "high"))]
    return AuditResult(ok, verdict, failures, doc, json_path, html_path, details)
