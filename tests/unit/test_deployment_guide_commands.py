"""The `flwr run` commands of docs/deployment.md configure runs the ServerApp accepts.

Regression: the guide's Part 3 example (secagg + async buffers + random-k + record-level
DP-SGD on the three pilot sites) used ``aggregation.buffer_size=2``; a buffer is one
SecAgg+ cohort, and a cohort of 2 with ``threat.max_colluders = 1`` leaves each site one
mask partner, so the ServerApp refused the configuration before hello
(``ConfigError: threat.max_colluders: ...``). Every ``--run-config`` of the guide must
give a configuration that loads and calibrates exactly as the ServerApp does it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from secure_fl.accounting import calibrate_config
from secure_fl.config import load_config
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


def _run_config(command: str) -> dict[str, object]:
    """The app's run configuration with the command's ``--run-config`` applied (as flwr does)."""
    base = tomllib.loads((APP / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    rc = dict(base)
    m = re.search(r"--run-config\s+('([^']*)'|\"((?:[^\"\\]|\\.)*)\")", command)
    if m:
        arg = m.group(2) if m.group(2) is not None else m.group(3).replace('\\"', '"')
        rc.update(parse_config_args([arg]))
    return rc


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
