"""The site-held roster: attacks of a server that chooses the cohort (issue 14, problem 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fl.errors import RemoteProtocolError
from secure_fl.roster import (
    HOW_TO_MAKE,
    CohortSetup,
    Roster,
    RosterError,
    build_roster,
    check_setup,
    load_roster,
    roster_main,
    write_roster,
)
from secure_fl.transport.flower.site import load_identity_key, load_site_config


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@pytest.fixture
def keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(4)]


@pytest.fixture
def roster(keys: list[Ed25519PrivateKey]) -> Roster:
    return build_roster({f"site-{i}": _pub(k) for i, k in enumerate(keys)}, min_cohort=3, min_threshold=2)


def _setup(keys: list[bytes], *, index: int = 0, t: int = 2, p: int = 2) -> CohortSetup:
    return CohortSetup(identity_keys=tuple(keys), index=index, threshold=t, provisioned=p)


def test_roster_round_trips_and_has_a_stable_fingerprint(tmp_path: Path, roster: Roster) -> None:
    path = write_roster(roster, tmp_path / "roster.toml")
    again = load_roster(path)
    assert again == roster and again.fingerprint == roster.fingerprint
    with pytest.raises(RosterError, match="already exists"):
        write_roster(roster, path)


@pytest.mark.parametrize("content", [None, "", "# nothing\n", "[federation]\nmin_cohort = 2\nmin_threshold = 2\n"])
def test_missing_or_empty_roster_fails_closed_saying_how_to_make_one(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "roster.toml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(RosterError) as err:
        load_roster(path)
    assert "secure-fl roster build" in str(err.value)
    with pytest.raises(RosterError, match="secure-fl roster build"):
        load_roster(None)


def test_invalid_rosters_are_refused(keys: list[Ed25519PrivateKey]) -> None:
    k = _pub(keys[0])
    with pytest.raises(RosterError, match="min_cohort"):
        build_roster({"a": k, "b": _pub(keys[1])}, min_cohort=3, min_threshold=2)
    with pytest.raises(RosterError, match="min_threshold"):
        build_roster({"a": k, "b": _pub(keys[1])}, min_cohort=2, min_threshold=1)
    with pytest.raises(RosterError, match="share one identity key"):
        build_roster({"a": k, "b": k}, min_cohort=2, min_threshold=2)


def test_sybil_cohort_of_two_is_refused(keys: list[Ed25519PrivateKey], roster: Roster) -> None:
    """Issue 14 problem 1: n = 2, t = 2, the other member the server's Sybil."""
    sybil = _pub(Ed25519PrivateKey.generate())
    with pytest.raises(RemoteProtocolError, match="not in the roster"):
        check_setup(roster, _setup([_pub(keys[0]), sybil], t=2, p=1), own_key=_pub(keys[0]), max_colluders=1)
    # even with two genuine roster members, n = 2 is below the roster's min_cohort
    with pytest.raises(RemoteProtocolError, match="below the roster's min_cohort = 3"):
        check_setup(roster, _setup([_pub(keys[0]), _pub(keys[1])], t=2, p=1), own_key=_pub(keys[0]), max_colluders=0)


def test_server_chosen_identity_not_in_roster_is_refused(keys: list[Ed25519PrivateKey], roster: Roster) -> None:
    members = [_pub(k) for k in keys[:3]] + [_pub(Ed25519PrivateKey.generate())]
    with pytest.raises(RemoteProtocolError, match=r"cohort members \[3\] are not in the roster"):
        check_setup(roster, _setup(members, t=3, p=3), own_key=members[0], max_colluders=1)


def test_own_key_copied_key_and_threshold(keys: list[Ed25519PrivateKey], roster: Roster) -> None:
    members = [_pub(k) for k in keys[:3]]
    with pytest.raises(RemoteProtocolError, match="own key at index 1"):
        check_setup(roster, _setup(members, index=1), own_key=members[0], max_colluders=1)
    with pytest.raises(RemoteProtocolError, match="twice"):
        check_setup(roster, _setup([members[0], members[1], members[1]]), own_key=members[0], max_colluders=1)
    with pytest.raises(RemoteProtocolError, match="threshold 1 is outside"):
        check_setup(roster, _setup(members, t=1, p=1), own_key=members[0], max_colluders=0)


def test_provisioned_above_what_the_roster_allows_is_refused(keys: list[Ed25519PrivateKey], roster: Roster) -> None:
    """101 "members" with 100 Sybils cannot be announced; nor P > n - c with real members."""
    members = [_pub(k) for k in keys]
    with pytest.raises(RemoteProtocolError, match="provisioned = 4 .* above what the roster allows"):
        check_setup(roster, _setup(members, t=3, p=4), own_key=members[0], max_colluders=1)
    ok = check_setup(roster, _setup(members, t=3, p=3), own_key=members[0], max_colluders=1)
    assert ok.members == ("site-0", "site-1", "site-2", "site-3")
    assert ok.counted_shares == 2  # t - c: the site charges for the shares it can count on
    assert check_setup(roster, _setup(members, t=2, p=1), own_key=members[0], max_colluders=3).counted_shares == 1


def _site_file(tmp_path: Path, name: str, roster: str | None) -> Path:
    path = tmp_path / f"{name}.toml"
    text = f'[site]\nname = "{name}"\ndata = "d.csv"\nkeys_dir = "keys/{name}"\n'
    if roster is not None:
        text += f'roster = "{roster}"\n'
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_builds_the_roster_from_identity_pub_files_and_the_site_checks_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [_site_file(tmp_path, f"s{i}", "roster.toml") for i in range(3)]
    pubs = []
    for f in files:
        assert roster_main(["key", str(f)]) == 0
        pubs.append(capsys.readouterr().out.splitlines()[0])  # NAME=path/identity.pub
    assert roster_main(["build", "--out", str(tmp_path / "roster.toml"), "--min-cohort", "3",
                        "--min-threshold", "2", *pubs]) == 0
    assert "fingerprint" in capsys.readouterr().out
    assert roster_main(["show", str(tmp_path / "roster.toml")]) == 0
    sites = [load_site_config(f) for f in files]
    members = [load_identity_key(s).public_key().public_bytes_raw() for s in sites]
    # the server lowers threat.max_colluders to 0 to inflate the counted shares: the site
    # (its engine, with the rules of its site file) keeps its own c = 1
    assert "above what the roster allows" in _aggregate_setup(sites[1], members, provisioned=3)
    assert "holds no trained update" in _aggregate_setup(sites[1], members, provisioned=2)  # the rules pass


def _aggregate_setup(site: Any, members: list[bytes], *, provisioned: int) -> str:
    """The reason site ``site`` (index 1) gives for an aggregation set-up announcing
    ``provisioned`` noise shares under ``threat.max_colluders = 0``."""
    import numpy as np
    from torch import nn

    from secure_fl.config import build_config, to_toml
    from secure_fl.engine.client import (
        ClientEngine,
        DictState,
        MemoryBudget,
        Site,
        SiteData,
        SiteRules,
    )
    from secure_fl.engine.transport import SETUP, Envelope

    config = build_config({"protocol": "secagg", "clients": {"num": 3}, "threat": {"max_colluders": 0},
                           "dp": {"mechanism": "discrete_gaussian", "noise_multiplier": 1.0}})
    empty = np.zeros((0, 2), dtype=np.float32), np.zeros(0, dtype=np.int64)
    engine = ClientEngine(Site(
        name=site.name, identity_key=load_identity_key(site), data=SiteData(*empty, *empty),
        rules=SiteRules(roster=load_roster(site.roster), max_colluders=site.max_colluders),
        budget=MemoryBudget(cap=float("inf"), delta=1e-5, name=site.name), model=nn.Linear(2, 2),
    ))
    env = Envelope(fields={
        "version": 1, "config_toml": to_toml(config), "protocol": "secagg", "aggregate": True,
        "identity_keys": members, "index": 1, "threshold": 2, "provisioned": provisioned, "n": 3,
        "clip": 1.0, "kappa": 0.0, "weight": 1.0, "staleness": 0,
    }, arrays={"support": np.arange(6, dtype=np.int64)})
    return str(engine.handle(SETUP, env, DictState()).fields.get("refused"))


def test_site_without_roster_refuses_to_start(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    from secure_fl.config import build_config
    from secure_fl.transport.flower.client_app import build_site

    config = build_config({})
    site = load_site_config(_site_file(tmp_path, "lonely", None))
    with pytest.raises(RosterError, match="no roster") as err:
        build_site(site, config, num_classes=2)
    assert HOW_TO_MAKE in str(err.value)
    site = load_site_config(_site_file(tmp_path, "empty", "empty.toml"))
    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    with pytest.raises(RosterError, match="is empty"):
        build_site(site, config, num_classes=2)


def test_trusted_peers_is_gone_rather_than_failing_open(tmp_path: Path) -> None:
    from secure_fl.errors import ConfigError

    path = tmp_path / "old.toml"
    path.write_text('[site]\nname = "a"\ndata = "d.csv"\nkeys_dir = "k"\ntrusted_peers = []\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="mandatory federation roster"):
        load_site_config(path)
