"""``secure-fl audit RUN_DIR [--out DIR] [--quick] [--no-empirical] [--roster ROSTER]``.

Prints a one-line verdict first, then the details (failed checks, located; loud
hazards; where the report is). Exit status: 0 the audit passed; 1 a check failed
(ledger, transcript, epsilon recomputation, server view or canary test) or the run is
incomplete (interrupted before ``summary.json``); 2 usage error (e.g. ``RUN_DIR`` is
not a run directory).

The empirical tests re-run the job through a :class:`audits.replay.ReplayFactory`
passed in by the caller (``secure-fl audit`` passes the secure-fl runner's, see
``secure_fl/audit_rerun.py``); called without one, :func:`audit_main` verifies only and
says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from audits.replay import ReplayFactory
from crypto.errors import SecureFLError

__all__ = ["audit_main", "build_parser"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser(prog: str = "secure-fl audit") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Audit a run directory: signed ledger, independent epsilon, server view, "
        "empirical privacy (canaries, membership inference, gradient inversion); writes "
        "audit.json and report.html.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="directory written by `secure-fl run`")
    p.add_argument("--out", type=Path, default=None, help="where to write audit.json and report.html (default RUN_DIR)")
    p.add_argument("--quick", action="store_true", help="smaller empirical tests (seconds, for CI)")
    p.add_argument("--no-empirical", action="store_true", help="verification only: skip the re-runs and attacks")
    p.add_argument("--roster", type=Path, default=None, metavar="ROSTER",
                   help="the sites' roster: identity keys that verify the clients' countersignatures "
                   "(default RUN_DIR/roster.toml, which proves self-consistency only)")
    return p


def audit_main(argv: Sequence[str] | None = None, *, replay: ReplayFactory | None = None) -> int:
    """Entry point of ``secure-fl audit``; returns the exit status. ``replay`` re-runs
    the job for the empirical tests (skipped without it)."""
    from audits.audit import NotARunError, audit_run

    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if not args.run_dir.is_dir():
        print(f"secure-fl audit: {args.run_dir} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = audit_run(
            args.run_dir, out_dir=args.out, quick=args.quick, empirical=not args.no_empirical,
            roster=args.roster, replay=replay,
        )
    except NotARunError as exc:
        print(f"secure-fl audit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SecureFLError as exc:
        print(f"AUDIT FAIL: {exc}")
        return EXIT_FAILED
    print(result.verdict)
    for line in result.details:
        print("  " + line)
    if result.json_path is not None:
        print(f"  audit.json: {result.json_path}")
    if result.html_path is not None:
        print(f"  report.html: {result.html_path}")
    return result.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(audit_main())
