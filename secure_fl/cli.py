"""The ``secure-fl`` command line.

Exit status: 0 success; 1 a run failed for a reason the library names
(:class:`~secure_fl.errors.SecureFLError`); 2 invalid configuration or usage (no
traceback is printed for either).

Messages go to stderr through :mod:`logging`, one readable line each, Python warnings
included (:mod:`secure_fl.log_setup`); ``--log-level`` (``debug`` .. ``error``, default
``info``) sets how much. It is accepted before any subcommand
(``secure-fl --log-level warning sweep ...``) and after ``run`` and ``config``;
``--quiet`` hides progress and lowers the default to ``warning``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from secure_fl import __version__
from secure_fl.config import load_config, to_toml
from secure_fl.errors import ConfigError, DataError, SecureFLError
from secure_fl.log_setup import LOG_LEVELS, cli_logging

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=Path, help="TOML configuration (default: embedded default)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration key, e.g. --set clients.num=20 (repeatable)",
    )


def _add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        help="how much to report on stderr (default: info; warning with --quiet)",
    )


def _split_log_level(args: list[str]) -> tuple[str | None, list[str]]:
    """A ``--log-level LEVEL`` (or ``--log-level=LEVEL``) before the subcommand."""
    if args and args[0] == "--log-level" and len(args) > 1:
        return args[1], args[2:]
    if args and args[0].startswith("--log-level="):
        return args[0].partition("=")[2], args[1:]
    return None, args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secure-fl",
        description="Privacy-hardened secure aggregation for federated learning.",
    )
    parser.add_argument("--version", action="version", version=f"secure-fl {__version__}")
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default=None, help="how much to report on stderr (default: info)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run one federated job")
    _add_config_args(p_run)
    p_run.add_argument("--out", type=Path, default=None, help="run directory (default runs/<timestamp>)")
    p_run.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the interrupted run in DIR after its last completed aggregation "
        "(uses DIR/config.toml; no CONFIG or --set)",
    )
    p_run.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="PATH",
        help="the server's private state directory: ledger signing key and simulated "
        "clients' key seed (default: the run directory's name + '.server', beside it)",
    )
    p_run.add_argument("--quiet", action="store_true", help="no progress output (log level warning)")
    _add_log_level(p_run)

    p_cfg = sub.add_parser("config", help="print the fully resolved configuration as TOML")
    _add_config_args(p_cfg)
    _add_log_level(p_cfg)
    for name, (_, _, text) in _DELEGATED.items():
        sub.add_parser(name, help=f"{text} (see secure-fl {name} --help)", add_help=False)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from secure_fl.runner import run

    if args.resume is not None:
        if args.config is not None or args.overrides:
            raise ConfigError(
                "--resume continues a run with its own configuration (DIR/config.toml); "
                "drop CONFIG and --set",
                field="resume",
            )
        saved = args.resume / "config.toml"
        if not saved.is_file():
            raise ConfigError(f"{args.resume} holds no config.toml: not a run directory", field="resume")
        config = load_config(saved, [])
        result = run(config, resume=args.resume, state_dir=args.state_dir, progress=not args.quiet)
    else:
        config = load_config(args.config, args.overrides)
        result = run(config, out_dir=args.out, progress=not args.quiet, state_dir=args.state_dir)
    from secure_fl.accounting import final_line

    print(final_line(result.summary, result.out_dir))
    return EXIT_OK


def _cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(to_toml(load_config(args.config, args.overrides)))
    return EXIT_OK


#: Subcommands with their own argument parsers, dispatched before the main parser.
_DELEGATED = {
    "audit": ("secure_fl.audit_rerun", "audit_main", "verify a run directory and write audit.json and report.html"),
    "sweep": ("secure_fl.sweep", "sweep_main", "run a grid of configurations, write sweep.csv and plots"),
    "bench": ("secure_fl.bench", "bench_main", "run the performance benchmarks and print their targets table"),
    "certs": ("secure_fl.certs", "certs_main", "create a CA and server certificate for a TLS pilot"),
    "roster": ("secure_fl.roster", "roster_main", "build the federation roster every site holds"),
}


def main(argv: Sequence[str] | None = None) -> int:
    level, args_list = _split_log_level(list(sys.argv[1:] if argv is None else argv))
    if level is not None and level not in LOG_LEVELS:
        print(f"secure-fl: --log-level must be one of {', '.join(LOG_LEVELS)}", file=sys.stderr)
        return EXIT_USAGE
    if args_list and args_list[0] in _DELEGATED:
        with cli_logging(level or "info"):
            return _delegate(args_list)
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse already printed the usage error
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    chosen = args.log_level or level or ("warning" if getattr(args, "quiet", False) else "info")
    with cli_logging(chosen):
        return _dispatch(args)


def _delegate(args_list: list[str]) -> int:
    """A subcommand with its own parser (``audit``, ``sweep``, ``bench``, ``certs``)."""
    import importlib

    module, func, _ = _DELEGATED[args_list[0]]
    handler = getattr(importlib.import_module(module), func)
    try:
        return int(handler(args_list[1:]))
    except ConfigError as err:
        print(f"secure-fl: configuration error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SecureFLError as err:
        print(f"secure-fl: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    handlers = {"run": _cmd_run, "config": _cmd_config}
    try:
        return handlers[args.command](args)
    except ConfigError as err:
        print(f"secure-fl: configuration error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except DataError as err:
        print(f"secure-fl: data error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SecureFLError as err:
        print(f"secure-fl: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("secure-fl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
