"""Generate ``docs/configuration.md`` from the :class:`~secure_fl.config.RunConfig` schema.

The configuration reference is derived from the pydantic models, so it cannot drift
from the code: every dotted key (as used with ``--set``), its type, default, allowed
values, numeric constraints and description. The embedded default configuration of
``secure-fl run`` is included verbatim.

    python -m secure_fl.docs_gen            # (re)write docs/configuration.md
    python -m secure_fl.docs_gen --check    # exit 1 if docs/configuration.md is stale

Descriptions come from each field's ``Field(description=...)``. A few fields of the
schema have none yet; :data:`FALLBACK_DESCRIPTIONS` supplies theirs (the test suite
fails when a new field has neither, or when a fallback names a field that no longer
exists). Checks written as custom validators cannot be read from the schema; their
wording lives in :data:`VALIDATOR_NOTES` and :data:`CROSS_FIELD_RULES`, and the tests
check that every field validator is covered.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from secure_fl.config import DEFAULT_CONFIG_PATH, RunConfig

__all__ = [
    "CROSS_FIELD_RULES",
    "FALLBACK_DESCRIPTIONS",
    "VALIDATOR_NOTES",
    "FieldDoc",
    "default_output_path",
    "iter_fields",
    "main",
    "render",
]

#: Descriptions of fields whose schema entry has none (keep short; prefer adding a
#: ``description=`` in secure_fl/config.py, then delete the entry here).
FALLBACK_DESCRIPTIONS: dict[str, str] = {
    "seed": "Seed of the simulation (data partition, device profiles, cohorts, model "
    "initialisation). Never the source of DP noise or masks unless "
    "simulation.reproducible_noise is set.",
    "protocol": "How updates are combined: `plain` (server sees each update; baseline), "
    "`secagg` (SecAgg+ pairwise masking in Z_2^b), `ckks` (CKKS encryption, separate key holder).",
    "data.dataset": "Data source: scikit-learn's bundled `digits` or `breast_cancer`, the "
    "`synthetic` generator (see data.synthetic.*), or `csv` site files (data.paths).",
    "data.partition": "How training data is split across clients (McMahan et al. 2017; "
    "Hsu et al. 2019).",
    "model.kind": "Model: `logreg` (linear), `mlp` (model.hidden), `cnn` (image data).",
    "train.local_epochs": "Local epochs over the client's data per participation.",
    "train.lr": "Client SGD learning rate.",
    "train.batch_size": "Client mini-batch size.",
    "train.momentum": "Client SGD momentum.",
    "train.weight_decay": "Client L2 weight decay.",
    "server.optimizer": "Server optimizer applied to the aggregated mean update "
    "(FedAvg = `sgd` with server.lr 1; FedAvgM; FedAdam, Reddi et al. 2021).",
    "server.momentum": "Server momentum (`momentum`) or Adam first-moment decay (`adam`).",
    "dp.mechanism": "Client-level DP mechanism: `gaussian` (continuous; plain and ckks), "
    "`discrete_gaussian` / `skellam` (exact integer noise shares; secagg).",
    "dp.delta": "The delta of the (epsilon, delta) guarantee; choose well below 1 / number "
    "of clients (docs/choosing-epsilon.md).",
    "aggregation.mode": "`sync` rounds, or `async` buffered aggregation (FedBuff).",
    "staleness.fn": "Staleness weight s(tau): `constant` 1, `polynomial` 1/(1+tau)^a, "
    "`hinge` 1 up to b then 1/(a(tau-b)+1).",
    "sparsity.kind": "Public support of each update: `none`, `prune` (global magnitude "
    "pruning, server-held mask), `random_k` (shared-seed random subset per round), "
    "`memory_budget` (the tensor subset the tightest device can train within `density` "
    "of full-training memory, chosen by an accuracy-aware probe).",
}

#: Wording of checks that live in ``@field_validator`` functions, by dotted key.
VALIDATOR_NOTES: dict[str, str] = {
    "model.hidden": "every width >= 1",
    "ckks.poly_modulus_degree": "a power of two in [1024, 32768]",
}

#: The rules of ``RunConfig``'s model validator (checked whatever the source of values).
CROSS_FIELD_RULES: tuple[str, ...] = (
    "`clients.per_round` <= `clients.num`.",
    "`data.dataset = \"csv\"` needs exactly `clients.num` entries in `data.paths`; other "
    "data sets take no `data.paths`. Relative paths are resolved against the TOML file.",
    "`aggregation.mode = \"async\"`: `aggregation.buffer_size` <= the number of clients "
    "training concurrently (`clients.per_round`).",
    "`dp.site_caps` keys are client ids `0 .. clients.num - 1` and caps are > 0.",
    "`data.partition = \"dominant_class\"` needs `data.dominant_fraction` > 0.",
    "`secagg` takes only `dp.mechanism` `none`, `discrete_gaussian` or `skellam`; `plain` "
    "and `ckks` take `none` or `gaussian`. An override of `protocol` alone that cannot "
    "carry the file's mechanism takes its own (`discrete_gaussian` under `secagg`, "
    "`gaussian` otherwise).",
    "`dp.mechanism = \"none\"` takes no `dp.target_epsilon`, no `dp.noise_multiplier` > 0 "
    "and no `dp.budget_cap` / `dp.site_caps` (an override `dp.mechanism=none` drops the "
    "file's noise settings); any other mechanism needs `dp.target_epsilon` or a "
    "`dp.noise_multiplier` > 0. `dp.target_epsilon` recalibrates `dp.noise_multiplier` "
    "when the run starts.",
    "`dp.record_noise_multiplier` and `dp.record_clip` need `dp.record_level = true`; the "
    "`dp.clip_*` settings of adaptive clipping need `dp.adaptive_clip = true`.",
    "`model.batch_norm = true` excludes `dp.record_level = true` (DP-SGD needs "
    "per-example gradients; batch norm mixes the examples of a batch).",
)

_HEADER = """\
<!-- Generated by `python -m secure_fl.docs_gen` from secure_fl/config.py. Do not edit:
     edit the schema (Field descriptions) and regenerate. The test suite fails when this
     file is stale. -->
# Configuration reference

A run is configured by one TOML file plus `--set key=value` overrides, using the dotted
keys below (`secure-fl run my.toml --set dp.clip=0.5 --set protocol=secagg`). Sections
of the TOML file are the first part of the key (`[dp]` then `clip = 0.5`). Override
values are read as TOML (`16`, `0.5`, `true`, `[64, 32]`, `"text"`); a bare word is a
string. Unknown keys, wrong types and out-of-range values are rejected before anything
runs, with an error naming the field (exit status 2).

**Default** is the value used when a key is absent from your file, with one exception:
**protection is inherited from the embedded default** (shown at the end). A file (or
`--set` overrides) that names no `protocol` gets `secagg`; no `dp.mechanism` gets the
protocol's distributed mechanism (`discrete_gaussian` under `secagg`, `gaussian` under
`ckks`, central `gaussian` under an explicit `plain`); a mechanism with neither
`dp.target_epsilon` nor `dp.noise_multiplier` gets the embedded target epsilon (and
delta). Turning protection off is explicit: `protocol = "plain"` and
`dp.mechanism = "none"`. A `dataset = "csv"` file without `clients.num` has one client
per site file. `RunConfig()` built in Python is the bare schema (the defaults in the
table: plaintext, no DP); start from `secure_fl.load_config()` instead and derive with
`config.with_overrides(["key=value", ...])`, which validates. `secure-fl run` without a
file uses the embedded default. `secure-fl config [FILE] [--set ...]` prints the fully
resolved configuration.
"""


@dataclass(frozen=True)
class FieldDoc:
    """One documented configuration key."""

    key: str
    type: str
    default: str
    allowed: str
    constraints: str
    description: str
    section: str


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


_SCALARS = {int: "integer", float: "float", bool: "boolean", str: "string"}


def _type_name(annotation: Any) -> str:
    inner, optional = _strip_optional(annotation)
    origin = typing.get_origin(inner)
    if origin is Literal:
        name = "string"
    elif inner in _SCALARS:
        name = _SCALARS[inner]
    elif origin is tuple:
        args = typing.get_args(inner)
        name = f"list of {_type_name(args[0])}s"
    elif origin is dict:
        k, v = typing.get_args(inner)
        name = f"table {_type_name(k)} -> {_type_name(v)}"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or unset" if optional else name


def _toml_literal(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(_toml_literal(v).strip("`") for v in value) + "]`"
    if isinstance(value, dict):
        if not value:
            return "`{}`"
        return "`{" + ", ".join(f"{k} = {_toml_literal(v).strip('`')}" for k, v in value.items()) + "}`"
    return f"`{value!r}`" if isinstance(value, float) else f"`{value}`"


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return _toml_literal(info.default_factory())  # type: ignore[call-arg]
    if info.default is PydanticUndefined:
        return "required"
    return _toml_literal(info.default)


_BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def _fmt_bound(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**16 and value & (value - 1) == 0:
        return f"2^{value.bit_length() - 1}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}".replace(",", " ")
    return str(value)


def _constraints(key: str, info: FieldInfo) -> str:
    parts: list[str] = []
    for meta in info.metadata:
        for cls, attr, sym in _BOUNDS:
            if isinstance(meta, cls):
                parts.append(f"{sym} {_fmt_bound(getattr(meta, attr))}")
    if key in VALIDATOR_NOTES:
        parts.append(VALIDATOR_NOTES[key])
    return ", ".join(parts)


def _allowed(annotation: Any) -> str:
    inner, _ = _strip_optional(annotation)
    if typing.get_origin(inner) is Literal:
        return ", ".join(f"`{v}`" for v in typing.get_args(inner))
    return ""


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def iter_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> Iterator[FieldDoc]:
    """Every leaf key of ``model`` (sections recursed), in schema order."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _section_model(info.annotation)
        if sub is not None:
            yield from iter_fields(sub, prefix=f"{key}.")
            continue
        yield FieldDoc(
            key=key,
            type=_type_name(info.annotation),
            default=_default(info),
            allowed=_allowed(info.annotation),
            constraints=_constraints(key, info),
            description=info.description or FALLBACK_DESCRIPTIONS.get(key, ""),
            section=prefix.rstrip(".") or "(top level)",
        )


def render() -> str:
    """The whole of docs/configuration.md."""
    fields = list(iter_fields())
    out = [_HEADER]
    out.append("## Keys\n")
    by_section: dict[str, list[FieldDoc]] = {}
    for f in fields:
        by_section.setdefault(f.section, []).append(f)
    for section, docs in by_section.items():
        heading = section if section == "(top level)" else f"`[{section}]`"
        out.append(f"### {heading}\n")
        out.append("| key | type | default | allowed values | constraints | description |")
        out.append("|---|---|---|---|---|---|")
        for f in docs:
            out.append(
                f"| `{f.key}` | {f.type} | {f.default} | {f.allowed or ''} | "
                f"{_escape(f.constraints)} | {_escape(f.description)} |"
            )
        out.append("")
    out.append("## Rules across fields\n")
    out.extend(f"- {rule}" for rule in CROSS_FIELD_RULES)
    out.append("")
    out.append("## The embedded default (`secure-fl run` without a file)\n")
    out.append("```toml")
    out.append(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8").rstrip("\n"))
    out.append("```")
    out.append("")
    return "\n".join(out)


def default_output_path() -> Path:
    """``docs/configuration.md`` of the checkout this package was imported from."""
    return Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the reference, or with ``--check`` exit 1 when the file on disk is stale."""
    p = argparse.ArgumentParser(prog="python -m secure_fl.docs_gen", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs from the schema")
    p.add_argument("--output", type=Path, default=None, help="default: docs/configuration.md of the checkout")
    args = p.parse_args(argv)
    path: Path = args.output or default_output_path()
    text = render()
    if args.check:
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            print(f"{path} does not exist; run `python -m secure_fl.docs_gen`", file=sys.stderr)
            return 1
        if current != text:
            print(
                f"{path} is stale: the configuration schema changed; run "
                "`python -m secure_fl.docs_gen` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"{path} is up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
