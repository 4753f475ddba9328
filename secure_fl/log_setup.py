"""How the ``secure-fl`` command line talks to a person: one readable line per message.

Library code logs through :mod:`logging` (``secure_fl.*``, ``audits.*``, ``privacy.*``
loggers) and raises :mod:`warnings` for hazards a Python caller may want to filter. The
command line routes both to stderr as ``warning: <sentence>`` lines: a warning becomes
one log record holding its message only (no ``file.py:469: UserWarning:`` prefix and
no source line). Third-party chatter that carries nothing for the user (torch's "Full
backward hook is firing" under Opacus, on every step) is filtered out.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["LOG_LEVELS", "WARNINGS_LOGGER", "cli_logging"]

#: The values of ``--log-level``.
LOG_LEVELS = ("debug", "info", "warning", "error")
#: The logger that carries Python warnings.
WARNINGS_LOGGER = "secure_fl.warnings"

#: Third-party warnings with nothing for the user (regular expressions on the message).
_IGNORED_WARNINGS = (
    r"Full backward hook is firing",
    r"Secure RNG turned off",
    r"Using a non-full backward hook",
)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = " ".join(record.getMessage().split())  # one line, whatever the source
        if record.levelno >= logging.WARNING or record.levelno <= logging.DEBUG:
            return f"{record.levelname.lower()}: {text}"
        return text


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    text = str(message)
    if category not in (UserWarning, RuntimeWarning):
        text = f"{text} ({category.__name__})"
    logging.getLogger(WARNINGS_LOGGER).warning(text)


@contextmanager
def cli_logging(level: str = "info", *, stream: TextIO | None = None) -> Iterator[None]:
    """Route logging and warnings to ``stream`` (stderr) at ``level`` for one command;
    restore the previous state on exit (tests call the CLI in-process)."""
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    old_level, old_show = root.level, warnings.showwarning
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    for noisy in ("opacus", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    with warnings.catch_warnings():
        for pattern in _IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.showwarning = _show_warning
        try:
            yield
        finally:
            warnings.showwarning = old_show
            root.removeHandler(handler)
            root.setLevel(old_level)
