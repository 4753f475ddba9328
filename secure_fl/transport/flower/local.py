"""A whole Flower federation on this machine: SuperLink and SuperNodes on loopback, TLS.

:func:`run_local_federation` is what the examples' ``--transport flower`` path and a
pilot's first rehearsal use: it creates certificates (:func:`secure_fl.certs.create_pilot_certs`),
builds the roster from the sites' identity keys, writes a minimal Flower app (the
secure-fl ServerApp and ClientApp), starts one ``flower-superlink`` and one
``flower-supernode`` per site file (plus the CKKS key holder's, if given), submits the
job with ``flwr run``, waits for the run directory's ``summary.json`` and stops every
process it started (by pid, with its children). The same commands, one terminal each,
are in ``docs/deployment.md``; across machines only the addresses change.

It needs the Flower command-line programs of this environment (``pip install
secure-fl[flower]``) on ``PATH`` or next to the running Python.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from secure_fl.errors import ConfigError, ProtocolError

__all__ = ["LocalFederation", "descendants", "free_port", "run_local_federation"]

BIN = Path(sys.executable).parent

_APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "secure-fl-local"
version = "0.1.0"
description = "secure-fl ServerApp and ClientApp (written by secure_fl.transport.flower.local)"
license = "Apache-2.0"
dependencies = ["secure-fl[flower]"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "securefl"

[tool.flwr.app.components]
serverapp = "local_app:server"
clientapp = "local_app:client"

[tool.flwr.app.config]
config = ""
overrides = ""
out-dir = ""
min-nodes = 2
num-classes = 2
connect-timeout = 120.0
train-timeout = 300.0
stage-timeout = 60.0
poll-interval = 0.25
feature-shape = ""
drop-plan = ""
resume = false
state-dir = ""
"""

_APP_PY = '''"""secure-fl's ServerApp and ClientApp (config paths are absolute)."""
from secure_fl.transport.flower.client_app import make_client_app
from secure_fl.transport.flower.server_app import make_server_app

server = make_server_app()
client = make_client_app()
'''


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every descendant pid of ``pid`` (from ``ps``), so a tree is killed by pid, not name."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = (int(v) for v in line.split())
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process we started and every descendant, by pid."""
    for target in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def _wait_for(path: Path, text: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    tail = path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"
    raise ProtocolError(f"{text!r} did not appear in {path} within {timeout:g} s:\n{tail}")


class LocalFederation:
    """SuperLink + SuperNodes over TLS on 127.0.0.1 (see the module docstring).

    ``nodes`` maps a node's name to its ``--node-config`` string, e.g.
    ``{"hospital-1": 'site-config="/abs/site.toml"'}``; logs go to ``root/<name>.log``.
    """

    def __init__(self, root: str | os.PathLike[str], nodes: Mapping[str, str]) -> None:
        from secure_fl.certs import create_pilot_certs

        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.nodes = dict(nodes)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "FLWR_HOME": str(self.root / "flwr-cli"), "OMP_NUM_THREADS": "1"}
        self.certs = create_pilot_certs(self.root / "certs")
        self.port = free_port()
        self._runs = 0

    def _start(self, name: str, args: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        env = {**self.env, "FLWR_HOME": str(self.root / f"flwr-{name}")}
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True
        )

    def up(self, *, timeout: float = 120.0) -> LocalFederation:
        """Start the SuperLink, then every SuperNode; return once all are connected."""
        c = self.certs
        self._start("superlink", [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(c.ca_cert),
                                  "--ssl-certfile", str(c.server_cert), "--ssl-keyfile", str(c.server_key),
                                  "--port", str(self.port), "--disable-runtime-dependency-installation"])
        _wait_for(self.root / "superlink.log", "Uvicorn running", timeout)
        for name, node_config in self.nodes.items():
            self._start(name, [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                               "--root-certificates", str(c.ca_cert), "--port", str(free_port()),
                               "--node-config", node_config])
        for name in self.nodes:
            _wait_for(self.root / f"{name}.log", "SuperNode ID", timeout)
        home = self.root / "flwr-cli"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{c.ca_cert}"\n', encoding="utf-8")
        return self

    def kill(self, name: str) -> None:
        """SIGKILL one SuperNode (and the ClientApp processes it started)."""
        _kill_tree(self.procs[name])

    def write_app(self) -> Path:
        """A minimal Flower app directory with secure-fl's ServerApp and ClientApp."""
        app = self.root / "app"
        app.mkdir(exist_ok=True)
        (app / "pyproject.toml").write_text(_APP_PYPROJECT, encoding="utf-8")
        (app / "local_app.py").write_text(_APP_PY, encoding="utf-8")
        return app

    def submit(self, app: Path, run_config: str, *, tag: str | None = None) -> subprocess.Popen[bytes]:
        """``flwr run APP local --stream --run-config RUN_CONFIG`` (returns at once)."""
        self._runs += 1
        log = (self.root / f"flwr-run-{tag or self._runs}.log").open("wb")
        return subprocess.Popen(
            [str(BIN / "flwr"), "run", str(app), "local", "--stream", "--run-config", run_config],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root, start_new_session=True,
        )

    def down(self) -> None:
        """Stop every process this federation started."""
        for proc in self.procs.values():
            if proc.poll() is None or descendants(proc.pid):
                _kill_tree(proc)

    def __enter__(self) -> LocalFederation:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def wait_for_run(proc: subprocess.Popen[bytes], out: Path, timeout: float) -> dict[str, Any]:
    """Wait for ``out/summary.json`` (or the job's end); return the summary."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not (out / "summary.json").exists():
        if proc.poll() is not None:
            time.sleep(1.0)
            break
        time.sleep(0.5)
    if proc.poll() is None:
        _kill_tree(proc)
    if not (out / "summary.json").exists():
        raise ProtocolError(f"the Flower run did not finish; see the logs in {out.parent}")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return summary


def run_local_federation(
    config_path: str | os.PathLike[str],
    site_files: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    work_dir: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    num_classes: int = 2,
    key_holder: str | os.PathLike[str] | None = None,
    min_cohort: int | None = None,
    min_threshold: int = 2,
    timeout: float = 3600.0,
    stage_timeout: float = 120.0,
) -> dict[str, Any]:
    """Run the secure-fl job of ``config_path`` on a local TLS federation of ``site_files``.

    Builds the roster from the sites' identity keys (``min_cohort`` defaults to the number
    of sites; ``key_holder``'s identity is pinned for CKKS), starts the federation in
    ``work_dir`` (default: beside ``out_dir``), submits, waits, stops it, returns
    ``summary.json``. The run directory ``out_dir`` is the one ``secure-fl audit`` reads.
    """
    from secure_fl.roster import build_roster, write_roster
    from secure_fl.transport.flower.site import load_identity_key, load_site_config

    sites = [Path(p).resolve() for p in site_files]
    if len(sites) < 2:
        raise ConfigError("a federation needs at least 2 site files", field="sites")
    out = Path(out_dir).resolve()
    work = Path(work_dir).resolve() if work_dir is not None else out.parent / f"{out.name}-flower"
    keys: dict[str, bytes] = {}
    rosters = set()
    for path in sites:
        site = load_site_config(path)
        keys[site.name] = load_identity_key(site).public_key().public_bytes_raw()
        rosters.add(site.roster)
    holder_key = None
    if key_holder is not None:
        holder_cfg = load_site_config(key_holder)
        holder_key = load_identity_key(holder_cfg).public_key().public_bytes_raw()
        rosters.add(holder_cfg.roster)
    if len(rosters) != 1 or None in rosters:
        raise ConfigError("every site file must name the same roster file", field="site.roster")
    roster_path = rosters.pop()
    write_roster(build_roster(keys, min_cohort=min_cohort or len(sites), min_threshold=min_threshold,
                              ckks_key_holder=holder_key), Path(str(roster_path)), overwrite=True)
    nodes = {f"site-{i}": f'site-config="{p}"' for i, p in enumerate(sites)}
    if key_holder is not None:
        nodes["key-holder"] = f'site-config="{Path(key_holder).resolve()}" role="key-holder"'
    fed = LocalFederation(work, nodes)
    run_config = (
        f'config="{Path(config_path).resolve()}" out-dir="{out}" min-nodes={len(nodes)} '
        f'num-classes={num_classes} stage-timeout={stage_timeout} train-timeout={stage_timeout * 5}'
    )
    if overrides:
        run_config += ' overrides="' + " ".join(overrides).replace('"', "'") + '"'
    with fed:
        return wait_for_run(fed.submit(fed.write_app(), run_config, tag=out.name), out, timeout)
