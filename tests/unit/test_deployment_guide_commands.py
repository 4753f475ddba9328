"""The `flwr run` commands of docs/deployment.md configure runs the ServerApp accepts.

Regression: the guide's Part 3 example (secagg + async buffers + random-k + record-level
DP-SGD on the three pilot sites) used ``aggregation.buffer_size=2``; a buffer is one
SecAgg+ cohort, and a cohort of 2 with ``threat.max_colluders = 1`` leaves each site one
mask partner, so the ServerApp refused the configuration before hello
(``ConfigError: threat.max_colluders: ...``). Every ``--run-config`` of the guide must
give a configuration that loads and calibrates exactly as the ServerApp does it.

Regression: "Resume a Flower run" (``--run-config 'out-dir="runs/pilot" resume=true'``)
failed at once with ``[code: 15] Invalid run configuration.``: the SuperLink accepts only
run-config keys the app's ``[tool.flwr.app.config]`` declares (``fuse_dicts(...,
check_keys=True)``), and neither the pilot app nor the app
:mod:`secure_fl.transport.flower.local` writes declared ``resume`` or ``state-dir``.
Every key :meth:`DeploymentSettings.from_run_config` reads must be declared, and every
key a guide command sets must be one of them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from secure_fl.accounting import calibrate_config
from secure_fl.config import load_config
from secure_fl.transport.flower import local
from secure_fl.transport.flower.settings import DeploymentSettings

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deployment.md"
APP = ROOT / "examples" / "flower_pilot"


def _flwr_run_commands() -> list[str]:
    """Every `flwr run examples/flower_pilot ...` command of the guide's bash blocks,
    continuation lines joined."""
    text = GUIDE.read_text(encoding="utf-8")
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip().startswith("flwr run examples/")]
    return commands


def _app_config(pyproject: str) -> dict[str, object]:
    return dict(tomllib.loads(pyproject)["tool"]["flwr"]["app"]["config"])


PILOT_CONFIG = _app_config((APP / "pyproject.toml").read_text(encoding="utf-8"))


def _overrides(command: str) -> dict[str, object]:
    """The command's ``--run-config``, parsed as the flwr CLI parses it."""
    m = re.search(r"--run-config\s+('([^']*)'|\"((?:[^\"\\]|\\.)*)\")", command)
    if not m:
        return {}
    arg = m.group(2) if m.group(2) is not None else m.group(3).replace('\\"', '"')
    return dict(parse_config_args([arg]))


def _run_config(command: str) -> dict[str, object]:
    """The app's run configuration with the command's ``--run-config`` applied (as flwr does)."""
    return {**PILOT_CONFIG, **_overrides(command)}


class _Recorder(dict[str, object]):
    """A run configuration that records the keys read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)


def _settings_keys() -> set[str]:
    rec = _Recorder()
    DeploymentSettings.from_run_config(rec)
    return rec.read


COMMANDS = _flwr_run_commands()


def test_the_guide_has_its_flwr_run_commands() -> None:
    assert len(COMMANDS) >= 5, COMMANDS
    assert any("aggregation.mode=async" in c for c in COMMANDS)
    assert any("protocol=ckks" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_guide_run_config_is_accepted_by_the_server_app(command: str) -> None:
    settings = DeploymentSettings.from_run_config(_run_config(command), base_dir=APP)
    config = calibrate_config(load_config(settings.config_file(), list(settings.overrides)))
    assert config.rounds >= 1


def test_every_setting_the_server_app_reads_is_declared_by_the_apps() -> None:
    keys = _settings_keys()
    assert {"resume", "state-dir", "drop-plan", "out-dir", "overrides"} <= keys
    for name, declared in (("examples/flower_pilot", PILOT_CONFIG), ("local", _app_config(local._APP_PYPROJECT))):
        missing = keys - set(declared)
        assert not missing, f"{name}/pyproject.toml does not declare {sorted(missing)}: flwr run refuses them"
        DeploymentSettings.from_run_config(declared)  # the declared defaults are valid settings


@pytest.mark.parametrize("command", [c for c in COMMANDS if " pilot " in c])
def test_every_guide_run_config_key_is_declared_by_the_pilot_app(command: str) -> None:
    for key, value in _overrides(command).items():
        assert key in PILOT_CONFIG, f"{key!r} is not declared in examples/flower_pilot/pyproject.toml"
        assert type(value) is type(PILOT_CONFIG[key]), (key, value, PILOT_CONFIG[key])
