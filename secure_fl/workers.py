"""A pool of worker processes for simulated clients' jobs (in-process transport).

A simulated client's work in one aggregation (download the global model, train locally,
form its update) is independent of every other client's, so the in-process transport
runs a cohort's jobs in ``simulation.workers`` processes. The rules that keep results
identical whatever the worker count:

* every job is a small picklable description computed by the parent *in cohort order*
  (client id, base version, training seed, the seed of its CSPRNG); nothing a job does
  depends on which process runs it or on the other jobs;
* results come back in job order;
* each process runs torch with one intra-op thread (:func:`single_torch_thread`), so
  floating-point reductions are the same in every process.

Workers are created with the ``fork`` start method *after* the model and the clients'
data exist, so both reach the workers once, by copy-on-write, never per job. What changes
between aggregations (the global weights, a pruning mask) is published through
:class:`SharedArray`, an anonymous shared memory mapping made before the fork: the parent
writes it between batches, workers only read it while a batch runs.

``workers = 1`` runs the jobs in the calling process, one after another, through the same
function. Shutdown is clean: workers ignore SIGINT, so Ctrl-C reaches the parent only,
which terminates and joins the pool on the way out (``with WorkerPool(...)`` or
:meth:`WorkerPool.close`); no process outlives the pool.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.pool import Pool
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from secure_fl.config import RunConfig
from secure_fl.errors import ConfigError

__all__ = [
    "SharedArray",
    "WorkerPool",
    "resolved_workers",
    "single_torch_thread",
    "usable_cores",
]

J = TypeVar("J")
R = TypeVar("R")

# The job function of the pool being started: read by forked children (inherited memory),
# so it is never pickled. One pool per process at a time.
_JOB_FN: Callable[[Any], Any] | None = None


def usable_cores() -> int:
    """CPU cores this process may run on (``len(os.sched_getaffinity(0))``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolved_workers(config: RunConfig) -> int:
    """``simulation.workers``, or the usable cores when it is unset."""
    return config.simulation.workers or usable_cores()


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run the body with one torch intra-op thread, restoring the caller's setting.

    Tiny models spend most of a ``backward`` in the thread pool's hand-offs (about 10 ms
    for a 64-unit MLP with two threads against well under 1 ms with one); a simulation
    gets its parallelism from running clients in separate processes instead.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SharedArray:
    """A fixed-shape numpy array in anonymous shared memory, visible to forked children.

    The parent :meth:`write` s between batches; children read :attr:`array`.
    """

    def __init__(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        nbytes = max(1, int(np.prod(self.shape)) * self.dtype.itemsize)
        self._map = mmap.mmap(-1, nbytes, flags=mmap.MAP_SHARED)
        self.array: npt.NDArray[Any] = np.frombuffer(self._map, dtype=self.dtype, count=int(
            np.prod(self.shape))).reshape(self.shape)

    def write(self, values: npt.ArrayLike) -> None:
        src = np.asarray(values, dtype=self.dtype)
        if src.shape != self.shape:
            raise ConfigError(f"shared array has shape {self.shape}, got {src.shape}")
        self.array[...] = src


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import torch

    from crypto.parallel import set_threads

    torch.set_num_threads(1)
    set_threads(1)  # one job per core already: masking and verification must not oversubscribe


def _run_job(job: Any) -> Any:
    if _JOB_FN is None:
        raise RuntimeError("worker started without a job function")
    return _JOB_FN(job)


class WorkerPool(Generic[J, R]):
    """Runs ``fn(job)`` for lists of jobs in ``workers`` forked processes, in job order.

    ``fn`` and everything it reaches (model, data, :class:`SharedArray` s) must exist
    before the pool is created: children see them through ``fork``. ``workers = 1`` (or a
    platform without ``fork``) calls ``fn`` in this process.
    """

    def __init__(self, fn: Callable[[J], R], *, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be an int >= 1, got {workers!r}", field="simulation.workers")
        self.fn = fn
        self.workers = workers
        self._pool: Pool | None = None
        if workers > 1 and "fork" in mp.get_all_start_methods():
            global _JOB_FN
            if _JOB_FN is not None:
                raise ConfigError("only one worker pool can run in a process at a time")
            _JOB_FN = fn
            try:
                self._pool = mp.get_context("fork").Pool(workers, initializer=_init_worker)
            except BaseException:
                _JOB_FN = None
                raise

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def map(self, jobs: Sequence[J]) -> list[R]:
        """``[fn(job) for job in jobs]``, computed by the workers; results in job order."""
        if self._pool is None or len(jobs) <= 1:
            return [self.fn(job) for job in jobs]
        chunk = max(1, len(jobs) // (4 * self.workers))
        return self._pool.map(_run_job, list(jobs), chunksize=chunk)

    def close(self, *, terminate: bool = False) -> None:
        """Stop the workers (at once with ``terminate``) and wait for them to exit."""
        global _JOB_FN
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            if terminate:
                pool.terminate()
            else:
                pool.close()
            pool.join()
        finally:
            _JOB_FN = None

    def __enter__(self) -> WorkerPool[J, R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(terminate=exc_type is not None)
