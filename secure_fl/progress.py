"""Progress reporting: a tqdm bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    """Reports aggregation progress (round, accuracy, elapsed time).

    On a terminal a tqdm bar is drawn on stderr; when output is redirected (CI, logs),
    one plain line per aggregation is written to ``stream`` instead. ``enabled=False``
    silences it (library use).
    """

    def __init__(self, total: int, *, desc: str, enabled: bool = True, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._enabled = enabled
        self._start = time.perf_counter()
        self._total = total
        self._bar: tqdm[Any] | None = None
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(total=total, desc=desc, unit="agg", dynamic_ncols=True)
        elif enabled:
            print(f"{desc}: {total} aggregations", file=self._stream, flush=True)

    def update(self, version: int, **fields: Any) -> None:
        if not self._enabled:
            return
        shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in fields.items() if v is not None}
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(shown, refresh=True)
        else:
            elapsed = time.perf_counter() - self._start
            parts = " ".join(f"{k}={v}" for k, v in shown.items())
            print(f"[{version}/{self._total}] {parts} elapsed={elapsed:.1f}s", file=self._stream, flush=True)

    def note(self, message: str) -> None:
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
