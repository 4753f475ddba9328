"""Issue 16 sections 1 and 7: private by default, contradictions caught at validation
time, and a validated way to derive a configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_fl.config import RunConfig, load_config
from secure_fl.errors import ConfigError

README_OWN_DATA = """\
[clients]
num = 3
[data]
dataset = "csv"
paths = ["site_a.csv", "site_b.csv", "site_c.npz"]
label_column = "diagnosis"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_user_file_inherits_secure_aggregation_with_distributed_dp(tmp_path: Path) -> None:
    # The README's "Your own data" TOML used to get protocol plain and no DP.
    config = load_config(_write(tmp_path, README_OWN_DATA))
    assert config.protocol == "secagg"
    assert config.dp.mechanism == "discrete_gaussian"
    assert config.dp.target_epsilon == load_config().dp.target_epsilon
    assert config.dp.delta == load_config().dp.delta


@pytest.mark.parametrize(
    ("text", "protocol", "mechanism"),
    [
        ('protocol = "ckks"\n', "ckks", "gaussian"),
        ('protocol = "plain"\n', "plain", "gaussian"),  # central DP unless turned off
        ('protocol = "plain"\n[dp]\nmechanism = "none"\n', "plain", "none"),
        ('[dp]\nmechanism = "none"\n', "secagg", "none"),
        ('[dp]\nmechanism = "skellam"\nnoise_multiplier = 1.5\n', "secagg", "skellam"),
    ],
)
def test_protection_is_turned_off_only_explicitly(
    tmp_path: Path, text: str, protocol: str, mechanism: str
) -> None:
    config = load_config(_write(tmp_path, text))
    assert (config.protocol, config.dp.mechanism) == (protocol, mechanism)
    if mechanism == "none":
        assert config.dp.target_epsilon is None
    elif "noise_multiplier" in text:
        assert config.dp.target_epsilon is None and config.dp.noise_multiplier == 1.5
    else:
        assert config.dp.target_epsilon == 8.0


def test_resolved_configuration_reloads_identically(tmp_path: Path) -> None:
    from secure_fl.config import to_toml

    for config in (load_config(_write(tmp_path, 'protocol = "plain"\n[dp]\nmechanism = "none"\n')),
                   load_config()):
        again = tmp_path / "again.toml"
        again.write_text(to_toml(config), encoding="utf-8")
        # the default `rounds` is written as the number it resolves to
        assert load_config(again) == config.model_copy(update={"rounds": config.aggregations})


def _conflict(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    return str(err.value)


def test_target_epsilon_without_a_mechanism_names_both_fields(tmp_path: Path) -> None:
    off = _write(tmp_path, 'protocol = "plain"\n[dp]\nmechanism = "none"\n')
    msg = _conflict(["dp.target_epsilon=1"], off)
    assert "dp.target_epsilon" in msg and "dp.mechanism" in msg
    msg = _conflict(["dp.noise_multiplier=1.0"], off)
    assert "dp.noise_multiplier" in msg and "dp.mechanism" in msg
    msg = _conflict(["dp.budget_cap=2.0"], off)
    assert "dp.budget_cap" in msg and "dp.mechanism" in msg
    # The same contradiction in Python.
    with pytest.raises(ConfigError, match=r"dp\.target_epsilon.*dp\.mechanism"):
        RunConfig().with_overrides(["dp.target_epsilon=1"])


def test_turning_dp_off_on_the_command_line_drops_the_files_target() -> None:
    config = load_config(None, ["dp.mechanism=none"])
    assert config.dp.mechanism == "none" and config.dp.target_epsilon is None
    with pytest.raises(ConfigError, match="dp.target_epsilon"):
        load_config(None, ["dp.mechanism=none", "dp.target_epsilon=2"])


def test_a_mechanism_without_noise_is_refused() -> None:
    msg = _conflict(["dp.mechanism=gaussian", "protocol=plain", "dp.noise_multiplier=0"],
                    Path(__file__).resolve().parents[1] / "plain.toml")
    assert "dp.mechanism" in msg and "dp.noise_multiplier" in msg


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        (["protocol=plain", "dp.mechanism=skellam"], ("dp.mechanism", "protocol")),
        (["protocol=ckks", "dp.mechanism=discrete_gaussian"], ("dp.mechanism", "protocol")),
        (["protocol=secagg", "dp.mechanism=gaussian"], ("dp.mechanism", "protocol")),
        (["model.batch_norm=true", "dp.record_level=true"], ("model.batch_norm", "dp.record_level")),
        (["dp.record_noise_multiplier=2.0"], ("dp.record_noise_multiplier", "dp.record_level")),
        (["dp.clip_target_quantile=0.7"], ("dp.clip_target_quantile", "dp.adaptive_clip")),
    ],
)
def test_incompatible_options_fail_at_validation_naming_both(
    overrides: list[str], fields: tuple[str, str]
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.field == fields[0]
    assert all(f in str(err.value) for f in fields)


def test_a_protocol_override_takes_its_own_distributed_mechanism() -> None:
    assert load_config(None, ["protocol=ckks"]).dp.mechanism == "gaussian"
    assert load_config(None, ["protocol=secagg"]).dp.mechanism == "discrete_gaussian"


def test_csv_file_without_clients_num_has_one_client_per_site(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, README_OWN_DATA.replace("[clients]\nnum = 3\n", "")))
    assert config.clients.num == 3
    assert all(Path(p).is_absolute() for p in config.data.paths)


def test_model_copy_validates() -> None:
    config = load_config()
    with pytest.raises(ConfigError, match="rounds"):
        config.model_copy(update={"rounds": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        config.model_copy(update={"roundz": 3})
    with pytest.raises(ConfigError, match="clients.per_round"):
        config.model_copy(update={"clients": config.clients.model_copy(update={"per_round": 1000})})
    assert config.model_copy(update={"rounds": 3}).rounds == 3
    merged = config.model_copy(update={"dp": {"clip": 0.25}})  # a section updates key by key
    assert merged.dp.clip == 0.25 and merged.dp.mechanism == config.dp.mechanism


def test_with_overrides_derives_a_validated_config() -> None:
    base = load_config()
    derived = base.with_overrides(["rounds=5", "dp.clip=0.3"], clients={"num": 20}, seed=7)
    assert (derived.rounds, derived.dp.clip, derived.clients.num, derived.seed) == (5, 0.3, 20, 7)
    assert derived.dp.mechanism == base.dp.mechanism and derived.protocol == base.protocol
    assert base.rounds is None and base.aggregations == 30  # frozen: the original is untouched
    assert base.with_overrides({"dp": {"delta": 1e-6}}).dp.delta == 1e-6
    with pytest.raises(ConfigError, match="rounds"):
        base.with_overrides(["rounds=0"])
    with pytest.raises(ConfigError, match="clients.num"):
        base.with_overrides(clients={"num": 0})
