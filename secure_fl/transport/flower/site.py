"""Per-site configuration of a deployment: data, keys and privacy budget stay at the site.

A site (hospital, bank branch) runs one Flower SuperNode started with
``--node-config 'site-config="/path/to/site.toml"'``. The file::

    [site]
    name = "hospital-a"              # shown in the server's ledger
    data = "data/site_a.csv"          # CSV with a header row and a label column, or NPZ (x, y)
    label_column = "label"
    keys_dir = "keys/hospital-a"      # identity key and budget ledger (created, mode 0700)
    budget_cap = 8.0                  # this site's own epsilon cap (at the run's delta)
    require_dp = true                 # refuse any aggregation without distributed DP
    max_colluders = 1                 # clients this site assumes collude with the server
                                      # (the larger of this and the run's threat.max_colluders)
    test_fraction = 0.2               # local held-out split for federated evaluation
    allow_unnoised_metrics = false    # answer the memory-budget probe (validation accuracies
                                      # without noise, outside every epsilon) when the run
                                      # asks (sparsity.kind = "memory_budget" and
                                      # dp.allow_unnoised_site_metrics or no DP)
    roster = "roster.toml"            # REQUIRED: the federation roster every site holds
                                      # (secure-fl roster build); cohorts are checked
                                      # against it and the site refuses to start without it

Relative paths are resolved against the directory of the site file.

What never leaves the site: the data, the identity private key
(``keys_dir/identity.key``, 0600), the noise and rounding randomness, the update in the
clear, and the secrets of the SecAgg state machine. The server sees only the identity
*public* key, the feature shape, the number of classes and of training examples, and
masked vectors.

The site's budget ledger ``keys_dir/budget.jsonl`` lists every DP event the site was
charged, one JSON object a line (:mod:`audits.events_codec`). Before joining an
aggregation the site checks the worst case that can still complete (only ``threshold``
surviving noise shares); it charges that worst case when it releases its masked input,
so it never under-counts, even if it is cut off before learning who survived.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits.events_codec import decode_event, encode_event
from audits.ledger import load_private_key, save_private_key
from privacy.budget import ClientBudgets
from privacy.events import DPEvent, NonPrivateEvent
from secure_fl.data import SiteData, _read_site_file
from secure_fl.errors import (
    ConfigError,
    DataError,
    PrivacyError,
    SecureFLError,
)

__all__ = [
    "SiteBudget",
    "SiteConfig",
    "SiteData",
    "load_identity_key",
    "load_site_config",
    "load_site_data",
    "write_partition_sites",
]

IDENTITY_KEY_FILE = "identity.key"
IDENTITY_PUB_FILE = "identity.pub"
BUDGET_FILE = "budget.jsonl"

_SITE_KEYS = {
    "name", "data", "label_column", "keys_dir", "budget_cap", "require_dp",
    "test_fraction", "standardize", "roster", "max_colluders", "allow_unnoised_metrics",
}


@dataclass(frozen=True)
class SiteConfig:
    """Validated site settings (see the module docstring for the file format)."""

    name: str
    data: Path
    keys_dir: Path
    budget_cap: float = math.inf
    require_dp: bool = True
    label_column: str = "label"
    test_fraction: float = 0.2
    standardize: bool = True
    roster: Path | None = None
    max_colluders: int = 1
    allow_unnoised_metrics: bool = False


def _field(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = table.get(key, default)
    if value is None or (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ConfigError(f"expected {getattr(kind, '__name__', kind)}, got {value!r}", field=f"site.{key}")
    return value


def parse_site_config(table: Mapping[str, Any], *, base: Path) -> SiteConfig:
    """Validate the ``[site]`` table; relative paths are taken against ``base``."""
    unknown = sorted(set(table) - _SITE_KEYS - {"trusted_peers"})
    if unknown:
        raise ConfigError("unknown key", field=f"site.{unknown[0]}")
    name = _field(table, "name", str, None).strip()
    if not name:
        raise ConfigError("must be a non-empty string", field="site.name")

    def path(key: str) -> Path:
        p = Path(_field(table, key, str, None)).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    cap = float(_field(table, "budget_cap", (int, float), math.inf))
    if not cap > 0:
        raise ConfigError(f"must be > 0 (inf allowed), got {cap}", field="site.budget_cap")
    frac = float(_field(table, "test_fraction", (int, float), 0.2))
    if not 0 <= frac < 1:
        raise ConfigError(f"must be in [0, 1), got {frac}", field="site.test_fraction")
    colluders = _field(table, "max_colluders", int, 1)
    if colluders < 0:
        raise ConfigError(f"must be >= 0, got {colluders}", field="site.max_colluders")
    if "trusted_peers" in table:
        raise ConfigError(
            "replaced by the mandatory federation roster: set roster = \"roster.toml\" "
            "(secure-fl roster build; docs/deployment.md)",
            field="site.trusted_peers",
        )
    return SiteConfig(
        name=name,
        data=path("data"),
        keys_dir=path("keys_dir"),
        budget_cap=cap,
        require_dp=bool(_field(table, "require_dp", bool, True)),
        label_column=_field(table, "label_column", str, "label"),
        test_fraction=frac,
        standardize=bool(_field(table, "standardize", bool, True)),
        roster=path("roster") if "roster" in table else None,
        max_colluders=colluders,
        allow_unnoised_metrics=bool(_field(table, "allow_unnoised_metrics", bool, False)),
    )


def load_site_config(path: str | os.PathLike[str]) -> SiteConfig:
    """Read and validate a site TOML file (:class:`ConfigError` naming the field)."""
    source = Path(path).expanduser()
    try:
        tree = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"site configuration not found: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read site configuration {source}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    table = tree.get("site")
    if not isinstance(table, dict):
        raise ConfigError(f"{source} has no [site] table", field="site")
    return parse_site_config(table, base=source.resolve().parent)


# -- keys ----------------------------------------------------------------------------------
def _keys_dir(site: SiteConfig) -> Path:
    try:
        site.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {site.keys_dir}: {exc.strerror}", field="site.keys_dir") from exc
    return site.keys_dir


def load_identity_key(site: SiteConfig) -> Ed25519PrivateKey:
    """The site's long-term Ed25519 identity key; created (0600) on first use.

    It signs the site's SecAgg key advertisements, so the server cannot substitute a
    client it controls for the site. ``identity.pub`` (hex) is written next to it for
    federation roster (``secure-fl roster build``).
    """
    keys = _keys_dir(site)
    key_path = keys / IDENTITY_KEY_FILE
    if not key_path.exists():
        try:
            save_private_key(Ed25519PrivateKey.generate(), key_path)
        except SecureFLError:
            if not key_path.exists():  # not a race with a concurrent first use
                raise
    key = load_private_key(key_path)
    pub_path = keys / IDENTITY_PUB_FILE
    if not pub_path.exists():
        pub_path.write_text(key.public_key().public_bytes_raw().hex() + "\n", encoding="ascii")
    return key


# -- data ----------------------------------------------------------------------------------
def load_site_data(site: SiteConfig, *, seed: int = 0) -> SiteData:
    """Read the site's CSV/NPZ file; split off ``test_fraction``; standardise locally.

    Standardisation uses this site's own training statistics (no pooled statistics
    exist across sites); ``seed`` fixes the local split.

    An NPZ file holding ``x_train``, ``y_train``, ``x_test``, ``y_test`` is taken as it
    is (already split and scaled): what :func:`write_partition_sites` writes from a
    simulated partition, so that a Flower site trains on exactly the examples its
    simulated twin does.
    """
    presplit = _read_presplit(site.data)
    if presplit is not None:
        return presplit
    x, y = _read_site_file(site.data, site.label_column)
    if y.shape[0] < 2:
        raise DataError(f"{site.data}: a site needs at least 2 examples")
    rng = np.random.default_rng([seed, 0x517E])
    perm = rng.permutation(y.shape[0])
    n_test = int(round(site.test_fraction * y.shape[0])) if site.test_fraction > 0 else 0
    n_test = min(n_test, y.shape[0] - 1)
    te, tr = perm[:n_test], perm[n_test:]
    x_tr, x_te = x[tr], x[te]
    if site.standardize:
        flat = x_tr.reshape(x_tr.shape[0], -1)
        mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-6

        def norm(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            out: npt.NDArray[np.float32] = ((a.reshape(a.shape[0], -1) - mean) / std).reshape(a.shape).astype(np.float32)
            return out

        x_tr, x_te = norm(x_tr), norm(x_te)
    return SiteData(x_tr.astype(np.float32), y[tr], x_te.astype(np.float32), y[te])


_PRESPLIT = ("x_train", "y_train", "x_test", "y_test")


def _read_presplit(path: Path) -> SiteData | None:
    if path.suffix.lower() != ".npz" or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not all(k in npz for k in _PRESPLIT):
                return None
            xtr, ytr, xte, yte = (np.asarray(npz[k]) for k in _PRESPLIT)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable NPZ file ({err})") from None
    if xtr.ndim < 2 or ytr.ndim != 1 or xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0]:
        raise DataError(f"{path}: x_train/y_train/x_test/y_test have inconsistent shapes")
    if xte.shape[1:] != xtr.shape[1:] or ytr.shape[0] < 1:
        raise DataError(f"{path}: the test split's feature shape differs or the training split is empty")
    return SiteData(xtr.astype(np.float32), ytr.astype(np.int64), xte.astype(np.float32), yte.astype(np.int64))


def write_partition_sites(
    config: Any,
    out_dir: str | os.PathLike[str],
    *,
    names: list[str] | None = None,
    budget_cap: float = math.inf,
    require_dp: bool = False,
    max_colluders: int | None = None,
    roster: str = "roster.toml",
    allow_unnoised_metrics: bool = False,
) -> list[Path]:
    """One site per simulated client of ``config`` (a :class:`~secure_fl.config.RunConfig`):
    ``data/<name>.npz`` with the client's exact training and test split
    (:func:`secure_fl.data.load_federated_data`, pooled standardisation included) and
    ``<name>.toml`` naming it, with ``keys_dir`` = ``keys/<name>`` and the roster file.

    For tests and pilots that compare a Flower run with the simulation of the same
    partition (the global test set stays with the caller). ``names`` defaults to the
    simulator's client names. Build the roster afterwards from the sites' identity keys.
    """
    from secure_fl.data import load_federated_data

    root = Path(out_dir)
    (root / "data").mkdir(parents=True, exist_ok=True)
    fed = load_federated_data(config)
    names = names or [f"client-{i}" for i in range(len(fed.clients))]
    if len(names) != len(fed.clients):
        raise ConfigError(f"{len(names)} names for {len(fed.clients)} clients", field="clients.num")
    colluders = config.threat.max_colluders if max_colluders is None else max_colluders
    cap = "inf" if math.isinf(budget_cap) else repr(float(budget_cap))
    paths = []
    for name, client in zip(names, fed.clients, strict=True):
        np.savez(root / "data" / f"{name}.npz", x_train=client.x_train, y_train=client.y_train,
                 x_test=client.x_test, y_test=client.y_test)
        path = root / f"{name}.toml"
        path.write_text(
            f'[site]\nname = "{name}"\ndata = "data/{name}.npz"\nkeys_dir = "keys/{name}"\n'
            f"budget_cap = {cap}\nrequire_dp = {'true' if require_dp else 'false'}\n"
            f'max_colluders = {colluders}\nroster = "{roster}"\n'
            f"allow_unnoised_metrics = {'true' if allow_unnoised_metrics else 'false'}\n",
            encoding="utf-8",
        )
        paths.append(path)
    return paths


# -- privacy budget --------------------------------------------------------------------------
class SiteBudget:
    """The site's own epsilon ledger (``keys_dir/budget.jsonl``), persistent across runs.

    Each line is ``{"run", "version", "session", "event"}``: one release of this site's
    masked (noised) input, charged when it leaves the site with the worst case that can
    still complete.

    Charge-once rule (server crash and resume). A charge is keyed by the release it
    pays for, ``(run id, aggregation version, session id)``. The same release is never
    charged twice: a SuperNode that re-processes a message (its state write was lost
    after the charge) finds the key in the ledger and does not charge again
    (:meth:`charge` returns ``False``). A resumed server keeps the run id and continues
    after its last completed aggregation, so completed aggregations are never re-run.
    An aggregation that was *interrupted* keeps its charge (conservative: the masked
    input left the site, and the server may have unmasked the sum before dying). When
    the resumed server re-runs that aggregation version it opens a new session with
    fresh masks and fresh noise: that is a second release of the site's data, and it
    is charged again. Keying by ``(run, version)`` alone would let a server that fakes
    crashes collect any number of independently noised sums of one aggregation while
    each site pays once; averaging them strips the noise (the malicious server of
    docs/threat-model.md replays). A charge without a session id is always recorded.
    """

    def __init__(self, site: SiteConfig, *, delta: float) -> None:
        self.site = site
        self.path = _keys_dir(site) / BUDGET_FILE
        self._budgets = ClientBudgets(delta=delta, caps={site.name: site.budget_cap})
        self._events: list[DPEvent] = []
        self._releases: set[tuple[str, int, str]] = set()
        if self.path.exists():
            for lineno, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    event = decode_event(record["event"])
                except (ValueError, KeyError, TypeError, SecureFLError) as exc:
                    raise PrivacyError(f"{self.path}, line {lineno}: unreadable budget entry ({exc})") from exc
                key = self._release_key(record.get("run"), record.get("version"), record.get("session"))
                if key is not None:
                    self._releases.add(key)
                self._commit(event)

    @staticmethod
    def _release_key(run: object, version: object, session: object) -> tuple[str, int, str] | None:
        if (
            isinstance(run, str)
            and isinstance(version, int)
            and not isinstance(version, bool)
            and isinstance(session, str)
            and session
        ):
            return (run, version, session)
        return None

    def _commit(self, event: DPEvent) -> None:
        if isinstance(event, NonPrivateEvent):
            self._events.append(event)
            return
        try:
            self._budgets.charge(self.site.name, event)
        except PrivacyError:
            pass  # an overrun recorded earlier stays recorded; epsilon() reports it
        self._events.append(event)

    def epsilon(self) -> float:
        """Epsilon spent so far at the run's delta (``inf`` after a non-private release)."""
        if any(isinstance(e, NonPrivateEvent) for e in self._events):
            return math.inf
        return self._budgets.epsilon(self.site.name)

    def refusal(self, event: DPEvent) -> str | None:
        """Why joining ``event`` is refused (``None``: the cap allows it)."""
        if isinstance(event, NonPrivateEvent):
            if self.site.require_dp:
                return "this site requires differential privacy (require_dp = true)"
            return None
        after = self._budgets.epsilon_after(self.site.name, event)
        if after > self.site.budget_cap:
            return f"privacy budget cap {self.site.budget_cap:g} would be exceeded (epsilon -> {after:.4g})"
        return None

    def charged(self, *, run: str, version: int, session: str) -> bool:
        """Whether the release ``(run, version, session)`` is already in the ledger."""
        return (run, version, session) in self._releases

    def charge(self, event: DPEvent, *, version: int, run: str, session: str | None = None) -> bool:
        """Charge one release: append ``event`` to the ledger file first (fsync), then to
        the accountant. Returns ``False`` and changes nothing when the release
        ``(run, version, session)`` was already charged (see the class docstring)."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise PrivacyError(f"budget charge: version is an int, got {version!r}")
        if not isinstance(run, str) or not run:
            raise PrivacyError("budget charge: run is a non-empty string")
        key = self._release_key(run, version, session)
        if key is not None and key in self._releases:
            return False
        record: dict[str, Any] = {"run": run, "version": version, "event": encode_event(event)}
        if key is not None:
            record["session"] = session
        line = json.dumps(record)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if key is not None:
            self._releases.add(key)
        self._commit(event)
        return True
