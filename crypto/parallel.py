"""Threads for the cryptographic hot paths: one process-wide pool and its thread count.

Two kinds of work release the GIL and so run on several cores from threads of one
process: OpenSSL's AES-CTR keystream with numpy's additions (SecAgg+ mask expansion,
:func:`crypto.secagg.client.apply_masks`) and OpenSSL's Ed25519 verification
(:func:`crypto.signatures.verify_all`), and SHA-256 over large buffers (the transcript
digests of masked uploads, :func:`background`). All take their default thread count from
:func:`threads` (the usable cores) and run on the pool :func:`pool` returns.

Processes that already run one job per core (the in-process transport's workers) call
``set_threads(1)``, so the cryptography does not oversubscribe the cores. Results never
depend on the thread count: the work is split into independent pieces whose outputs
are combined in a fixed order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from crypto.errors import LocalProtocolError

__all__ = ["background", "check_threads", "pool", "run_all", "set_threads", "threads"]

T = TypeVar("T")


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not every platform has sched_getaffinity
        return max(1, os.cpu_count() or 1)


_threads = _usable_cores()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None


def check_threads(value: object) -> int:
    """``value`` if it is a positive int; otherwise a :class:`LocalProtocolError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LocalProtocolError(f"crypto threads must be a positive int, got {value!r}")
    return value


def threads() -> int:
    """Threads the cryptographic hot paths use by default (the usable cores, until
    :func:`set_threads` says otherwise)."""
    return _threads


def set_threads(count: int) -> None:
    """Set the default thread count of mask expansion and batch verification for this process."""
    global _threads
    _threads = check_threads(count)


def pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of at least ``workers`` threads, kept between calls (starting
    threads per call costs up to milliseconds) and rebuilt in a forked child, where the
    parent's threads do not exist."""
    global _pool
    pid = os.getpid()
    if _pool is None or _pool[0] != pid or _pool[1] < workers:
        if _pool is not None and _pool[0] == pid:
            _pool[2].shutdown(wait=False)  # a larger pool replaces it: let its idle threads exit
        _pool = (pid, workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crypto"))
    return _pool[2]


def background(fn: Callable[..., T], *args: object) -> Callable[[], T]:
    """Start ``fn(*args)`` on the pool and return a function that waits for its result
    (re-raising its exception). With one thread it runs now, in this thread.

    For work that releases the GIL (hashlib over more than 2 KiB, OpenSSL) and whose
    result is needed a little later: the caller goes on meanwhile.
    """
    if _threads == 1:
        value = fn(*args)
        return lambda: value
    return pool(_threads).submit(fn, *args).result


def run_all(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run every call, the first in this thread and the others on the pool, and return
    their results in order (all are finished before an exception propagates)."""
    if len(calls) == 1:
        return [calls[0]()]
    rest = [pool(len(calls) - 1).submit(call) for call in calls[1:]]
    try:
        first = calls[0]()
    finally:
        done = [f.result() for f in rest]
    return [first, *done]
