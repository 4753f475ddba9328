"""The Flower ServerApp's settings, read from Flower's run configuration.

Run configuration keys (``[tool.flwr.app.config]`` or ``flwr run --run-config``):
``config`` (secure-fl TOML; a relative path resolves against the app directory when the
app gives one, else the SuperLink's working directory), ``overrides`` (space-separated
``key=value``), ``out-dir``, ``min-nodes`` (parties to wait for before hello, the key
holder included), ``num-classes`` (the model's output size: nodes reporting more are
excluded at hello), ``connect-timeout``, ``train-timeout`` (set-up: local training),
``stage-timeout`` (every other message), ``poll-interval``, ``feature-shape`` (the
model's input shape, e.g. ``"30"`` or ``"1,8,8"``; empty: the shape most parties report),
``drop-plan`` (rehearsals and tests only: JSON ``{aggregation: {site name: stage}}``, the
parties the transport silences from that stage on, as
:class:`~secure_fl.transport.dropouts.DropPlan`), ``resume`` (``true``: continue the run
in ``out-dir`` after the server died, from its last completed aggregation, exactly as
``secure-fl run --resume DIR``), ``state-dir`` (the server's private state: ledger
signing key; default ``<out-dir>.server``).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_fl.errors import ConfigError

__all__ = ["DeploymentSettings"]


@dataclass(frozen=True)
class DeploymentSettings:
    """The ServerApp's settings (from Flower's run configuration)."""

    config_path: str | None = None
    base_dir: Path | None = None
    overrides: tuple[str, ...] = ()
    out_dir: Path | None = None
    min_nodes: int = 2
    connect_timeout: float = 120.0
    train_timeout: float = 300.0
    stage_timeout: float = 60.0
    poll_interval: float = 0.25
    num_classes: int = 2
    feature_shape: tuple[int, ...] | None = None
    drop_plan: dict[int, dict[str, str]] | None = None
    resume: bool = False
    state_dir: Path | None = None

    @classmethod
    def from_run_config(cls, rc: Mapping[str, Any], *, base_dir: Path | None = None) -> DeploymentSettings:
        """Read Flower's run configuration; a relative ``config`` path is taken
        against ``base_dir`` (the Flower app's directory) when given."""

        def num(key: str, default: float) -> float:
            value = rc.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"must be a positive number, got {value!r}", field=key)
            return float(value)

        cfg = rc.get("config", "")
        out = rc.get("out-dir", "")
        overrides = rc.get("overrides", "")
        if not all(isinstance(v, str) for v in (cfg, out, overrides)):
            raise ConfigError("config, out-dir and overrides must be strings", field="config")
        return cls(
            config_path=str(cfg) or None,
            base_dir=base_dir,
            overrides=tuple(shlex.split(str(overrides))),
            out_dir=Path(str(out)).expanduser() if out else None,
            min_nodes=max(2, int(num("min-nodes", 2))),
            connect_timeout=num("connect-timeout", 120.0),
            train_timeout=num("train-timeout", 300.0),
            stage_timeout=num("stage-timeout", 60.0),
            poll_interval=num("poll-interval", 0.25),
            num_classes=_num_classes(rc.get("num-classes", 2)),
            feature_shape=_shape(rc.get("feature-shape", "")),
            drop_plan=_drop_plan(rc.get("drop-plan", "")),
            resume=_flag(rc.get("resume", False), "resume"),
            state_dir=_path(rc.get("state-dir", ""), "state-dir"),
        )

    def config_file(self) -> Path | None:
        """The secure-fl configuration file, resolved against ``base_dir``."""
        if not self.config_path:
            return None
        path = Path(self.config_path).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"must be true or false, got {value!r}", field=key)


def _path(value: Any, key: str) -> Path | None:
    if not isinstance(value, str):
        raise ConfigError(f"must be a path string, got {value!r}", field=key)
    return Path(value).expanduser() if value else None


def _drop_plan(value: Any) -> dict[int, dict[str, str]] | None:
    """``{"<aggregation>": {"<site name>": "<stage>"}}`` as JSON (tests and rehearsals)."""
    if value in ("", None):
        return None
    import json

    try:
        tree = json.loads(str(value))
        plan = {int(v): {str(n): str(st) for n, st in members.items()} for v, members in tree.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(f"must be JSON {{aggregation: {{site: stage}}}}, got {value!r} ({exc})",
                          field="drop-plan") from None
    return plan


def _shape(value: Any) -> tuple[int, ...] | None:
    if value in ("", None):
        return None
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else None
    try:
        shape = tuple(int(v) for v in text.split(",")) if text is not None else ()
    except ValueError:
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise ConfigError(f"must be positive integers separated by commas (e.g. \"30\" or \"1,8,8\"), got {value!r}",
                          field="feature-shape")
    return shape


def _num_classes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 100_000:
        raise ConfigError(f"must be an integer in [2, 100000], got {value!r}", field="num-classes")
    return value
