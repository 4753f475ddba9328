"""The run configuration: one frozen, validated object per run.

A configuration is a TOML file (or the embedded default, :data:`DEFAULT_CONFIG_PATH`)
plus ``--set key=value`` overrides with the dotted keys of docs/configuration.md
(``clients.num=20``, ``dp.mechanism=discrete_gaussian``). Unknown keys, wrong types and
impossible values raise :class:`secure_fl.errors.ConfigError` naming the field.

Validation is done by pydantic models with ``extra="forbid"`` and ``frozen=True``;
cross-field rules (e.g. ``clients.per_round <= clients.num``, a target epsilon needs a
mechanism, record-level DP-SGD excludes batch norm) live in model validators so that
they are checked whatever the source of the values.

Private by default: a user's TOML file (or ``--set`` overrides) that does not choose a
protocol or a DP mechanism inherits the embedded default's protection, secure
aggregation with distributed DP calibrated to the default target epsilon
(:func:`inherit_protection`). Each protection is turned off by its own key, explicitly:
``protocol = "plain"`` and ``dp.mechanism = "none"``. ``RunConfig()`` built directly in
Python is the bare schema (plaintext, no DP) for tests and research code; derive
configurations with :meth:`RunConfig.with_overrides`, which validates (and so does
``model_copy(update=...)`` here, unlike pydantic's).
"""

from __future__ import annotations

import hashlib
import logging
import math
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from secure_fl.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "RunConfig",
    "build_config",
    "config_hash",
    "inherit_protection",
    "load_config",
    "parse_overrides",
    "to_toml",
]

_log = logging.getLogger(__name__)


class _FieldConflict(ValueError):
    """A cross-field rule failed; ``fields`` are the dotted names involved (the first
    one is reported as :attr:`ConfigError.field`)."""

    def __init__(self, message: str, *fields: str) -> None:
        super().__init__(message)
        self.fields = fields


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied, validated like any other configuration
        (pydantic's own ``model_copy`` skips validation). A mapping given for a section
        updates that section key by key (``update={"dp": {"clip": 0.5}}``). Raises
        :class:`ConfigError`; :meth:`RunConfig.with_overrides` is the friendlier form."""
        if not update:
            return super().model_copy(deep=deep)
        fields: dict[str, Any] = dict(self)
        for key, value in update.items():
            current = fields.get(key)
            if isinstance(value, Mapping) and isinstance(current, BaseModel):
                fields[key] = _merge(current.model_dump(), value)
            else:
                fields[key] = value
        try:
            return self.model_validate(fields)
        except ValidationError as err:
            raise _format_validation_error(err) from None


class ClientsConfig(_Section):
    num: int = Field(10, ge=1, le=100_000, description="Number of clients (sites/devices).")
    per_round: int | None = Field(
        None,
        ge=1,
        description="Clients per aggregation (sync) or training concurrently (async); "
        "default: all clients.",
    )
    sampling: Literal["fixed", "poisson"] = Field(
        "fixed",
        description="Sync cohorts: 'fixed' draws exactly per_round clients (no amplification "
        "by sampling is claimed); 'poisson' includes each client independently with "
        "probability per_round / num from the CSPRNG, which the released-model epsilon's "
        "amplification analysis needs (secure_fl/sampling.py).",
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
    allow_unnoised_site_metrics: bool = Field(
        False,
        description="Under DP, let data-dependent values without noise reach the server: the "
        "memory-budget probe's validation accuracies (sparsity.kind = memory_budget) and "
        "personalized_accuracy in metrics.jsonl. Off: the probe is skipped (the subset "
        "training the most parameters wins) and personalized_accuracy is null. On: both are "
        "listed as hazards in summary.json and the audit (they are not covered by epsilon). "
        "A deployed site answers the probe only if its own site.toml also allows it "
        "(allow_unnoised_metrics = true).",
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
        "ceil(2/3 x clients.per_round) under DP, where the noise in the mean falls as 1/K, "
        "so a buffer never waits for the slowest third of the devices (measured in "
        "benchmarks/async_defaults.py; docs/concepts.md).",
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
    max_staleness: int | None = Field(
        None,
        ge=0,
        description="Updates staler than this are rejected when they report, and the client is "
        "sent the current model. Default: max(1, floor(concurrency / buffer size)), about "
        "the staleness of an update from a device of average speed (FedBuff).",
    )


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


#: Rounds' worth of client updates in a run when ``rounds`` is not set (see
#: :attr:`RunConfig.aggregations`).
DEFAULT_ROUNDS = 30


class RunConfig(_Section):
    """The whole run configuration. Every field is documented in docs/configuration.md."""

    seed: int = Field(0, ge=0, lt=2**32)
    rounds: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Aggregations (server model versions). Default: 30 rounds' worth of client "
        "updates: 30 aggregations in sync mode; in async mode ceil(30 x concurrency / buffer size) "
        "buffers, so both modes aggregate the same number of updates (FedBuff's comparison).",
    )
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
        if self.clients.sampling == "poisson" and self.aggregation.mode == "async":
            raise ValueError(
                "clients.sampling = 'poisson' applies to synchronous rounds; "
                "aggregation.mode = 'async' forms buffers from the first clients to finish"
            )
        bad_sites = [c for c, cap in self.dp.site_caps.items() if not 0 <= c < self.clients.num or cap <= 0]
        if bad_sites:
            raise ValueError(
                f"dp.site_caps: entries for clients {bad_sites} are invalid (client ids are "
                f"0..{self.clients.num - 1}, caps must be > 0)"
            )
        if self.data.partition == "dominant_class" and self.data.dominant_fraction <= 0:
            raise ValueError("data.dominant_fraction must be > 0 for the dominant_class partition")
        self._check_protection()
        self._check_switches()
        if self.protocol == "secagg":
            self._check_secagg_sizing()
        return self

    def _check_protection(self) -> None:
        """Contradictory or incompatible privacy settings, named by both fields."""
        dp = self.dp
        if dp.mechanism == "none":
            if dp.target_epsilon is not None:
                raise _FieldConflict(
                    f"dp.target_epsilon = {dp.target_epsilon:g} has no effect with dp.mechanism = "
                    "'none' (no noise, epsilon infinite): choose a mechanism or remove "
                    "dp.target_epsilon",
                    "dp.target_epsilon",
                    "dp.mechanism",
                )
            if dp.noise_multiplier > 0:
                raise _FieldConflict(
                    f"dp.noise_multiplier = {dp.noise_multiplier:g} has no effect with "
                    "dp.mechanism = 'none': choose a mechanism or remove dp.noise_multiplier",
                    "dp.noise_multiplier",
                    "dp.mechanism",
                )
            if dp.budget_cap is not None or dp.site_caps:
                key = "dp.budget_cap" if dp.budget_cap is not None else "dp.site_caps"
                raise _FieldConflict(
                    f"{key} caps the client-level epsilon, which is infinite with "
                    "dp.mechanism = 'none': choose a mechanism or remove the cap",
                    key,
                    "dp.mechanism",
                )
        elif dp.target_epsilon is None and dp.noise_multiplier == 0:
            raise _FieldConflict(
                f"dp.mechanism = {dp.mechanism!r} with dp.noise_multiplier = 0 and no "
                "dp.target_epsilon adds no noise: set dp.target_epsilon (or a positive "
                "dp.noise_multiplier), or dp.mechanism = 'none'",
                "dp.mechanism",
                "dp.noise_multiplier",
            )
        allowed = _MECHANISMS_OF[self.protocol]
        if dp.mechanism not in allowed:
            why = {
                "secagg": "SecAgg+ sums integers in Z_2^b, so the noise must be an exact "
                "integer mechanism",
                "ckks": "CKKS sums real numbers under encryption; integer noise belongs to secagg",
                "plain": "the distributed integer mechanisms need secure aggregation",
            }[self.protocol]
            raise _FieldConflict(
                f"dp.mechanism = {dp.mechanism!r} does not work with protocol = "
                f"{self.protocol!r} ({why}); with {self.protocol!r} use "
                + " or ".join(repr(m) for m in allowed),
                "dp.mechanism",
                "protocol",
            )
        if dp.record_level and self.model.batch_norm:
            raise _FieldConflict(
                "model.batch_norm = true cannot be combined with dp.record_level = true: "
                "DP-SGD needs per-example gradients and batch norm mixes the examples of a "
                "batch (Opacus refuses BatchNorm layers); turn one of them off",
                "model.batch_norm",
                "dp.record_level",
            )

    def _check_switches(self) -> None:
        """Settings changed from their default while the switch that uses them is off."""
        dp, defaults = self.dp, DPConfig.model_fields
        groups = (
            ("record_level", ("record_noise_multiplier", "record_clip")),
            ("adaptive_clip", ("clip_target_quantile", "clip_learning_rate", "clip_count_stddev")),
        )
        for switch, keys in groups:
            if getattr(dp, switch):
                continue
            for key in keys:
                if getattr(dp, key) != defaults[key].default:
                    raise _FieldConflict(
                        f"dp.{key} = {getattr(dp, key)!r} has no effect while dp.{switch} is "
                        f"false: set dp.{switch} = true or remove dp.{key}",
                        f"dp.{key}",
                        f"dp.{switch}",
                    )

    def _check_secagg_sizing(self) -> None:
        """(secagg.threshold, secagg.neighbors, threat.max_colluders, cohort) must be admissible.

        The same function sizes every round (:func:`crypto.secagg.parameters.secagg_parameters`);
        an impossible combination is a :class:`ConfigError` naming the field to change.
        """
        from crypto.errors import LocalProtocolError
        from crypto.secagg.parameters import secagg_parameters

        n = self.buffer_size if self.aggregation.mode == "async" else self.cohort_size
        if n < 2:
            return  # rounds of one client are refused per round (nothing to aggregate securely)
        c = self.threat.max_colluders
        try:
            secagg_parameters(n, max_colluders=c, threshold=self.secagg.threshold, neighbors=self.secagg.neighbors)
        except LocalProtocolError as err:
            text = str(err)
            if self.secagg.threshold is not None and "threshold" in text:
                field = "secagg.threshold"
            elif self.secagg.neighbors is not None and "holders" in text:
                field = "secagg.neighbors"
            else:
                field = "threat.max_colluders"
            others = [f for f in ("secagg.threshold", "secagg.neighbors", "threat.max_colluders") if f != field]
            raise _FieldConflict(
                f"SecAgg+ with {n} clients per aggregation and max_colluders = {c}: {text}", field, *others
            ) from None

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
            return max(1, math.ceil(2 * self.cohort_size / 3))
        return max(1, self.cohort_size // 2)

    @property
    def aggregations(self) -> int:
        """Aggregations (server model versions) in this run: ``rounds``, or its default.

        The default is ``DEFAULT_ROUNDS`` rounds' worth of client updates: that many
        aggregations of the cohort in sync mode; in async mode, where each aggregation
        takes K = :attr:`buffer_size` of the C concurrent clients' updates,
        ``ceil(DEFAULT_ROUNDS * C / K)`` buffers, so both modes train on the same number
        of updates (Nguyen et al., FedBuff, AISTATS 2022, compare the modes this way).
        An explicit ``rounds`` is the number of aggregations in either mode.
        """
        if self.rounds is not None:
            return self.rounds
        if self.aggregation.mode == "async":
            concurrency = min(self.cohort_size, self.clients.num)
            return math.ceil(DEFAULT_ROUNDS * concurrency / self.buffer_size)
        return DEFAULT_ROUNDS

    @property
    def max_staleness(self) -> int:
        """Async: the staleness bound (``staleness.max_staleness`` or its default).

        With C clients training concurrently and a buffer of K, the server aggregates
        once per K arrivals, so an update from a device of average speed is about C / K
        versions old when it lands (Nguyen et al., FedBuff, AISTATS 2022). The default
        ``max(1, floor(C / K))`` admits devices about as fast as average or faster and
        turns away those much slower, whose updates would otherwise hold up every
        secure-aggregation exchange they join (each buffer is one exchange, which lasts
        until its slowest member has uploaded); a turned-away client trains again on
        the current model.
        """
        if self.staleness.max_staleness is not None:
            return self.staleness.max_staleness
        return max(1, min(self.cohort_size, self.clients.num) // self.buffer_size)

    def with_overrides(
        self, overrides: Sequence[str] | Mapping[str, Any] = (), /, **fields: Any
    ) -> RunConfig:
        """A new, validated configuration: this one with ``overrides`` applied.

        ``overrides`` are ``"dotted.key=value"`` strings (as with ``--set``) or a nested
        mapping; keyword arguments are top-level keys or whole sections given as
        mappings (``dp={"clip": 0.5}``). Sections merge key by key::

            cfg = secure_fl.load_config().with_overrides(["rounds=5", "dp.clip=0.5"])
            cfg = cfg.with_overrides(clients={"num": 20}, seed=3)

        Raises :class:`ConfigError` naming the field, like :func:`load_config`. No
        protection is inherited here: ``self`` already says what it protects.
        """
        extra = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
        tree = _apply(self.model_dump(mode="python"), extra)
        return build_config(_apply(tree, fields))


DEFAULT_CONFIG_PATH = Path(str(resources.files("secure_fl") / "default.toml"))

#: The DP mechanisms each protocol can carry (noise must survive the aggregation).
_MECHANISMS_OF: dict[str, tuple[str, ...]] = {
    "plain": ("none", "gaussian"),
    "secagg": ("none", "discrete_gaussian", "skellam"),
    "ckks": ("none", "gaussian"),
}
#: The noise a protocol inherits when the user's file names no dp.mechanism: each client
#: adds its share (distributed DP); under ``plain`` the server adds it (central DP).
_INHERITED_MECHANISM = {"secagg": "discrete_gaussian", "ckks": "gaussian", "plain": "gaussian"}


def _embedded_default_tree() -> dict[str, Any]:
    return tomllib.loads(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))


def inherit_protection(tree: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Fill in the protection a user's configuration leaves unsaid, from the embedded
    default; return the completed tree and the inherited ``key = value`` settings.

    * no ``protocol``: the embedded default's (``secagg``, SecAgg+);
    * no ``dp.mechanism``: the protocol's distributed mechanism (``discrete_gaussian``
      under ``secagg``, ``gaussian`` under ``ckks``; central ``gaussian`` under an
      explicit ``plain``);
    * a mechanism but neither ``dp.target_epsilon`` nor ``dp.noise_multiplier``: the
      embedded default's target epsilon (and its ``dp.delta`` when absent).

    Turning protection off is explicit: ``protocol = "plain"``, ``dp.mechanism = "none"``.
    """
    default = _embedded_default_tree()
    out = dict(tree)
    inherited: list[str] = []
    if "protocol" not in out:
        out["protocol"] = default["protocol"]
        inherited.append(f"protocol = {out['protocol']!r}")
    raw_dp = out.get("dp", {})
    dp = dict(raw_dp) if isinstance(raw_dp, Mapping) else raw_dp
    if isinstance(dp, dict) and isinstance(out["protocol"], str):
        if "mechanism" not in dp and out["protocol"] in _INHERITED_MECHANISM:
            dp["mechanism"] = _INHERITED_MECHANISM[out["protocol"]]
            inherited.append(f"dp.mechanism = {dp['mechanism']!r}")
        if dp.get("mechanism") != "none" and not {"target_epsilon", "noise_multiplier"} & set(dp):
            dp["target_epsilon"] = default["dp"]["target_epsilon"]
            inherited.append(f"dp.target_epsilon = {dp['target_epsilon']:g}")
            if "delta" not in dp:
                dp["delta"] = default["dp"]["delta"]
                inherited.append(f"dp.delta = {dp['delta']:g}")
        out["dp"] = dp
    return out, inherited


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


def _apply(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with the later layer ``extra`` merged in. A later ``dp.mechanism =
    "none"`` supersedes the noise settings of earlier layers (a file's target epsilon
    would otherwise contradict it), unless the same layer sets them too; a later
    ``protocol`` that cannot carry an earlier layer's mechanism takes its own distributed
    mechanism at the same target (``--set protocol=ckks`` on the default)."""
    extra_dp = extra.get("dp")
    base_dp = base.get("dp")
    protocol = extra.get("protocol")
    if (
        isinstance(protocol, str)
        and protocol in _MECHANISMS_OF
        and not (isinstance(extra_dp, Mapping) and "mechanism" in extra_dp)
        and isinstance(base_dp, Mapping)
        and base_dp.get("mechanism", "none") not in _MECHANISMS_OF[protocol]
    ):
        base_dp = {**base_dp, "mechanism": _INHERITED_MECHANISM[protocol]}
        base = {**base, "dp": base_dp}
    if (
        isinstance(extra_dp, Mapping)
        and extra_dp.get("mechanism") == "none"
        and isinstance(base_dp, Mapping)
    ):
        base = {**base, "dp": {k: v for k, v in base_dp.items() if k not in _NOISE_KEYS}}
    return _merge(base, extra)


#: Settings that only mean something with a DP mechanism; see :func:`_apply`.
_NOISE_KEYS = frozenset({"target_epsilon", "noise_multiplier"})


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
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, _FieldConflict) and cause.fields:
        prefix = ".".join(str(p) for p in first["loc"])
        field = ".".join(p for p in (prefix, cause.fields[0]) if p)
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
    bare words as strings) or an already nested mapping. Protection the file and the
    overrides leave unsaid is inherited from the embedded default
    (:func:`inherit_protection`); with ``data.dataset = "csv"`` and no ``clients.num``,
    there is one client per site file.
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
    merged, inherited = inherit_protection(_apply(tree, extra))
    clients = merged.get("clients", {})
    data = merged.get("data", {})
    if (
        isinstance(data, Mapping)
        and data.get("dataset") == "csv"
        and isinstance(data.get("paths"), list | tuple)
        and isinstance(clients, Mapping)
        and "num" not in clients
    ):
        # One client per site file unless the user says otherwise.
        merged["clients"] = {**clients, "num": len(data["paths"])}
    config = build_config(merged)
    if inherited:
        _log.info(
            "%s does not choose its protection; inherited from the embedded default: %s "
            "(turn off with protocol = \"plain\" / dp.mechanism = \"none\")",
            source.name,
            ", ".join(inherited),
        )
    if config.data.dataset == "csv" and path is not None:
        # Site files are resolved relative to the configuration file that names them.
        base = Path(path).resolve().parent
        paths = tuple(str(p if Path(p).is_absolute() else (base / p)) for p in config.data.paths)
        config = config.model_copy(update={"data": config.data.model_copy(update={"paths": paths})})
    return config


def to_toml(config: RunConfig) -> str:
    """The fully resolved configuration as TOML (``None`` values are omitted; ``rounds``
    is written as :attr:`RunConfig.aggregations`)."""
    resolved = config.model_copy(update={"rounds": config.aggregations})
    data = resolved.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(data)


def config_hash(config: RunConfig) -> str:
    """SHA-256 of the canonical resolved configuration (recorded in the ledger)."""
    return hashlib.sha256(to_toml(config).encode()).hexdigest()
