"""docs/configuration.md is generated from the RunConfig schema and must be current."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from secure_fl import docs_gen
from secure_fl.config import RunConfig, load_config
from secure_fl.docs_gen import (
    FALLBACK_DESCRIPTIONS,
    VALIDATOR_NOTES,
    default_output_path,
    iter_fields,
    render,
)

DOC = default_output_path()


def _models(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    out = [(prefix, model)]
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _models(ann, f"{prefix}{name}.")
    return out


def test_configuration_reference_is_current() -> None:
    assert DOC.is_file(), "run `python -m secure_fl.docs_gen`"
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run `python -m secure_fl.docs_gen`"
    )


def test_check_mode_detects_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "configuration.md"
    assert docs_gen.main(["--check", "--output", str(target)]) == 1  # missing
    assert docs_gen.main(["--output", str(target)]) == 0
    assert docs_gen.main(["--check", "--output", str(target)]) == 0
    target.write_text(render().replace("`dp.clip`", "`dp.clipping`"), encoding="utf-8")
    assert docs_gen.main(["--check", "--output", str(target)]) == 1
    assert "stale" in capsys.readouterr().err


def test_every_key_is_documented_with_type_default_and_description() -> None:
    docs = {f.key: f for f in iter_fields()}
    # Every dotted key the loader accepts appears, and nothing else.
    expected = {
        f"{prefix}{name}"
        for prefix, model in _models()
        for name, info in model.model_fields.items()
        if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))
    }
    assert set(docs) == expected
    text = render()
    for key, doc in docs.items():
        assert f"| `{key}` |" in text
        assert doc.type and doc.default, key
        assert doc.description, f"{key} has no description: add Field(description=...) in config.py"
    # The public configuration keys are all there.
    for key in (
        "seed", "rounds", "protocol", "clients.num", "clients.per_round", "data.dataset",
        "data.partition", "data.alpha", "data.dominant_fraction", "model.kind",
        "train.local_epochs", "train.lr", "dp.mechanism", "dp.noise_multiplier",
        "dp.target_epsilon", "dp.delta", "dp.clip", "dp.adaptive_clip", "dp.record_level",
        "secagg.bits", "secagg.threshold", "secagg.neighbors", "ckks.poly_modulus_degree",
        "aggregation.mode", "aggregation.buffer_size", "staleness.fn", "staleness.a",
        "sparsity.kind", "sparsity.density", "simulation.dropout", "simulation.stragglers",
    ):
        assert key in docs, key


def test_documented_defaults_allowed_values_and_bounds_match_the_schema() -> None:
    docs = {f.key: f for f in iter_fields()}
    default = RunConfig()
    assert docs["seed"].default == f"`{default.seed}`"
    assert default.rounds is None and docs["rounds"].default == "unset"
    assert docs["dp.delta"].default == f"`{default.dp.delta!r}`"
    assert docs["protocol"].allowed == "`plain`, `secagg`, `ckks`"
    assert docs["dp.delta"].constraints == "> 0, < 1"
    assert docs["dp.target_epsilon"].type == "float or unset"
    # Each documented allowed value is accepted by the loader; the documented
    # bound is enforced.
    # (A continuous mechanism needs a protocol that carries it: the default is secagg.)
    companion = {"gaussian": ["protocol=ckks"]}
    for key in ("protocol", "data.partition", "dp.mechanism", "staleness.fn"):
        for value in docs[key].allowed.replace("`", "").split(", "):
            extra = companion.get(value, []) if key == "dp.mechanism" else []
            assert load_config(None, [f"{key}={value}", *extra]) is not None


def test_fallbacks_and_validator_notes_name_real_fields() -> None:
    keys = {f.key for f in iter_fields()}
    assert set(FALLBACK_DESCRIPTIONS) <= keys, "a fallback description names a removed field"
    assert set(VALIDATOR_NOTES) <= keys
    # Every custom field validator has its rule written down.
    for prefix, model in _models():
        for dec in model.__pydantic_decorators__.field_validators.values():
            for name in dec.info.fields:
                assert f"{prefix}{name}" in VALIDATOR_NOTES, f"document the check on {prefix}{name}"
    # Fields that gained a schema description no longer need a fallback.
    stale = [k for k in FALLBACK_DESCRIPTIONS if _schema_description(k)]
    assert not stale, f"remove fallbacks now described in the schema: {stale}"
    # The cross-field rules are those of one model validator.
    assert set(RunConfig.__pydantic_decorators__.model_validators) == {"_cross_field"}


def _schema_description(key: str) -> str | None:
    model: type[BaseModel] = RunConfig
    *sections, leaf = key.split(".")
    for s in sections:
        ann = model.model_fields[s].annotation
        assert isinstance(ann, type) and issubclass(ann, BaseModel)
        model = ann
    return model.model_fields[leaf].description
