"""Parallel clients in the in-process transport (secure_fl.workers, issue 17).

Defect reproduced first: the in-process transport ran every client's local training one
after another in one process. These tests require that jobs really run in
``simulation.workers`` processes, that results are identical for 1 and 2 workers under
``simulation.reproducible_noise`` (metrics and ledger bodies), and that no worker
outlives its pool, on success or on an exception (the Ctrl-C path).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import pytest

from secure_fl.config import load_config
from secure_fl.errors import ConfigError
from secure_fl.runner import run
from secure_fl.workers import WorkerPool, resolved_workers, usable_cores


def _pid_and_square(x: int) -> tuple[int, int]:
    import time

    time.sleep(0.01)
    return os.getpid(), x * x


def test_pool_runs_jobs_in_worker_processes_in_job_order() -> None:
    with WorkerPool(_pid_and_square, workers=2) as pool:
        out = pool.map(list(range(40)))
        assert pool.parallel
        children = mp.active_children()
        assert len(children) == 2
    assert [sq for _, sq in out] == [x * x for x in range(40)]
    pids = {pid for pid, _ in out}
    assert os.getpid() not in pids and len(pids) == 2
    for child in children:
        child.join(timeout=5)
        assert not child.is_alive()
    assert mp.active_children() == []


def test_one_worker_runs_in_process() -> None:
    with WorkerPool(_pid_and_square, workers=1) as pool:
        assert not pool.parallel
        assert {pid for pid, _ in pool.map([1, 2, 3])} == {os.getpid()}


def test_an_exception_in_the_parent_terminates_the_workers() -> None:
    children: list[Any] = []
    with pytest.raises(KeyboardInterrupt), WorkerPool(_pid_and_square, workers=2) as pool:
        pool.map([1, 2])
        children = mp.active_children()
        raise KeyboardInterrupt  # what Ctrl-C raises in the parent
    assert len(children) == 2
    for child in children:
        child.join(timeout=5)
        assert not child.is_alive()


def test_worker_count_is_validated_and_defaults_to_usable_cores() -> None:
    with pytest.raises(ConfigError, match="workers"):
        load_config(None, ["simulation.workers=0"])
    with pytest.raises(ConfigError, match="workers"):
        WorkerPool(_pid_and_square, workers=0)
    assert resolved_workers(load_config(None, [])) == usable_cores() == len(os.sched_getaffinity(0))
    assert resolved_workers(load_config(None, ["simulation.workers=3"])) == 3


def _ledger_bodies(path: Path) -> list[dict[str, Any]]:
    bodies = []
    for line in (path / "ledger.jsonl").read_text(encoding="utf-8").splitlines():
        body = json.loads(line)["body"]
        body.pop("wall_time_s", None)
        body.pop("config_sha256")  # the configurations differ in simulation.workers only
        bodies.append(body)
    return bodies


@pytest.mark.parametrize(
    "extra",
    [
        ["protocol=secagg", "dp.mechanism=discrete_gaussian", "simulation.dropout=0.1"],
        ["aggregation.mode=async", "simulation.stragglers=0.3", "sparsity.kind=prune",
         "sparsity.density=0.5"],
    ],
    ids=["sync-secagg-ddg", "async-prune"],
)
def test_results_do_not_depend_on_the_worker_count(tmp_path: Path, extra: list[str]) -> None:
    common = ["rounds=3", "clients.num=12", "simulation.reproducible_noise=true", *extra]
    runs = {}
    for w in (1, 2):
        cfg = load_config(None, [*common, f"simulation.workers={w}"])
        runs[w] = run(cfg, out_dir=tmp_path / f"w{w}", progress=False)
    strip = [[{k: v for k, v in m.items() if k != "wall_time_s"} for m in r.metrics]
             for r in runs.values()]
    assert strip[0] == strip[1]
    assert (runs[1].weights == runs[2].weights).all()
    assert _ledger_bodies(tmp_path / "w1") == _ledger_bodies(tmp_path / "w2")
    assert mp.active_children() == []


def test_in_process_workers_exit_when_the_server_process_is_killed() -> None:
    # A SIGKILLed server (the crash `secure-fl run --resume` recovers from) must not leave
    # its forked client workers blocked on their pipes forever.
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import time\n"
        "from secure_fl.transport.inprocess import _PinnedPool\n"
        "pool = _PinnedPool([], 2)\n"
        "print(' '.join(str(p.pid) for p in pool.procs), flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    alive = pids
    for _ in range(100):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            alive.append(pid)
        if not alive:
            break
        time.sleep(0.1)
    for pid in alive:  # do not leak them from the test either
        os.kill(pid, signal.SIGKILL)
    assert alive == []
