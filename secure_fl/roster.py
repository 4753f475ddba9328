"""The federation roster: the sites' own list of who may be in a cohort.

Without it a site can check only that its own key sits at its own index, and the server
decides everything else: it can fill a cohort of ``n = 2, t = 2`` with one Sybil and
"aggregate" a single site's update, or announce a noise provisioning that no honest
cohort of that size could deliver. The roster moves that decision to the sites. Every
site holds the same file (its path is ``roster`` in the site TOML) and checks each cohort
set-up the server sends against it (:func:`check_setup`) before it trains.

File format (TOML, written by ``secure-fl roster build``)::

    [federation]
    min_cohort = 3          # a site refuses any cohort with fewer members
    min_threshold = 2       # ... and any SecAgg threshold below this
    ckks_key_holder = "..." # optional: hex Ed25519 identity of the CKKS key holder

    [[sites]]
    name = "site-a"
    identity_key = "<64 hex digits: the site's keys_dir/identity.pub>"

What a roster guarantees (adversary: a malicious server with up to
``threat.max_colluders`` = c colluding roster members): every cohort member is a key
some site vouched for, so the server can add no Sybil; the cohort has at least
``min_cohort`` members and threshold ``t >= min_threshold``; and the site charges its
budget only for the noise shares it can count on, ``max(1, t - c)`` (at least ``t``
members survive when the sum is released, at most ``c`` of them add no noise), never for
shares of identities it cannot verify. A roster is only as good as the way it was
distributed: each site should compare the file's fingerprint
(``secure-fl roster show``) with the other sites over a channel the server does not
control.

Pinning fails closed: a missing, unreadable or empty roster refuses to start, with a
message saying how to make one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secure_fl.errors import ConfigError, RemoteProtocolError, SecureFLError

__all__ = [
    "HOW_TO_MAKE",
    "CohortSetup",
    "Roster",
    "RosterError",
    "RosterSite",
    "SetupCheck",
    "build_roster",
    "check_setup",
    "load_roster",
    "parse_roster",
    "read_identity_pub",
    "roster_main",
    "write_roster",
]

HOW_TO_MAKE = (
    "make one with `secure-fl roster key SITE.toml` at each site (prints the site's identity.pub), then "
    "`secure-fl roster build --out roster.toml --min-cohort N --min-threshold T NAME=identity.pub ...` "
    "and give every site the same file (site TOML: roster = \"roster.toml\"); see docs/deployment.md"
)


class RosterError(ConfigError):
    """The roster is missing, unreadable or invalid; the site refuses to start."""


@dataclass(frozen=True)
class RosterSite:
    """One federation member: its name and 32-byte Ed25519 identity public key."""

    name: str
    identity_key: bytes


def _check_key(key: bytes, where: str) -> bytes:
    if not isinstance(key, bytes) or len(key) != 32:
        raise RosterError(f"{where}: an identity key is 32 bytes (64 hex digits)")
    try:
        Ed25519PublicKey.from_public_bytes(key)
    except ValueError:
        raise RosterError(f"{where}: not a valid Ed25519 public key") from None
    return key


@dataclass(frozen=True)
class Roster:
    """A validated federation manifest (see the module docstring)."""

    sites: tuple[RosterSite, ...]
    min_cohort: int
    min_threshold: int
    ckks_key_holder: bytes | None = None

    def __post_init__(self) -> None:
        if not self.sites:
            raise RosterError(f"the roster lists no site; {HOW_TO_MAKE}")
        names = [s.name for s in self.sites]
        keys = [s.identity_key for s in self.sites]
        for s in self.sites:
            if not isinstance(s.name, str) or not s.name.strip():
                raise RosterError("every roster site needs a non-empty name")
            _check_key(s.identity_key, f"site {s.name!r}")
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise RosterError(f"site name {dup!r} appears twice in the roster")
        if len(set(keys)) != len(keys):
            raise RosterError("two roster sites share one identity key")
        for key, value in (("min_cohort", self.min_cohort), ("min_threshold", self.min_threshold)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise RosterError(f"federation.{key} must be an integer")
        if not 2 <= self.min_cohort <= len(self.sites):
            raise RosterError(
                f"federation.min_cohort must be in [2, {len(self.sites)}] (the number of sites), got {self.min_cohort}"
            )
        if not 2 <= self.min_threshold <= self.min_cohort:
            raise RosterError(
                f"federation.min_threshold must be in [2, min_cohort = {self.min_cohort}], got {self.min_threshold}"
            )
        if self.ckks_key_holder is not None:
            _check_key(self.ckks_key_holder, "federation.ckks_key_holder")

    def name_of(self, key: bytes) -> str | None:
        """The roster name of identity ``key`` (``None``: not a member)."""
        return next((s.name for s in self.sites if s.identity_key == key), None)

    def public_keys(self) -> dict[str, bytes]:
        """Site name -> identity public key (what the audit verifies countersignatures with)."""
        return {s.name: s.identity_key for s in self.sites}

    def to_toml(self) -> str:
        """The canonical file text (:func:`parse_roster` reads it back to an equal roster)."""
        lines = ["# secure-fl federation roster: every site holds this same file (docs/deployment.md)",
                 "[federation]", f"min_cohort = {self.min_cohort}", f"min_threshold = {self.min_threshold}"]
        if self.ckks_key_holder is not None:
            lines.append(f'ckks_key_holder = "{self.ckks_key_holder.hex()}"')
        for s in self.sites:
            lines += ["", "[[sites]]", f"name = {_toml_str(s.name)}", f'identity_key = "{s.identity_key.hex()}"']
        return "\n".join(lines) + "\n"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of :meth:`to_toml`: compare it between sites out of band."""
        return hashlib.sha256(self.to_toml().encode("utf-8")).hexdigest()


def _toml_str(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 for c in escaped):
        raise RosterError(f"site name {text!r} contains control characters")
    return f'"{escaped}"'


def _hex_key(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise RosterError(f"{where}: expected a hex string")
    try:
        return _check_key(bytes.fromhex(value.strip()), where)
    except ValueError:
        raise RosterError(f"{where}: not hex") from None


def parse_roster(tree: Mapping[str, Any]) -> Roster:
    """Validate a parsed roster document (:class:`RosterError` naming the problem)."""
    unknown = sorted(set(tree) - {"federation", "sites"})
    if unknown:
        raise RosterError(f"unknown roster table {unknown[0]!r}")
    fed = tree.get("federation")
    sites = tree.get("sites")
    if not isinstance(fed, dict) or not sites:
        raise RosterError(f"the roster is empty (no [federation] table or no [[sites]]); {HOW_TO_MAKE}")
    if not isinstance(sites, list) or not all(isinstance(s, dict) for s in sites):
        raise RosterError("[[sites]] must be an array of tables")
    bad = sorted(set(fed) - {"min_cohort", "min_threshold", "ckks_key_holder"})
    if bad:
        raise RosterError(f"unknown key federation.{bad[0]}")
    members = []
    for i, s in enumerate(sites):
        extra = sorted(set(s) - {"name", "identity_key"})
        if extra:
            raise RosterError(f"unknown key sites[{i}].{extra[0]}")
        name = s.get("name")
        if not isinstance(name, str):
            raise RosterError(f"sites[{i}].name must be a string")
        members.append(RosterSite(name, _hex_key(s.get("identity_key"), f"sites[{i}] ({name}).identity_key")))
    if "min_cohort" not in fed or "min_threshold" not in fed:
        raise RosterError("the roster must set federation.min_cohort and federation.min_threshold")
    holder = fed.get("ckks_key_holder")
    return Roster(
        tuple(members),
        fed["min_cohort"],
        fed["min_threshold"],
        None if holder is None else _hex_key(holder, "federation.ckks_key_holder"),
    )


def load_roster(path: str | os.PathLike[str] | None) -> Roster:
    """Read and validate the roster at ``path``. Fails closed: ``None``, a missing,
    unreadable, empty or invalid file raise :class:`RosterError` saying how to make one."""
    if path is None:
        raise RosterError(f"this site has no roster (site.roster is not set); {HOW_TO_MAKE}", field="site.roster")
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RosterError(f"roster {source} not found; {HOW_TO_MAKE}", field="site.roster") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RosterError(f"cannot read roster {source}: {exc}", field="site.roster") from None
    if not text.strip():
        raise RosterError(f"roster {source} is empty; {HOW_TO_MAKE}", field="site.roster")
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RosterError(f"roster {source} is not valid TOML: {exc}", field="site.roster") from None
    try:
        return parse_roster(tree)
    except RosterError as exc:
        raise RosterError(f"roster {source}: {exc}", field="site.roster") from None


def read_identity_pub(path: str | os.PathLike[str]) -> bytes:
    """A site's ``identity.pub`` (64 hex digits) as 32 raw bytes."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise RosterError(f"cannot read identity key {p}: {exc}") from None
    return _hex_key(text, str(p))


def build_roster(
    sites: Mapping[str, bytes], *, min_cohort: int, min_threshold: int, ckks_key_holder: bytes | None = None
) -> Roster:
    """A roster of ``sites`` (name -> identity public key), in name order."""
    members = tuple(RosterSite(name, key) for name, key in sorted(sites.items()))
    return Roster(members, min_cohort, min_threshold, ckks_key_holder)


def write_roster(roster: Roster, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``roster`` to ``path`` (refuses to replace a file unless ``overwrite``)."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise RosterError(f"{target} already exists; pass --force to replace it")
    target.write_text(roster.to_toml(), encoding="utf-8")
    return target


# -- the check a site runs on the server's cohort set-up -----------------------------------------
@dataclass(frozen=True)
class CohortSetup:
    """What a cohort set-up announces that the roster constrains.

    ``identity_keys[i]`` is member i's Ed25519 key, ``index`` the receiving site's own
    position, ``threshold`` the SecAgg threshold t, ``provisioned`` the number of noise
    shares P the server says carry the full noise (each member adds 1/P of it).
    """

    identity_keys: tuple[bytes, ...]
    index: int
    threshold: int
    provisioned: int


@dataclass(frozen=True)
class SetupCheck:
    """An accepted set-up: the members' roster names and the noise shares the site may
    count on when it charges its budget (``counted_shares = max(1, t - c)``)."""

    members: tuple[str, ...]
    counted_shares: int


def check_setup(roster: Roster, setup: CohortSetup, *, own_key: bytes, max_colluders: int) -> SetupCheck:
    """Check a cohort set-up against the site's roster; raise :class:`RemoteProtocolError`
    (the server misbehaved) naming the first rule it breaks.

    Rules, in order: this site's own key at its index; every identity a roster member and
    none twice (no Sybil, no copied key); ``n >= min_cohort``; ``t >= min_threshold``
    (and ``t <= n``); ``1 <= P <= n - c``: with at most ``c`` colluders adding no noise,
    at most ``n - c`` honest shares can exist, and a larger P would make every share too
    small. The budget is then charged for ``max(1, t - c)`` shares: the sum is released
    only with at least ``t`` survivors, of which at most ``c`` collude (the site's own
    share is honest, hence at least 1).
    """
    if isinstance(max_colluders, bool) or not isinstance(max_colluders, int) or max_colluders < 0:
        raise ConfigError(f"must be a non-negative integer, got {max_colluders!r}", field="threat.max_colluders")
    keys = setup.identity_keys
    n = len(keys)
    if not 0 <= setup.index < n or keys[setup.index] != own_key:
        raise RemoteProtocolError(f"the cohort set-up does not list this site's own key at index {setup.index}")
    names = [roster.name_of(k) for k in keys]
    unknown = [i for i, name in enumerate(names) if name is None]
    if unknown:
        raise RemoteProtocolError(
            f"cohort members {unknown} are not in the roster (identity keys "
            f"{', '.join(keys[i].hex()[:16] + '...' for i in unknown[:3])}): refused as possible Sybils"
        )
    if len(set(keys)) != n:
        raise RemoteProtocolError("the cohort set-up lists one identity key twice")
    if n < roster.min_cohort:
        raise RemoteProtocolError(f"cohort of {n} is below the roster's min_cohort = {roster.min_cohort}")
    if not roster.min_threshold <= setup.threshold <= n:
        raise RemoteProtocolError(
            f"threshold {setup.threshold} is outside [min_threshold = {roster.min_threshold}, n = {n}]"
        )
    honest = n - max_colluders
    if not 1 <= setup.provisioned <= honest:
        raise RemoteProtocolError(
            f"provisioned = {setup.provisioned} noise shares is above what the roster allows: "
            f"{n} roster members minus threat.max_colluders = {max_colluders} leaves at most {max(honest, 0)} honest shares"
        )
    return SetupCheck(tuple(n for n in names if n is not None), max(1, setup.threshold - max_colluders))


# -- secure-fl roster -----------------------------------------------------------------------------
def _cmd_key(args: argparse.Namespace) -> int:
    from secure_fl.transport.flower.site import (
        IDENTITY_PUB_FILE,
        load_identity_key,
        load_site_config,
    )

    site = load_site_config(args.site_toml)
    key = load_identity_key(site)
    pub = site.keys_dir / IDENTITY_PUB_FILE
    print(f"{site.name}={pub}")
    print(f"identity key {key.public_key().public_bytes_raw().hex()}  (give {pub} to whoever builds the roster)")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    members: dict[str, bytes] = {}
    for item in args.sites:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path:
            raise RosterError(f"expected NAME=PATH/TO/identity.pub, got {item!r}")
        if name.strip() in members:
            raise RosterError(f"site {name.strip()!r} given twice")
        members[name.strip()] = read_identity_pub(path)
    holder = None
    if args.ckks_key_holder:
        value = args.ckks_key_holder
        holder = read_identity_pub(value) if Path(value).is_file() else _hex_key(value, "--ckks-key-holder")
    roster = build_roster(
        members, min_cohort=args.min_cohort, min_threshold=args.min_threshold, ckks_key_holder=holder
    )
    write_roster(roster, args.out, overwrite=args.force)
    print(f"roster {args.out}: {len(roster.sites)} sites, min_cohort {roster.min_cohort}, "
          f"min_threshold {roster.min_threshold}")
    print(f"fingerprint {roster.fingerprint}  (every site should compare it out of band)")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    roster = load_roster(args.roster)
    print(f"roster {args.roster}: min_cohort {roster.min_cohort}, min_threshold {roster.min_threshold}")
    for s in roster.sites:
        print(f"  {s.name}  {s.identity_key.hex()}")
    if roster.ckks_key_holder is not None:
        print(f"  CKKS key holder  {roster.ckks_key_holder.hex()}")
    print(f"fingerprint {roster.fingerprint}")
    return 0


def roster_main(argv: Sequence[str] | None = None) -> int:
    """``secure-fl roster {key,build,show}``: make and inspect the federation roster."""
    parser = argparse.ArgumentParser(
        prog="secure-fl roster", description="Build the federation roster every site holds (docs/deployment.md)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_key = sub.add_parser("key", help="create (if needed) a site's identity key; print its identity.pub")
    p_key.add_argument("site_toml", metavar="SITE.toml")
    p_build = sub.add_parser("build", help="write a roster from the sites' identity.pub files")
    p_build.add_argument("sites", nargs="+", metavar="NAME=identity.pub")
    p_build.add_argument("--out", default="roster.toml", help="output file (default ./roster.toml)")
    p_build.add_argument("--min-cohort", type=int, required=True, help="smallest cohort a site accepts")
    p_build.add_argument("--min-threshold", type=int, required=True, help="smallest SecAgg threshold a site accepts")
    p_build.add_argument("--ckks-key-holder", default=None, help="hex key or file of the CKKS key holder's identity")
    p_build.add_argument("--force", action="store_true", help="replace an existing file")
    p_show = sub.add_parser("show", help="verify a roster and print it with its fingerprint")
    p_show.add_argument("roster", metavar="ROSTER.toml")
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        return {"key": _cmd_key, "build": _cmd_build, "show": _cmd_show}[args.command](args)
    except SecureFLError as exc:
        print(f"secure-fl roster: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(roster_main())
