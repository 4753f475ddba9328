"""The Flower ClientApp: a site's SuperNode handing every message to the client engine.

One SuperNode per party. The ClientApp builds the party's :class:`~secure_fl.engine.client.Site`
and calls :meth:`ClientEngine.handle(kind, envelope, state) <secure_fl.engine.client.ClientEngine.handle>`
-- the same code a simulated client runs. It holds no protocol or privacy logic: it
maps Flower message types to engine kinds (:mod:`~secure_fl.transport.flower.grid`),
envelopes to ``RecordDict`` (:mod:`~secure_fl.transport.flower.codec`) and the site's
state to ``Context.state`` (:class:`~secure_fl.transport.flower.codec.RecordState`, kept
at the site, never sent). Flower may start a fresh ClientApp process per message;
everything between messages is in that state.

How a SuperNode finds its party (``--node-config``):

``site-config="/path/site.toml"`` (a deployment, :mod:`~secure_fl.transport.flower.site`)
    The site's name, data, identity key, roster, budget cap, ``require_dp`` and
    ``allow_unnoised_metrics`` (the memory-budget probe); the budget ledger is the
    site's own file. Add ``role="key-holder"`` to host the CKKS
    key holder instead of a client: it holds the CKKS secret key and decrypts only an
    aggregate that enough clients' signed receipts vouch for. It runs as its **own
    SuperNode** because the server must never hold the secret key: a key holder in the
    ServerApp process would let a curious server decrypt any single client's
    ciphertext. Its site.toml needs ``name`` and ``keys_dir`` (``data`` is not read).
``partition-id`` / ``num-partitions`` (Flower's simulation runtime; research mode)
    Set by ``flwr run`` for each virtual SuperNode. The party is the simulated client
    ``<partition-id>`` ("0", "1", ...) of the run configuration's data set (the same partition
    the in-process simulator builds, with ``clients.num = num-partitions``). Its
    identity key is derived from the run's seed and its name, so every virtual client
    and the server can compute every key: there is no roster and no trust boundary,
    only the same messages and the same engine (see ``docs/deployment.md``); like a
    simulated client it answers the memory-budget probe whenever the run allows it.

The model architecture comes from the run configuration (Flower's ``run_config``, the
same ``config``/``overrides``/``num-classes`` the ServerApp reads); the set-up each
message carries is what the site checks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from logging import WARNING
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from audits.events_codec import decode_event, encode_event
from privacy.budget import ClientBudgets
from privacy.events import DPEvent, NonPrivateEvent
from secure_fl.config import RunConfig, load_config
from secure_fl.engine.client import ClientEngine, Site, SiteData, SiteRules, StateStore
from secure_fl.engine.transport import Envelope
from secure_fl.errors import ConfigError, PrivacyError, SecureFLError
from secure_fl.roster import load_roster
from secure_fl.transport.flower.codec import RecordState, pack, unpack
from secure_fl.transport.flower.grid import error_envelope, kind_of
from secure_fl.transport.flower.settings import DeploymentSettings
from secure_fl.transport.flower.site import (
    SiteBudget,
    SiteConfig,
    load_identity_key,
    load_site_config,
    load_site_data,
)

__all__ = ["KEY_HOLDER", "ROLE_KEY", "SITE_CONFIG_KEY", "app", "build_site", "make_client_app", "research_identity"]

SITE_CONFIG_KEY = "site-config"
ROLE_KEY = "role"
KEY_HOLDER = "key-holder"
MAX_REASON = 1000


# -- the party behind this SuperNode ------------------------------------------------------------
def _run_config(context: Context, base_dir: Path | None) -> tuple[RunConfig, DeploymentSettings]:
    settings = DeploymentSettings.from_run_config(dict(context.run_config), base_dir=base_dir)
    overrides = list(settings.overrides)
    if "num-partitions" in context.node_config and SITE_CONFIG_KEY not in context.node_config:
        overrides.append(f"clients.num={int(context.node_config['num-partitions'])}")  # simulation runtime
    return load_config(settings.config_file(), overrides), settings


def _model(config: RunConfig, shape: tuple[int, ...], num_classes: int) -> Any:
    import torch

    from secure_fl.models import build_model

    torch.manual_seed(config.seed)
    return build_model(config.model, shape, num_classes)


def build_site(site_cfg: SiteConfig, config: RunConfig, *, num_classes: int, role: str = "client") -> Site:
    """The engine's :class:`Site` of a deployed SuperNode, from its ``site.toml``.

    Fails closed without a roster (:func:`secure_fl.roster.load_roster`). The budget is
    the site's own ledger file, charged with the worst case that can complete when its
    update leaves (it may be cut off before learning who survived).
    """
    roster = load_roster(site_cfg.roster)
    data = SiteData(*_empty_data()) if role == KEY_HOLDER else load_site_data(site_cfg)
    rules = SiteRules(
        roster=roster,
        budget_cap=site_cfg.budget_cap,
        require_dp=site_cfg.require_dp,
        max_colluders=site_cfg.max_colluders,
        min_cohort=roster.min_cohort,
        min_threshold=roster.min_threshold,
        key_holder=roster.ckks_key_holder,
        allow_unnoised_metrics=site_cfg.allow_unnoised_metrics,
    )
    shape = data.feature_shape or (1,)
    return Site(
        name=site_cfg.name,
        identity_key=load_identity_key(site_cfg),
        data=data,
        rules=rules,
        budget=SiteLedger(SiteBudget(site_cfg, delta=config.dp.delta)),
        model=_model(config, shape, num_classes),
        charge_on_release=True,
        role=role,
    )


class SiteLedger:
    """The engine's :class:`~secure_fl.engine.client.BudgetStore` over a site's own budget
    ledger file (:class:`~secure_fl.transport.flower.site.SiteBudget`)."""

    def __init__(self, budget: SiteBudget) -> None:
        self.budget = budget

    def refusal(self, event: DPEvent) -> str | None:
        return self.budget.refusal(event)

    def charge(self, event: DPEvent, *, version: int, run: str) -> None:
        self.budget.charge(event, version=version, run=run)


def _empty_data() -> tuple[Any, Any, Any, Any]:
    import numpy as np

    x = np.zeros((0, 1), dtype=np.float32)
    y = np.zeros(0, dtype=np.int64)
    return x, y, x, y


def research_identity(config: RunConfig, name: str) -> Ed25519PrivateKey:
    """A virtual client's identity key under the simulation runtime: derived from the
    run's seed and the name. Research only: anyone who knows the seed has every key."""
    seed = hashlib.sha256(f"secure-fl/research-identity/{config.seed}/{name}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


class StateBudget:
    """A virtual client's budget kept in its ``Context.state`` (the simulation runtime
    keeps it per virtual SuperNode for the run)."""

    KEY = "secure_fl.budget"

    def __init__(self, store: StateStore, *, name: str, cap: float, delta: float) -> None:
        self.store, self.name, self.cap = store, name, cap
        self._budgets = ClientBudgets(delta=delta, caps={name: cap})
        rec = store.get(self.KEY) or {}
        for text in rec.get("events", []) or []:  # type: ignore[union-attr]
            self._commit(decode_event(json.loads(str(text))))

    def _commit(self, event: DPEvent) -> None:
        if isinstance(event, NonPrivateEvent):
            return
        try:
            self._budgets.charge(self.name, event)
        except PrivacyError:
            pass  # released already: recorded past the cap

    def refusal(self, event: DPEvent) -> str | None:
        if isinstance(event, NonPrivateEvent) or math.isinf(self.cap):
            return None
        after = self._budgets.epsilon_after(self.name, event)
        return None if after <= self.cap else f"budget cap {self.cap:.4g} would be exceeded (epsilon -> {after:.4g})"

    def charge(self, event: DPEvent, *, version: int, run: str) -> None:
        rec = self.store.get(self.KEY) or {}
        events = [str(e) for e in (rec.get("events", []) or [])]  # type: ignore[union-attr]
        events.append(json.dumps(encode_event(event)))
        self.store.put(self.KEY, {"events": events})
        self._commit(event)


_SIM_DATA: dict[tuple[str, int], Any] = {}


def simulated_site(context: Context, config: RunConfig, *, num_classes: int, store: StateStore) -> Site:
    """The engine's :class:`Site` of a virtual SuperNode (research mode, see the module docstring)."""
    from secure_fl.config import config_hash
    from secure_fl.data import load_federated_data

    pid, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    if config.clients.num != num:  # pragma: no cover - _run_config sets it
        raise ConfigError(f"clients.num = {config.clients.num} but num-partitions = {num}", field="clients.num")
    key = (config_hash(config), num)
    if key not in _SIM_DATA:  # one Ray actor serves many virtual nodes: load the data set once
        _SIM_DATA.clear()
        _SIM_DATA[key] = load_federated_data(config)
    fed = _SIM_DATA[key]
    client = fed.clients[pid]
    name = str(pid)  # as the in-process simulator names its clients
    return Site(
        name=name,
        identity_key=research_identity(config, name),
        data=client,
        rules=SiteRules(roster=None, max_colluders=config.threat.max_colluders, allow_unnoised_metrics=True),
        budget=StateBudget(store, name=name, cap=math.inf, delta=config.dp.delta),
        model=_model(config, fed.feature_shape, num_classes),
        global_test=(fed.x_test, fed.y_test),
    )


def _site_config(context: Context) -> SiteConfig | None:
    path = context.node_config.get(SITE_CONFIG_KEY)
    if isinstance(path, str) and path:
        return load_site_config(path)
    if "partition-id" in context.node_config:
        return None  # the simulation runtime
    raise ConfigError(
        "start the SuperNode with --node-config 'site-config=\"/path/to/site.toml\"' "
        "(add role=\"key-holder\" for the CKKS key holder)",
        field=SITE_CONFIG_KEY,
    )


def _engine(context: Context, base_dir: Path | None, store: StateStore) -> tuple[str, Any]:
    config, settings = _run_config(context, base_dir)
    site_cfg = _site_config(context)
    role = str(context.node_config.get(ROLE_KEY, "client"))
    if role not in ("client", KEY_HOLDER):
        raise ConfigError(f"must be \"client\" or \"{KEY_HOLDER}\", got {role!r}", field=ROLE_KEY)
    if site_cfg is None:
        site = simulated_site(context, config, num_classes=settings.num_classes, store=store)
    else:
        site = build_site(site_cfg, config, num_classes=settings.num_classes, role=role)
    if role == KEY_HOLDER:
        if site_cfg is None:
            raise ConfigError("the key holder runs on a SuperNode with a site-config", field=ROLE_KEY)
        return site.name, FlowerKeyHolder(site_cfg, site)
    return site.name, ClientEngine(site)


class FlowerKeyHolder:
    """The engine's :class:`~secure_fl.engine.roles.ckks.KeyHolderEngine` on a SuperNode.

    Flower starts a fresh process per message, and the secret key of an aggregation is
    made at its ``SETUP`` and used once at its ``CKKS_DECRYPT``. Between the two it is
    kept at the key holder's site only: the secret context in
    ``keys_dir/ckks-<version>.secret`` (0600, :meth:`crypto.ckks.KeyHolder.save_secret`)
    and its session id in ``Context.state``. Decrypting deletes both, so each key still
    decrypts once; a newer set-up deletes any older key. ``members`` are the identity keys
    of the key holder's own roster, never a list from the server.
    """

    STATE = "secure_fl.ckks_key"

    def __init__(self, site_cfg: SiteConfig, site: Site) -> None:
        from secure_fl.engine.roles.ckks import KeyHolderEngine

        roster = site.rules.roster
        if roster is None:  # pragma: no cover - build_site always loads one
            raise ConfigError("the key holder needs the federation roster", field="site.roster")
        self.keys_dir = site_cfg.keys_dir
        self.engine = KeyHolderEngine(
            name=site.name, identity_key=site.identity_key, members=[s.identity_key for s in roster.sites],
            min_summands=max(2, roster.min_threshold),  # never decrypt fewer than the roster's floor
        )

    def _path(self, version: int) -> Path:
        return self.keys_dir / f"ckks-{version}.secret"

    def _forget(self, store: StateStore) -> None:
        rec = store.get(self.STATE)
        if rec is not None:
            self._path(int(rec["version"])).unlink(missing_ok=True)  # type: ignore[arg-type]
            store.drop(self.STATE)

    def handle(self, kind: str, env: Envelope, store: StateStore) -> Envelope:
        from crypto.ckks import CkksParams, KeyHolder
        from secure_fl.engine.transport import CKKS_DECRYPT, SETUP

        if kind == CKKS_DECRYPT:
            rec = store.get(self.STATE)
            version = env.fields.get("version")
            if rec is not None and rec.get("version") == version:
                path = self._path(int(rec["version"]))  # type: ignore[arg-type]
                if path.exists():
                    holder = KeyHolder.load_secret(
                        path, CkksParams(poly_modulus_degree=int(rec["degree"])),  # type: ignore[arg-type]
                        min_summands=self.engine.min_summands, members=self.engine.members,
                        identity_key=self.engine.identity_key,
                    )
                    holder.session_id = bytes(rec["session_id"])  # type: ignore[arg-type]
                    self.engine._holders = {int(rec["version"]): holder}  # type: ignore[arg-type]
            self._forget(store)  # used once, whatever the outcome
            return self.engine.handle(kind, env, store)
        reply = self.engine.handle(kind, env, store)
        if kind == SETUP and "refused" not in reply.fields:
            self._forget(store)
            version = env.get("version", int)
            holder = self.engine._holders[version]
            holder.save_secret(self._path(version))
            store.put(self.STATE, {"version": version, "session_id": holder.session_id,
                                   "degree": env.get("poly_modulus_degree", int)})
        return reply


# -- Flower glue ----------------------------------------------------------------------------------
def serve(msg: Message, context: Context, *, base_dir: Path | None = None) -> Message:
    """Hand one Flower message to the party's engine; reply with its envelope.

    The engine turns refusals and handler failures into envelopes with ``refused`` and
    ``refusal``; a failure before the engine exists (unreadable site file, missing
    roster) becomes ``refusal = "error"`` here. Either way the site logs the reason and
    the server records it (``excluded`` in metrics and ledger): never silent.
    """
    from flwr.common.logger import log

    mtype = msg.metadata.message_type
    name = "?"
    try:
        kind = kind_of(mtype)
        store = RecordState(context.state)
        name, engine = _engine(context, base_dir, store)
        reply = engine.handle(kind, unpack(msg.content), store)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, never swallowed
        error_id = uuid.uuid4().hex
        expected = isinstance(exc, SecureFLError | ValueError | OSError)
        log(WARNING, "secure-fl site %s: %s failed (error id %s): %s: %s", name, mtype, error_id,
            type(exc).__name__, exc, exc_info=None if expected else exc)
        reply = Envelope(fields={**error_envelope(f"{type(exc).__name__}: {exc}"[:MAX_REASON]).fields,
                                 "error_id": error_id})
    else:
        why = reply.fields.get("refused")
        if why is not None:
            log(WARNING, "secure-fl site %s: %s refused: %s", name, mtype, why)
    return Message(pack(frames=reply.frames, fields=reply.fields, arrays=reply.arrays), reply_to=msg)


def make_client_app(*, base_dir: str | os.PathLike[str] | None = None) -> ClientApp:
    """A ClientApp whose relative run ``config`` path resolves against ``base_dir`` (the
    Flower app's directory, as for :func:`~secure_fl.transport.flower.server_app.make_server_app`)."""
    client_app = ClientApp()
    base = Path(base_dir).resolve() if base_dir is not None else None

    def handler(msg: Message, context: Context) -> Message:
        return serve(msg, context, base_dir=base)

    client_app.query("secure_fl_hello")(handler)
    client_app.query("secure_fl_protocol")(handler)
    client_app.query("secure_fl_witness")(handler)
    client_app.query("secure_fl_ckks_decrypt")(handler)
    client_app.train("secure_fl_setup")(handler)
    client_app.train("secure_fl_probe")(handler)
    client_app.evaluate("secure_fl_evaluate")(handler)
    return client_app


app = make_client_app()
"""The ClientApp with run ``config`` paths relative to the SuperNode's working directory."""
