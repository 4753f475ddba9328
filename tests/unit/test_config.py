from __future__ import annotations

import math
from pathlib import Path

import pytest

from secure_fl.config import DEFAULT_CONFIG_PATH, config_hash, load_config, parse_overrides, to_toml
from secure_fl.errors import ConfigError


def test_default_config_loads_and_round_trips(tmp_path: Path) -> None:
    config = load_config()
    assert config.data.dataset == "digits"
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config))
    again = load_config(path)
    # the resolved TOML states the default `rounds` as the number it resolves to
    assert again == config.model_copy(update={"rounds": config.aggregations})
    assert config_hash(again) == config_hash(config)


def test_overrides_parse_toml_values() -> None:
    config = load_config(
        None, ["clients.num=20", "model.hidden=[32, 16]", "dp.clip=0.5", "protocol=plain", "dp.mechanism=gaussian"]
    )
    assert config.clients.num == 20
    assert config.model.hidden == (32, 16)
    assert config.dp.clip == 0.5
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["clients.num=0"], "clients.num"),
        (["rounds=-3"], "rounds"),
        (["protocol=rot13"], "protocol"),
        (["no_such_key=1"], "no_such_key"),
        (["dp.noise_multiplier=-1"], "dp.noise_multiplier"),
        (["train.lr=fast"], "train.lr"),
        (["data.partition=zipf"], "data.partition"),
        (["secagg.bits=80"], "secagg.bits"),
        (["ckks.poly_modulus_degree=5000"], "ckks.poly_modulus_degree"),
        (["data.test_fraction=1.5"], "data.test_fraction"),
        (["model.hidden=[0]"], "model.hidden"),
        (["dp.delta=0"], "dp.delta"),
        (["data.synthetic.num_classes=1"], "data.synthetic.num_classes"),
    ],
)
def test_invalid_values_name_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert field in str(err.value)


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="clients.per_round"):
        load_config(None, ["clients.per_round=101"])
    with pytest.raises(ConfigError, match="data.paths"):
        load_config(None, ["data.dataset=csv", "clients.num=2"])


def test_malformed_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["clients.num"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(Exception, match="frozen"):
        config.rounds = 3  # type: ignore[misc]


def test_default_path_is_packaged() -> None:
    assert DEFAULT_CONFIG_PATH.is_file()


def test_async_buffer_default_depends_on_dp() -> None:
    """FedBuff-style half-concurrency buffers without DP; two thirds of the concurrency
    under DP, where the noise in the mean falls as 1/K (docs/concepts.md); the staleness
    bound follows concurrency / K."""
    from secure_fl.config import load_config

    plain = load_config(None, ["aggregation.mode=async", "dp.mechanism=none"])
    private = load_config(None, ["aggregation.mode=async"])
    assert plain.buffer_size == plain.cohort_size // 2 == 50
    assert private.dp.mechanism != "none" and private.buffer_size == 67
    assert (plain.max_staleness, private.max_staleness) == (2, 1)


def test_default_rounds_give_both_modes_the_same_number_of_client_updates() -> None:
    """30 rounds of work by default: 30 aggregations of the 100-client cohort in sync mode,
    ceil(30 x 100 / K) buffers of K in async mode; an explicit ``rounds`` is the number of
    aggregations in either mode, and the resolved TOML and the DP calibration use it."""
    import tomllib

    from secure_fl.accounting import calibrate_config
    from secure_fl.config import load_config, to_toml

    sync = load_config(None)
    plain = load_config(None, ["aggregation.mode=async", "dp.mechanism=none"])
    private = load_config(None, ["aggregation.mode=async"])
    assert sync.rounds is None and sync.aggregations == 30
    assert plain.aggregations == 60 and private.aggregations == math.ceil(3000 / 67) == 45
    assert load_config(None, ["aggregation.mode=async", "rounds=7"]).aggregations == 7
    assert tomllib.loads(to_toml(private))["rounds"] == 45
    # the noise is calibrated for the worst case: a client in every one of the 45 buffers
    as_sync = load_config(None, ["rounds=45"])
    assert calibrate_config(private).dp.noise_multiplier == calibrate_config(as_sync).dp.noise_multiplier
    assert calibrate_config(private).dp.noise_multiplier > calibrate_config(sync).dp.noise_multiplier
    assert load_config(None, ["aggregation.buffer_size=7"]).buffer_size == 7
