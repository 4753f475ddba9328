"""A real Flower federation on loopback for tests: one SuperLink (TLS) and N SuperNodes.

:class:`Cluster` is :class:`secure_fl.transport.flower.local.LocalFederation` (the examples'
``--transport flower`` path): every process is started there and killed by pid (its
whole tree), never by name.
One cluster serves several runs (``flwr run`` submits each job to the same SuperLink),
which keeps the Flower tests fast: a SuperNode's start-up costs seconds, a run only
its messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from secure_fl.transport.flower.local import LocalFederation, descendants, free_port  # noqa: F401 (re-exported for the tests)

BIN = Path(sys.executable).parent


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process, its process group and every descendant (by pid)."""
    pids = descendants(proc.pid)
    for target in [proc.pid, *pids]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


def wait_for(path: Path, text: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else "(no file)"
    raise AssertionError(f"{text!r} not in {path} after {timeout} s:\n{tail}")


class Cluster(LocalFederation):
    """:class:`~secure_fl.transport.flower.local.LocalFederation` plus what tests check."""

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if n != "superlink" and p.poll() is None]

    def leftovers(self) -> list[str]:
        ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        return [line for line in ps.splitlines() if str(self.root) in line or f":{self.port}" in line]


def finish(proc: subprocess.Popen[bytes], out: Path, timeout: float) -> None:
    """Wait for the run directory's summary.json (or the job's end); kill the CLI after."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not (out / "summary.json").exists():
        if proc.poll() is not None:
            time.sleep(1.0)
            break
        time.sleep(0.5)
    if proc.poll() is None:
        kill_tree(proc)
    if not (out / "summary.json").exists():
        raise AssertionError(f"run {out} did not finish; see the logs beside it")


# -- federations for tests: the simulated partition as Flower sites ------------------------------
class Federation:
    """Site files for every simulated client of ``config`` (names ``"0"``, ``"1"``, ... as
    the in-process simulator names them), a CKKS key holder site, and one roster."""

    def __init__(self, config: object, root: Path, *, min_cohort: int = 2, min_threshold: int = 2,
                 budget_cap: float = float("inf"), allow_unnoised_metrics: bool = False) -> None:
        from secure_fl.roster import build_roster, write_roster
        from secure_fl.transport.flower.site import (
            load_identity_key,
            load_site_config,
            write_partition_sites,
        )

        self.root = root
        num = config.clients.num  # type: ignore[attr-defined]
        self.sites = write_partition_sites(config, root, names=[str(i) for i in range(num)], budget_cap=budget_cap,
                                           allow_unnoised_metrics=allow_unnoised_metrics)
        self.key_holder = root / "key-holder.toml"
        self.key_holder.write_text(
            '[site]\nname = "key-holder"\ndata = "none.npz"\nkeys_dir = "keys/key-holder"\nroster = "roster.toml"\n',
            encoding="utf-8",
        )
        keys = {}
        for path in self.sites:
            site = load_site_config(path)
            keys[site.name] = load_identity_key(site).public_key().public_bytes_raw()
        holder = load_identity_key(load_site_config(self.key_holder)).public_key().public_bytes_raw()
        self.roster = write_roster(
            build_roster(keys, min_cohort=min_cohort, min_threshold=min_threshold, ckks_key_holder=holder),
            root / "roster.toml", overwrite=True,
        )

    def node_configs(self, *, key_holder: bool = True) -> dict[str, str]:
        """``--node-config`` strings by node name (``site-<name>``, ``key-holder``)."""
        out = {f"site-{p.stem}": f'site-config="{p}"' for p in self.sites}
        if key_holder:
            out["key-holder"] = f'site-config="{self.key_holder}" role="key-holder"'
        return out


# -- an in-memory Grid: the real ServerApp and ClientApp code, no network ------------------------
def fake_grid_class() -> type:
    from flwr.app import Context, Message, RecordDict
    from flwr.serverapp import Grid

    class FakeGrid(Grid):
        """Delivers each pushed message to its node's handler at once (in push order);
        ``silent`` nodes never answer."""

        def __init__(self, handlers: dict[int, object], *, node_configs: dict[int, dict[str, object]] | None = None,
                     run_config: dict[str, object] | None = None) -> None:
            from flwr.supercore.task_identity import TaskIdentity

            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
            self.handlers = handlers
            self.contexts = {
                n: Context(run_id=1, node_id=n, node_config=dict((node_configs or {}).get(n, {})),
                           state=RecordDict(), run_config=dict(run_config or {}))
                for n in handlers
            }
            self.silent: set[int] = set()
            self.silent_from: dict[int, tuple[str, int]] = {}  # node -> (unused label, messages answered)
            self.seen: dict[int, int] = {}
            self.replies: dict[str, Message] = {}
            self.pushed: list[tuple[int, str]] = []
            self._next = 0

        def set_run(self, run: object) -> None:  # pragma: no cover - unused
            pass

        @property
        def run(self) -> object:  # pragma: no cover - unused
            return None

        def create_message(self, content: object, message_type: str, dst_node_id: int, group_id: str,
                           ttl: float | None = None) -> Message:  # pragma: no cover - unused
            return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

        def get_node_ids(self) -> list[int]:
            return sorted(n for n in self.handlers if n not in self.silent)

        def push_messages(self, messages: object) -> list[str]:
            ids = []
            for msg in messages:  # type: ignore[attr-defined]
                self._next += 1
                mid = f"m{self._next}"
                msg.metadata.__dict__["_message_id"] = mid
                node = msg.metadata.dst_node_id
                self.seen[node] = self.seen.get(node, 0) + 1
                self.pushed.append((node, msg.metadata.message_type))
                ids.append(mid)
                if node in self.silent or (node in self.silent_from and self.seen[node] > self.silent_from[node][1]):
                    continue  # killed: never answers
                self.replies[mid] = self.handlers[node](msg, self.contexts[node])  # type: ignore[operator]
            return ids

        def pull_messages(self, message_ids: object) -> list[Message]:
            return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]  # type: ignore[call-overload]

        def send_and_receive(self, messages: object, *, timeout: float | None = None) -> list[Message]:
            return self.pull_messages(self.push_messages(messages))

    return FakeGrid
