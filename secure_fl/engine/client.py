"""The client-side engine: one site's handling of every engine message.

``ClientEngine(site).handle(kind, envelope, state) -> Envelope`` is the same code for a
simulated client (:mod:`secure_fl.transport.inprocess`) and a Flower SuperNode
(:mod:`secure_fl.transport.flower`). Everything a site keeps between messages lives in
a small :class:`StateStore` (Flower: the SuperNode's ``Context.state``; in-process: a
dict), so a fresh process per message works; a process that lives on (the in-process
transport) additionally keeps a cache of live protocol objects, which changes no result.

Per message kind (:mod:`secure_fl.engine.transport`):

``HELLO``
    Name, role, identity public key, feature shape, number of classes and of training
    examples, and a proof of possession of the identity key over the server's fresh
    challenge (:mod:`secure_fl.hello`). Nothing else about the data leaves.
``PROBE``
    The memory-budget probe (once per run, ``sparsity.kind = "memory_budget"``): the
    initial weights and candidate tensor subsets; the site trains each candidate alone
    on its own data and replies one validation accuracy per candidate
    (:func:`secure_fl.engine.support.probe_accuracies`). These scalars carry no noise:
    the site refuses (``refusal = "rules"``) unless the run configuration allows unnoised
    site metrics (:func:`secure_fl.accounting.unnoised_statistics_allowed`) *and* its
    own rules do (:attr:`SiteRules.allow_unnoised_metrics`).
``SETUP``
    An aggregation's public set-up. With ``train``: the site trains from the global
    model (optionally record-level DP-SGD, :func:`secure_fl.training.train_local_dp`)
    and keeps ``delta = w_local - w_global`` in its state. With ``aggregate``: the site
    checks the set-up against its own rules (:class:`SiteRules`: roster, own key at its
    index, floors, ``require_dp``, ``max_colluders``, the noise provisioning), derives the
    DP mechanism itself (:func:`secure_fl.engine.public.mechanism_for`) and checks the
    planned event against its budget cap, restricts ``delta`` to the public support,
    forms ``u = s(tau) * clip_l2(delta, C)`` (plus the adaptive-clip indicator
    ``kappa (1[|delta| <= C] - 1/2)``), adds its noise share, and starts the protocol
    client (:mod:`secure_fl.engine.roles`).
``PROTOCOL``
    Later SecAgg frames of the running aggregation.
``WITNESS``
    A ledger entry of an aggregation the site survived: checked, countersigned
    (:mod:`secure_fl.witness`); the site charges its budget with the DP event the entry
    records (or charged the worst case already when its update left, see
    :attr:`Site.charge_on_release`).
``EVALUATE``
    Accuracy and loss of a model on the site's own test split (aggregates only).

A refusal (budget, rules) is an envelope with ``refused`` (the reason) and ``refusal``
(``"budget"`` or ``"rules"``); any other failure of a handler becomes ``refusal =
"error"`` with the reason, never a crash of the caller.
"""

from __future__ import annotations

import io
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from audits.events_codec import decode_event, encode_event
from privacy.budget import ClientBudgets
from privacy.clipping import clip_indicator, clip_l2
from privacy.events import DPEvent, NonPrivateEvent
from secure_fl.config import RunConfig, build_config
from secure_fl.data import SiteData
from secure_fl.engine import public
from secure_fl.engine.transport import (
    CKKS_DECRYPT,
    EVALUATE,
    HELLO,
    PROBE,
    PROTOCOL,
    SETUP,
    WITNESS,
    Envelope,
    FieldValue,
)
from secure_fl.errors import PrivacyError, RemoteProtocolError, SecureFLError
from secure_fl.hello import sign_hello
from secure_fl.roster import CohortSetup, Roster, check_setup
from secure_fl.training import LossFn, evaluate, train_local, train_local_dp
from secure_fl.witness import Witness, WitnessRequest

__all__ = [
    "BudgetStore",
    "ClientEngine",
    "DictState",
    "MemoryBudget",
    "Site",
    "SiteData",
    "SiteRules",
    "StateStore",
    "client_vector",
]

MAX_REASON = 1000


# -- what a site keeps ---------------------------------------------------------------------
class StateStore(Protocol):
    """A site's state between messages: named records of public-field values.

    Flower backs it with ``Context.state`` (a ``RecordDict``,
    :func:`secure_fl.transport.flower.codec.put_state`); in-process :class:`DictState`.
    """

    def get(self, key: str) -> dict[str, FieldValue] | None: ...

    def put(self, key: str, values: Mapping[str, FieldValue]) -> None: ...

    def drop(self, key: str) -> None: ...


class DictState:
    """A :class:`StateStore` in a dict (one per simulated site)."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, FieldValue]] = {}

    def get(self, key: str) -> dict[str, FieldValue] | None:
        rec = self._records.get(key)
        return dict(rec) if rec is not None else None

    def put(self, key: str, values: Mapping[str, FieldValue]) -> None:
        self._records[key] = dict(values)

    def drop(self, key: str) -> None:
        self._records.pop(key, None)


class BudgetStore(Protocol):
    """A site's own privacy budget (its epsilon ledger)."""

    def refusal(self, event: DPEvent) -> str | None:
        """Why joining a release of ``event`` is refused (``None``: the cap allows it)."""
        ...

    def charge(self, event: DPEvent, *, version: int, run: str) -> None: ...


class MemoryBudget:
    """An in-memory :class:`BudgetStore` (simulated sites): cap at the run's delta."""

    def __init__(self, *, cap: float, delta: float, name: str) -> None:
        self.cap = cap
        self.name = name
        self._budgets = ClientBudgets(delta=delta, caps={name: cap})

    def refusal(self, event: DPEvent) -> str | None:
        if isinstance(event, NonPrivateEvent) or not math.isfinite(self.cap):
            return None
        if self._budgets.would_exceed(self.name, event):
            after = self._budgets.epsilon_after(self.name, event)
            return f"budget cap {self.cap:.4g} would be exceeded (epsilon -> {after:.4g})"
        return None

    def charge(self, event: DPEvent, *, version: int, run: str) -> None:
        if isinstance(event, NonPrivateEvent):
            return
        try:  # the noise is already in the released sum: charge it, even past the cap
            self._budgets.charge(self.name, event)
        except PrivacyError:
            pass

    def epsilon(self) -> float:
        return float(self._budgets.epsilon(self.name))


@dataclass(frozen=True)
class SiteRules:
    """The site's own rules for any set-up it joins (the server cannot lower them).

    ``roster``: the federation roster (``None`` only in simulation, where the composition
    built every identity: then only the site's own key at its index is checked);
    ``require_dp``: refuse any aggregation without client-level DP; ``max_colluders``:
    colluders the site assumes (the larger of this and the run's counts); floors on the
    SecAgg cohort size, threshold and neighbours; ``allow_unnoised_metrics``: answer the
    memory-budget probe (validation accuracies without noise, outside any epsilon) when
    the run asks for it. A deployed site sets it in its ``site.toml`` (default ``false``);
    a simulated site follows the run configuration (the simulation is one party).
    """

    roster: Roster | None = None
    budget_cap: float = math.inf
    require_dp: bool = False
    max_colluders: int = 0
    min_cohort: int = 2
    min_threshold: int = 1
    min_neighbors: int = 1
    key_holder: bytes | None = None  # the CKKS key holder identity the site pins
    allow_unnoised_metrics: bool = False


@dataclass
class Site:
    """One site: its name, identity key, data, rules and budget store.

    ``model`` is the module local training runs on (one instance per process is enough:
    a site sets the global weights before each use); ``global_test`` is a held-out set
    the simulation evaluates on (``EVALUATE`` with ``split = "global"``).
    ``charge_on_release``: charge the worst case that can complete when the update
    leaves (a deployed site that may be cut off before learning who survived); otherwise
    charge the event the countersigned ledger entry records.
    """

    name: str
    identity_key: Ed25519PrivateKey
    data: SiteData
    rules: SiteRules
    budget: BudgetStore
    model: nn.Module
    loss_fn: LossFn | None = None
    global_test: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None
    charge_on_release: bool = False
    role: str = "client"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def public_key(self) -> bytes:
        return self.identity_key.public_key().public_bytes_raw()


# -- the privacy pipeline of one update ---------------------------------------------------------
def client_vector(delta: npt.ArrayLike, *, clip: float, weight: float, kappa: float | None) -> npt.NDArray[np.float64]:
    """``u = w * clip_l2(delta, C)``, followed by ``kappa (1[|delta| <= C] - 1/2)`` under
    adaptive clipping (``kappa`` not ``None``; :mod:`secure_fl.clip_control`). ``clip <= 0``
    announces no clipping (plain FedAvg without DP: ``u = w * delta``)."""
    if clip <= 0:
        return weight * np.asarray(delta, dtype=np.float64)
    clipped, norm = clip_l2(delta, max_norm=clip)
    u = weight * clipped
    if kappa is None:
        return u
    return np.concatenate([u, [kappa * clip_indicator(norm, clip=clip)]])


def _array_bytes(a: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _bytes_array(b: FieldValue | None) -> npt.NDArray[Any]:
    if not isinstance(b, bytes):
        raise RemoteProtocolError("the site's stored update is missing")
    out: npt.NDArray[Any] = np.load(io.BytesIO(b), allow_pickle=False)
    return out


UPDATE_KEY = "update"
WITNESS_KEY = "witness"
LOCAL_KEY = "local_layers"


def _local_keys(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    prefixes = tuple(f"{n}." for n in names)
    return [k for k in model.state_dict() if names and k.startswith(prefixes)]


class ClientEngine:
    """The client-side engine of one site (see the module docstring)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self._configs: dict[str, RunConfig] = {}
        self._live: dict[str, Any] = {}  # per-process cache of live protocol objects
        self._local_keys = _local_keys(site.model)
        # A site's local layers start from the model's initial values (kept once per site:
        # the module is shared and later holds other sites' layers).
        self._initial_local = site.extra.setdefault(
            "initial_local",
            {k: v.detach().clone() for k, v in site.model.state_dict().items() if k in self._local_keys},
        )

    # -- dispatch ------------------------------------------------------------------------
    def handle(self, kind: str, envelope: Envelope, state: StateStore) -> Envelope:
        handlers: dict[str, Callable[[Envelope, StateStore], Envelope]] = {
            HELLO: self.hello,
            PROBE: self.probe,
            SETUP: self.setup,
            PROTOCOL: self.protocol,
            WITNESS: self.witness,
            EVALUATE: self.evaluate,
        }
        handler = handlers.get(kind)
        if handler is None:
            return self._refuse(f"a {self.site.role} does not handle {kind!r} messages", "error")
        try:
            return handler(envelope, state)
        except _Refusal as refusal:
            return self._refuse(refusal.reason, refusal.kind)
        except (SecureFLError, ValueError, TypeError, KeyError) as exc:
            return self._refuse(f"{type(exc).__name__}: {exc}", "error")

    def _refuse(self, reason: str, kind: str) -> Envelope:
        return Envelope(fields={"refused": reason[:MAX_REASON], "refusal": kind, "site": self.site.name})

    def _config(self, env: Envelope) -> RunConfig:
        text = env.get("config_toml", str)
        cached = self._configs.get(text)
        if cached is None:
            try:
                cached = build_config(tomllib.loads(text))
            except tomllib.TOMLDecodeError as exc:
                raise RemoteProtocolError(f"unreadable run configuration: {exc}") from exc
            self._configs.clear()
            self._configs[text] = cached
        return cached

    # -- hello -----------------------------------------------------------------------------
    def hello(self, env: Envelope, state: StateStore) -> Envelope:
        site = self.site
        return Envelope(
            fields={
                "site": site.name,
                "role": site.role,
                "identity_key": site.public_key,
                "signature": sign_hello(site.identity_key, env.get("challenge", bytes), name=site.name),
                "feature_shape": list(site.data.feature_shape),
                "num_classes": site.data.num_classes,
                "num_train": site.data.num_train,
            }
        )

    # -- the memory-budget probe -------------------------------------------------------------
    def probe(self, env: Envelope, state: StateStore) -> Envelope:
        from secure_fl.accounting import unnoised_statistics_allowed
        from secure_fl.engine.support import probe_accuracies
        from secure_fl.memory_budget import tensor_layout
        from secure_fl.models import set_flat

        site = self.site
        config = self._config(env)
        if not unnoised_statistics_allowed(config):
            raise _Refusal("the run does not allow unnoised site metrics (dp.allow_unnoised_site_metrics = false "
                           "under DP): the probe's accuracies would carry no noise", "rules")
        if not site.rules.allow_unnoised_metrics:
            raise _Refusal(f"site {site.name} does not report unnoised metrics (allow_unnoised_metrics = false "
                           "in its own rules)", "rules")
        weights = env.arrays.get("weights")
        member = env.arrays.get("candidates")
        if weights is None or weights.ndim != 1:
            raise RemoteProtocolError("the probe carries no model")
        layout = tensor_layout(site.model, site.data.feature_shape)
        names = env.get("tensor_names", list)
        if names != [t.name for t in layout] or weights.size != sum(t.size for t in layout):
            raise RemoteProtocolError(f"the probe's tensors {names} are not this site's model's "
                                      f"{[t.name for t in layout]}")
        if member is None or member.ndim != 2 or member.shape[1] != len(layout) or not np.isin(member, (0, 1)).all():
            raise RemoteProtocolError("the probe's candidates are not a 0/1 matrix of candidates x tensors")
        candidates = [frozenset(int(t) for t in np.flatnonzero(row)) for row in member]
        if not candidates or not all(candidates):
            raise RemoteProtocolError("the probe names an empty candidate subset")
        index = env.get("index", int)
        if index < 0:
            raise RemoteProtocolError(f"probe index must be >= 0, got {index}")
        set_flat(site.model, np.asarray(weights, dtype=np.float32))
        self._load_local(state)
        accs = probe_accuracies(site.model, layout, candidates, site.data, config.train, seed=config.seed + index,
                                loss_fn=site.loss_fn)
        return Envelope(fields={"site": site.name, "probe_accuracy": accs})

    # -- set-up: train and/or join an aggregation -------------------------------------------
    def setup(self, env: Envelope, state: StateStore) -> Envelope:
        config = self._config(env)
        version = env.get("version", int)
        out: dict[str, FieldValue] = {"site": self.site.name}
        if env.fields.get("train") is True:
            if "provisioned" in env.fields:  # refuse before training, not after
                why = self.site.budget.refusal(self._planned(env, config, env.get("n", int))[1])
                if why is not None:
                    raise _Refusal(why, "budget")
            out.update(self._train(env, config, version, state))
        if env.fields.get("aggregate") is not True:
            return Envelope(fields=out)
        reply = self._aggregate(env, config, version, state)
        return Envelope(reply.frames, {**out, **reply.fields}, reply.arrays)

    def _train(self, env: Envelope, config: RunConfig, version: int, state: StateStore) -> dict[str, FieldValue]:
        site = self.site
        weights = env.arrays.get("weights")
        if weights is None or weights.ndim != 1:
            raise RemoteProtocolError("the set-up carries no global model")
        trainable = env.arrays.get("trainable")
        model = site.model
        w_global = np.asarray(weights, dtype=np.float32).copy()
        from secure_fl.models import get_flat, set_flat

        set_flat(model, w_global)
        self._load_local(state)
        record_event: DPEvent | None = None
        data = site.data
        if config.dp.record_level:
            steps, record_event = train_local_dp(
                model,
                data.x_train,
                data.y_train,
                config.train,
                noise_multiplier=config.dp.record_noise_multiplier,
                max_grad_norm=config.dp.record_clip,
                rng=public.client_rng(config, version=version, name=site.name, purpose="dp-sgd"),
                loss_fn=site.loss_fn,
            )
        else:
            seed = public.train_seed(config, version=version, name=site.name)
            steps = train_local(
                model,
                data.x_train,
                data.y_train,
                config.train,
                seed=seed,
                frozen=None if trainable is None else ~np.asarray(trainable, dtype=bool),
                loss_fn=site.loss_fn,
            )
        self._save_local(state)
        delta = get_flat(model) - w_global
        max_train = env.fields.get("max_train")
        by_samples = config.aggregation.weighting == "samples" and config.dp.mechanism == "none"
        base = data.num_train / max_train if by_samples and isinstance(max_train, int) and max_train > 0 else 1.0
        state.put(
            UPDATE_KEY,
            {"delta": _array_bytes(delta.astype(np.float32)), "base_version": env.get("base_version", int), "base_weight": float(base)},
        )
        out: dict[str, FieldValue] = {"samples_processed": int(steps * config.train.batch_size), "ready": True}
        if record_event is not None:
            out["record_event"] = json.dumps(encode_event(record_event))
        return out

    def _load_local(self, state: StateStore) -> None:
        if not self._local_keys:
            return
        rec = state.get(LOCAL_KEY)
        if rec is None:
            self.site.model.load_state_dict(self._initial_local, strict=False)
            return
        self.site.model.load_state_dict(
            {k: torch.from_numpy(_bytes_array(rec[k]).copy()) for k in self._local_keys}, strict=False
        )

    def _save_local(self, state: StateStore) -> None:
        if not self._local_keys:
            return
        current = self.site.model.state_dict()
        state.put(LOCAL_KEY, {k: _array_bytes(current[k].detach().cpu().numpy()) for k in self._local_keys})

    def _check_rules(self, env: Envelope, config: RunConfig, *, keys: list[bytes], index: int, provisioned: int,
                     threshold: int | None) -> None:
        rules = self.site.rules
        c = max(rules.max_colluders, config.threat.max_colluders)
        if not 0 <= index < len(keys) or keys[index] != self.site.public_key:
            raise _Refusal(f"the set-up does not list this site's own key at index {index}", "rules")
        if len(set(keys)) != len(keys):
            raise _Refusal("the set-up lists one identity key twice", "rules")
        if rules.require_dp and config.dp.mechanism == "none":
            raise _Refusal("this site requires differential privacy (require_dp = true)", "rules")
        # The provisioning rule sizes clients' noise shares: it binds only when the noise
        # is distributed (plain runs add none, or central noise at the server).
        distributed = config.dp.mechanism != "none" and config.protocol != "plain"
        if rules.roster is not None:
            try:
                check_setup(
                    rules.roster,
                    CohortSetup(
                        identity_keys=tuple(keys),
                        index=index,
                        threshold=threshold if threshold is not None else max(rules.roster.min_threshold, 2),
                        provisioned=provisioned if distributed else 1,
                    ),
                    own_key=self.site.public_key,
                    max_colluders=c,
                )
            except RemoteProtocolError as exc:
                raise _Refusal(f"site {self.site.name} refuses the set-up: {exc}", "rules") from None
        elif distributed and not 1 <= provisioned <= len(keys):
            raise _Refusal(f"provisioned = {provisioned} noise shares is outside [1, n = {len(keys)}]", "rules")

    def _planned(self, env: Envelope, config: RunConfig, n: int) -> tuple[Any, DPEvent]:
        """The mechanism this site derives from the public set-up, and its planned event."""
        provisioned = env.get("provisioned", int)
        clip = env.get("clip", float)
        kappa_f = env.fields.get("kappa")
        kappa = float(kappa_f) if isinstance(kappa_f, float) and kappa_f > 0 else None
        support = env.arrays.get("support")
        if support is None:
            raise RemoteProtocolError("the set-up carries no public support")
        dim = int(np.asarray(support).size) + (1 if kappa is not None else 0)
        mech_clip = math.sqrt(clip**2 + (kappa or 0.0) ** 2 / 4.0)
        mech = public.mechanism_for(config, protocol=config.protocol, dim=dim, n=n, provisioned=provisioned,
                                    clip=mech_clip)
        return mech, public.planned_event(mech)

    def _aggregate(self, env: Envelope, config: RunConfig, version: int, state: StateStore) -> Envelope:
        from secure_fl.engine.roles import ckks as ckks_role
        from secure_fl.engine.roles import plain as plain_role
        from secure_fl.engine.roles import secagg as secagg_role

        site = self.site
        protocol = env.get("protocol", str)
        if protocol != config.protocol:
            raise RemoteProtocolError("the set-up's protocol differs from the run configuration's")
        keys = env.get("identity_keys", list)
        if not all(isinstance(k, bytes) for k in keys):
            raise RemoteProtocolError("identity_keys must be a list of bytes")
        index = env.get("index", int)
        n = len(keys)
        provisioned = env.get("provisioned", int)
        clip = env.get("clip", float)
        kappa_f = env.fields.get("kappa")
        kappa = float(kappa_f) if isinstance(kappa_f, float) and kappa_f > 0 else None
        support = env.arrays.get("support")
        if support is None:
            raise RemoteProtocolError("the set-up carries no public support")
        support_idx = np.asarray(support, dtype=np.int64)
        threshold = env.get("threshold", int) if protocol == "secagg" else None
        self._check_rules(env, config, keys=keys, index=index, provisioned=provisioned, threshold=threshold)
        mech, planned = self._planned(env, config, n)
        why = site.budget.refusal(planned)
        if why is not None:
            raise _Refusal(why, "budget")
        stored = state.get(UPDATE_KEY)
        if stored is None:
            raise RemoteProtocolError("asked to aggregate, but this site holds no trained update")
        delta = _bytes_array(stored.get("delta"))
        if support_idx.size and (support_idx.min() < 0 or support_idx.max() >= delta.size):
            raise RemoteProtocolError("the public support does not fit the model")
        weight_f = env.get("weight", float)
        if not 0 < weight_f <= 1:
            raise RemoteProtocolError(f"staleness weight must be in (0, 1], got {weight_f}")
        base_weight = float(stored.get("base_weight") or 1.0)  # type: ignore[arg-type]
        weight = base_weight * weight_f
        tau = env.get("staleness", int)
        base_version = stored.get("base_version")
        if isinstance(base_version, int) and env.fields.get("model_version") is not None:
            if env.get("model_version", int) - base_version != tau:
                raise RemoteProtocolError(
                    f"the announced staleness {tau} differs from this site's own "
                    f"({env.get('model_version', int)} - {base_version})"
                )
        u = client_vector(delta[support_idx].astype(np.float64), clip=clip, weight=weight, kappa=kappa)
        state.put(WITNESS_KEY, {**(state.get(WITNESS_KEY) or {"last_index": -1}), "version": version,
                                "session_id": env.get("session_id", bytes).hex()})
        rng = public.client_rng(config, version=version, name=site.name, purpose="noise")
        worst = self._worst_case(mech, config, threshold, n)
        run_tag = str(env.fields.get("run", ""))

        def released() -> None:
            if site.charge_on_release:
                site.budget.charge(worst, version=version, run=run_tag)

        if protocol == "plain":
            reply = plain_role.client_upload(u, weight=weight)
            released()
        elif protocol == "ckks":
            reply = ckks_role.client_upload(env, u, weight=weight, mech=mech, site=site, rng=rng, version=version)
            released()
        else:
            vector = secagg_role.client_encode(u, weight=weight, mech=mech, n=n, clip=clip, bits=config.secagg.bits,
                                               round_seed=env.get("round_seed", bytes), rng=rng)
            session = secagg_role.SecAggSession(
                state, site.identity_key,
                floors=(site.rules.min_cohort, site.rules.min_threshold, site.rules.min_neighbors),
                max_colluders=max(site.rules.max_colluders, config.threat.max_colluders), live=self._live,
            )
            frames, replies = session.start(
                secagg_role.round_config_from(env), index=index, vector=vector,
                seed=public.client_seed(config, version=version, name=site.name, purpose="secagg"),
                first_frames=env.frames,
                extra={"charge_event": json.dumps(encode_event(worst)), "charged": False, "run": run_tag},
            )
            self._charge_if_masked(state, replies)
            reply = Envelope(frames=tuple(frames))
        state.drop(UPDATE_KEY)  # the update left (or was encoded): the clear delta is gone
        return reply

    def _worst_case(self, mech: Any, config: RunConfig, threshold: int | None, n: int) -> DPEvent:
        """The smallest noise a release this site joins can carry: ``t`` survivors (the
        protocol releases nothing with fewer), ``c`` of them colluders."""
        if mech is None:
            return NonPrivateEvent()
        c = max(self.site.rules.max_colluders, config.threat.max_colluders)
        if hasattr(mech, "threshold") and threshold is not None:
            return mech.event(num_survivors=max(1, min(threshold - c, n)))  # type: ignore[no-any-return]
        return public.planned_event(mech)

    def _charge_if_masked(self, state: StateStore, replies: list[Any]) -> None:
        from secure_fl.engine.roles.secagg import SESSION_KEY, is_masked_input

        if not self.site.charge_on_release or not any(is_masked_input(r) for r in replies):
            return
        values = state.get(SESSION_KEY)
        if values is None or values.get("charged") is True:
            return
        event = decode_event(json.loads(str(values["charge_event"])))
        self.site.budget.charge(event, version=int(values["round_number"]), run=str(values.get("run", "")))  # type: ignore[arg-type]
        state.put(SESSION_KEY, {**values, "charged": True})

    # -- later protocol frames ------------------------------------------------------------------
    def protocol(self, env: Envelope, state: StateStore) -> Envelope:
        from secure_fl.engine.roles import secagg as secagg_role

        site = self.site
        session = secagg_role.SecAggSession(
            state, site.identity_key,
            floors=(site.rules.min_cohort, site.rules.min_threshold, site.rules.min_neighbors),
            max_colluders=site.rules.max_colluders, live=self._live,
        )
        values = session.values()
        if values is not None:
            session.max_colluders = max(site.rules.max_colluders, int(values.get("max_colluders", 0)))  # type: ignore[arg-type]
        frames, replies = session.step(env.frames)
        self._charge_if_masked(state, replies)
        return Envelope(frames=tuple(frames))

    # -- countersigning ---------------------------------------------------------------------------
    def witness(self, env: Envelope, state: StateStore) -> Envelope:
        site = self.site
        try:
            body = json.loads(env.get("body", str))
        except json.JSONDecodeError as exc:
            raise RemoteProtocolError(f"unreadable ledger entry: {exc}") from exc
        index = env.get("index", int)
        request = WitnessRequest(index, env.get("prev_hash", str), body)
        values = state.get(WITNESS_KEY)
        if not values or "version" not in values:
            raise RemoteProtocolError("asked to countersign, but this site took part in no aggregation")
        if index < 0:  # an in-memory run keeps no ledger: only learn what was released
            if not isinstance(body, dict) or body.get("version") != values["version"]:
                raise RemoteProtocolError("the release notice is not about this site's aggregation")
            self._charge_released(body, env)
            return Envelope(fields={"site": site.name})
        witness = Witness(site.identity_key, member=site.name)
        last = int(values.get("last_index", -1))  # type: ignore[arg-type]
        if last >= 0:
            witness.last = (last, "")
        signature = witness.countersign(request, version=int(values["version"]),  # type: ignore[arg-type]
                                        session_id=str(values["session_id"]))
        state.put(WITNESS_KEY, {"last_index": request.index})  # one signature per aggregation
        self._charge_released(body, env)
        return Envelope(fields={"site": site.name, "countersignature": signature})

    def _charge_released(self, body: Mapping[str, Any], env: Envelope) -> None:
        """Charge the event the entry records (against the server; for plain, whose server
        sees every update, the released-model event its cap bounds)."""
        if self.site.charge_on_release or body.get("aborted"):
            return
        key = "dp_event_released" if body.get("protocol") == "plain" else "dp_event"
        encoded = body.get(key)
        if encoded is not None:
            self.site.budget.charge(decode_event(encoded), version=int(body["version"]), run=str(env.fields.get("run", "")))

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, env: Envelope, state: StateStore) -> Envelope:
        from secure_fl.models import set_flat

        site = self.site
        weights = env.arrays.get("weights")
        if weights is None or weights.ndim != 1:
            raise RemoteProtocolError("the evaluation request carries no model")
        set_flat(site.model, np.asarray(weights, dtype=np.float32))
        self._load_local(state)
        split = env.fields.get("split", "local")
        if split == "global" and site.global_test is not None:
            x, y = site.global_test
        else:
            x, y = site.data.x_test, site.data.y_test
        result = evaluate(site.model, x, y, loss_fn=site.loss_fn)
        return Envelope(fields={
            "site": site.name,
            "eval_accuracy": float(result.accuracy),
            "eval_loss": float(result.loss),
            "eval_samples": int(result.num_samples),
        })


class _Refusal(Exception):
    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


_ = CKKS_DECRYPT  # the key holder's kind (secure_fl.engine.roles.ckks.KeyHolderEngine)
