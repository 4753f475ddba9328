"""The run configuration: one frozen, validated object per run.

A configuration is a TOML file (or the embedded default, :data:`DEFAULT_CONFIG_PATH`)
plus ``--set key=value`` overrides with the dotted keys of DESIGN.md section 7
(``clients.num=20``, ``dp.mechanism=discrete_gaussian``). Unknown keys, wrong types and
impossible values raise :class:`secure_fl.errors.ConfigError` naming the field.

Validation is done by pydantic models with ``extra="forbid"`` and ``frozen=True``;
cross-field rules (e.g. ``clients.per_round <= clients.num``) live in model validators
so that they are checked whatever the source of the values.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from secure_fl.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "RunConfig",
    "config_hash",
    "load_config",
    "parse_overrides",
    "to_toml",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ClientsConfig(_Section):
    num: int = Field(10, ge=1, le=100_000, description="Number of clients (sites/devices).")
    per_round: int | None = Field(
        None,
        ge=1,
        description="Clients per aggregation (sync) or training concurrently (async); "
        "default: all clients.",
    )


class SyntheticConfig(_Section):
    num_samples: int = Field(6000, ge=20, description="Samples generated in total.")
    num_features: int = Field(20, ge=2, description="Features of the tabular variant.")
    num_classes: int = Field(2, ge=2, le=1000, description="Number of classes.")
    image: bool = Field(False, description="Generate 1x28x28 images instead of tabular rows.")
    imbalance: float = Field(
        1.0, gt=0, le=1.0, description="Share of the minority classes relative to class 0 (1 = balanced)."
    )


class DataConfig(_Section):
    dataset: Literal["digits", "breast_cancer", "synthetic", "csv"] = "digits"
    partition: Literal["iid", "dirichlet", "dominant_class", "one_class"] = "iid"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (partition = dirichlet).")
    dominant_fraction: float = Field(
        0.9, ge=0.0, le=1.0, description="Share of a client's data from its dominant class."
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out global test set share.")
    client_test_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of each client's data kept for personalized metrics."
    )
    paths: tuple[str, ...] = Field(
        (), description="dataset = csv: one CSV or NPZ file per site (clients.num = len(paths))."
    )
    label_column: str = Field("label", description="dataset = csv: name of the label column.")
    standardize: bool = Field(True, description="Standardize features with train statistics.")
    synthetic: SyntheticConfig = SyntheticConfig()


class ModelConfig(_Section):
    kind: Literal["logreg", "mlp", "cnn"] = "mlp"
    hidden: tuple[int, ...] = Field((64,), description="Hidden layer widths of the MLP.")
    batch_norm: bool = Field(
        False,
        description="Add batch-norm layers (MLP and CNN). They stay local to each client "
        "(FedBN, Li et al. 2021): never aggregated, used for personalization.",
    )

    @field_validator("hidden")
    @classmethod
    def _hidden_positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(h < 1 for h in value):
            raise ValueError("hidden layer widths must be >= 1")
        return value


class TrainConfig(_Section):
    local_epochs: int = Field(1, ge=1, le=1000)
    lr: float = Field(0.05, gt=0, le=100)
    batch_size: int = Field(32, ge=1)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class ServerConfig(_Section):
    optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
    lr: float = Field(1.0, gt=0, le=100, description="Server learning rate on the mean update.")
    momentum: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, gt=0, lt=1, description="Adam second-moment decay.")
    tau: float = Field(1e-3, gt=0, description="Adam adaptivity (Reddi et al. 2021).")


class DPConfig(_Section):
    mechanism: Literal["none", "gaussian", "discrete_gaussian", "skellam"] = "none"
    noise_multiplier: float = Field(0.0, ge=0, description="Noise std / clip (client level).")
    target_epsilon: float | None = Field(
        None, gt=0, description="Calibrate noise_multiplier to reach this epsilon over `rounds`."
    )
    delta: float = Field(1e-5, gt=0, lt=1)
    clip: float = Field(1.0, gt=0, description="L2 bound on each client's update.")
    adaptive_clip: bool = Field(
        False,
        description="Adapt dp.clip to a quantile of update norms (Andrew et al. 2021): the "
        "noised count of unclipped updates travels as one extra coordinate of the same "
        "securely aggregated, noised vector (secure_fl/clip_control.py).",
    )
    clip_target_quantile: float = Field(
        0.5, gt=0, lt=1, description="Adaptive clipping: target fraction of unclipped updates."
    )
    clip_learning_rate: float = Field(
        0.2, gt=0, description="Adaptive clipping: geometric step eta_C of the clip bound."
    )
    clip_count_stddev: float | None = Field(
        None, gt=0, description="Adaptive clipping: noise sigma_b on the clipped count; "
        "default: clients per aggregation / 20.",
    )
    record_level: bool = Field(
        False, description="Also train each client with Opacus DP-SGD (example-level DP)."
    )
    record_noise_multiplier: float = Field(
        1.0, ge=0, description="DP-SGD noise std / record_clip (record level)."
    )
    record_clip: float = Field(1.0, gt=0, description="DP-SGD per-example gradient clip.")
    provisioned_survivors: int | None = Field(
        None,
        ge=1,
        description="Noise shares are sized so this many survivors carry the full noise; "
        "default: the expected survivors, ceil((1 - simulation.dropout) * cohort).",
    )
    budget_cap: float | None = Field(
        None, gt=0, description="Epsilon cap of every site; a site refuses aggregations past it."
    )
    site_caps: dict[int, float] = Field(
        default_factory=dict,
        description="Per-site epsilon caps overriding budget_cap, e.g. {3 = 2.0} for client 3.",
    )


class SecAggConfig(_Section):
    bits: int = Field(32, ge=2, le=62, description="Field Z_2^b of the masked sum.")
    threshold: int | None = Field(
        None, ge=2, description="Shamir threshold t; default: a majority of each neighbourhood."
    )
    neighbors: int | None = Field(
        None, ge=1, description="SecAgg+ neighbourhood size; default chosen from n (~log n)."
    )


class CkksConfig(_Section):
    poly_modulus_degree: int = Field(4096, description="Ring dimension N (power of two).")

    @field_validator("poly_modulus_degree")
    @classmethod
    def _power_of_two(cls, n: int) -> int:
        if n < 1024 or n > 32768 or n & (n - 1):
            raise ValueError("poly_modulus_degree must be a power of two in [1024, 32768]")
        return n


class AggregationConfig(_Section):
    mode: Literal["sync", "async"] = "sync"
    buffer_size: int | None = Field(
        None,
        ge=1,
        description="Async: updates per buffer (K). Default: half of clients.per_round "
        "without DP (FedBuff: buffers well below the concurrency aggregate often); "
        "ceil(0.85 x clients.per_round) under DP, where the noise in the mean falls as 1/K "
        "(measured in benchmarks/async_defaults.py, see docs/concepts.md).",
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="Sync: round deadline (late clients count as dropped). Async: a buffer "
        "closes this long after its first update even if it holds fewer than K.",
    )
    weighting: Literal["samples", "uniform"] = Field(
        "samples", description="FedAvg weights: sample counts, or 1 per client (forced under DP)."
    )


class StalenessConfig(_Section):
    fn: Literal["constant", "polynomial", "hinge"] = "polynomial"
    a: float = Field(0.5, ge=0, description="Exponent (polynomial) or slope (hinge).")
    b: float = Field(4.0, ge=0, description="Hinge: staleness up to which the weight is 1.")
    max_staleness: int = Field(20, ge=0, description="Updates staler than this are rejected.")


class SparsityConfig(_Section):
    kind: Literal["none", "prune", "random_k", "memory_budget"] = "none"
    density: float = Field(1.0, gt=0, le=1, description="Fraction of parameters kept.")


class SimulationConfig(_Section):
    dropout: float = Field(0.0, ge=0, lt=1, description="Probability a client drops in a round.")
    stragglers: float = Field(0.0, ge=0, le=1, description="Fraction of slow devices.")
    straggler_slowdown: float = Field(10.0, ge=1, description="How much slower stragglers are.")
    reproducible_noise: bool = Field(
        False,
        description="Derive DP noise, rounding and mask randomness from `seed` so runs repeat "
        "bit for bit. Research only: the noise is then predictable; the audit flags it.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Processes that run simulated clients' local training in parallel "
        "(forked once per run; one torch thread each). Default: the usable CPU cores "
        "(`len(os.sched_getaffinity(0))`); 1 = sequential in this process. Results do not "
        "depend on it.",
    )


class ThreatConfig(_Section):
    max_colluders: int = Field(
        1,
        ge=0,
        description="c: clients assumed to collude with the server. SecAgg+ sizes its "
        "threshold and neighbourhoods so the server plus c clients of any neighbourhood "
        "learn nothing beyond the sum, and distributed DP provisions noise so that the "
        "honest shares alone (survivors minus c) reach the target epsilon.",
    )


class RunConfig(_Section):
    """The whole run configuration. Every field is documented in docs/configuration.md."""

    seed: int = Field(0, ge=0, lt=2**32)
    rounds: int = Field(30, ge=1, le=100_000, description="Aggregations (server model versions).")
    protocol: Literal["plain", "secagg", "ckks"] = "plain"
    clients: ClientsConfig = ClientsConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    server: ServerConfig = ServerConfig()
    dp: DPConfig = DPConfig()
    secagg: SecAggConfig = SecAggConfig()
    ckks: CkksConfig = CkksConfig()
    aggregation: AggregationConfig = AggregationConfig()
    staleness: StalenessConfig = StalenessConfig()
    sparsity: SparsityConfig = SparsityConfig()
    simulation: SimulationConfig = SimulationConfig()
    threat: ThreatConfig = ThreatConfig()

    @model_validator(mode="after")
    def _cross_field(self) -> RunConfig:
        if self.clients.per_round is not None and self.clients.per_round > self.clients.num:
            raise ValueError(
                f"clients.per_round ({self.clients.per_round}) exceeds clients.num ({self.clients.num})"
            )
        if self.data.dataset == "csv" and len(self.data.paths) != self.clients.num:
            raise ValueError(
                f"data.paths lists {len(self.data.paths)} site files but clients.num is "
                f"{self.clients.num}; give one CSV/NPZ file per client"
            )
        if self.data.dataset != "csv" and self.data.paths:
            raise ValueError("data.paths is only used with data.dataset = 'csv'")
        if (
            self.aggregation.mode == "async"
            and self.aggregation.buffer_size is not None
            and self.aggregation.buffer_size > self.cohort_size
        ):
            raise ValueError(
                f"aggregation.buffer_size ({self.aggregation.buffer_size}) exceeds the number of "
                f"clients training concurrently (clients.per_round = {self.cohort_size})"
            )
        bad_sites = [c for c, cap in self.dp.site_caps.items() if not 0 <= c < self.clients.num or cap <= 0]
        if bad_sites:
            raise ValueError(
                f"dp.site_caps: entries for clients {bad_sites} are invalid (client ids are "
                f"0..{self.clients.num - 1}, caps must be > 0)"
            )
        if self.data.partition == "dominant_class" and self.data.dominant_fraction <= 0:
            raise ValueError("data.dominant_fraction must be > 0 for the dominant_class partition")
        return self

    @property
    def cohort_size(self) -> int:
        """Clients per aggregation (sync) or training concurrently (async)."""
        return self.clients.per_round or self.clients.num

    @property
    def buffer_size(self) -> int:
        """Async: updates per buffer (K)."""
        if self.aggregation.buffer_size is not None:
            return self.aggregation.buffer_size
        if self.dp.mechanism != "none":
            return max(1, math.ceil(0.85 * self.cohort_size))
        return max(1, self.cohort_size // 2)


DEFAULT_CONFIG_PATH = Path(str(resources.files("secure_fl") / "default.toml"))


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"malformed key {key!r}", field=key)
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{part!r} is a value, not a section", field=key)
        node = child
    node[parts[-1]] = value


def _parse_value(text: str) -> Any:
    """Parse an override value as a TOML value, falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["dp.clip=0.5", "protocol=secagg"]`` into a nested dict."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must have the form key=value")
        _set_dotted(tree, key.strip(), _parse_value(raw.strip()))
    return tree


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_validation_error(err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "literal_error":
        msg = f"invalid value {first.get('input')!r}: {first['msg']}"
    elif "input" in first and first["type"] != "value_error":
        msg = f"{msg} (got {first['input']!r})"
    more = len(err.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(msg, field=field)


def build_config(tree: Mapping[str, Any]) -> RunConfig:
    """Validate a nested mapping into a :class:`RunConfig`."""
    try:
        return RunConfig.model_validate(dict(tree))
    except ValidationError as err:
        raise _format_validation_error(err) from None


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> RunConfig:
    """Load a TOML configuration (default: the embedded one) and apply overrides.

    ``overrides`` is a list of ``"dotted.key=value"`` strings (values parsed as TOML,
    bare words as strings) or an already nested mapping.
    """
    source = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {source}") from None
    except OSError as err:
        raise ConfigError(f"cannot read configuration file {source}: {err.strerror}") from None
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source} is not valid TOML: {err}") from None
    extra = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    config = build_config(_merge(tree, extra))
    if config.data.dataset == "csv" and path is not None:
        # Site files are resolved relative to the configuration file that names them.
        base = Path(path).resolve().parent
        paths = tuple(str(p if Path(p).is_absolute() else (base / p)) for p in config.data.paths)
        config = config.model_copy(update={"data": config.data.model_copy(update={"paths": paths})})
    return config


def to_toml(config: RunConfig) -> str:
    """The fully resolved configuration as TOML (``None`` values are omitted)."""
    data = config.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(data)


def config_hash(config: RunConfig) -> str:
    """SHA-256 of the canonical resolved configuration (recorded in the ledger)."""
    return hashlib.sha256(to_toml(config).encode()).hexdigest()
