"""The Flower ClientApp of a site: local training, clipping, distributed DP, masking.

One SuperNode per site, started with ``--node-config 'site-config="site.toml"'``
(:mod:`~secure_fl.transport.flower.site`). Three message types (Flower runs a fresh
ClientApp process for each message, so everything between messages lives in
``Context.state``, which the SuperNode keeps at the site):

``query.secure_fl_hello``
    Reply with the site's name, its identity *public* key, feature shape, number of
    classes and of training examples. Nothing else about the data leaves.
``train.secure_fl_setup``
    The signed-key cohort set-up (:class:`~crypto.secagg.messages.RoundConfig` fields,
    this site's index, public round seed, public staleness weight, resolved run
    configuration), the global model and the ``RoundStart`` frame. The site checks the
    set-up (against its roster: its own key at its index, every member, n, t, the noise
    provisioning; the DP parameters it can re-derive; its budget cap against the worst
    case that can complete), evaluates the incoming
    model on its local test split, trains, forms ``u = w * clip_l2(delta, C)``, encodes it
    with the distributed discrete Gaussian / Skellam mechanism (or fixed point with a
    secret weight coordinate without DP), starts a :class:`~crypto.secagg.SecAggClient`
    and answers ``AdvertiseKeys``.
``query.secure_fl_secagg``
    Later protocol frames, fed to the same client; the replies go back as frames.
``query.secure_fl_witness``
    The ledger entry of the aggregation the site survived: the site checks it (version,
    session, its own name among the survivors), recomputes its hash and countersigns it
    with its identity key (:mod:`secure_fl.witness`).

Between messages the client is *replayed*: the state keeps the round's secret inputs
(the encoded noisy vector, a private 32-byte RNG seed) and the server frames received so
far; a fresh process rebuilds the state machine from them and feeds the frames again.
The client is deterministic in (inputs, seed, frames), so the replay reproduces exactly
the state the previous process ended in (the replayed replies were already sent and are
discarded). The secrets are dropped once the round is over.
"""

from __future__ import annotations

import os
import secrets
import tomllib
import uuid
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from audits.events_codec import decode_event, encode_event
from crypto.fixedpoint import encode as fixed_encode
from crypto.fixedpoint import max_scale
from crypto.prg import Csprng
from crypto.secagg import (
    MaskedInput,
    RoundConfig,
    SecAggClient,
    Stage,
    UnmaskRequest,
    UplinkMessage,
    decode,
    encode,
)
from privacy.clipping import clip_l2
from privacy.events import DPEvent, NonPrivateEvent
from secure_fl.config import RunConfig, build_config
from secure_fl.errors import (
    ConfigError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SecureFLError,
)
from secure_fl.hello import sign_hello
from secure_fl.roster import load_roster
from secure_fl.transport.flower.codec import (
    Envelope,
    FieldValue,
    drop_state,
    get_state,
    pack,
    put_state,
    unpack,
)
from secure_fl.transport.flower.site import (
    SiteBudget,
    SiteConfig,
    check_site_setup,
    load_identity_key,
    load_site_config,
    load_site_data,
)
from secure_fl.witness import WitnessRequest, remember_round, site_countersign

__all__ = [
    "HELLO",
    "SECAGG",
    "SETUP",
    "WITNESS",
    "app",
    "handle_evaluate",
    "handle_hello",
    "handle_secagg",
    "handle_setup",
    "handle_witness",
    "mechanism_for",
    "start_round",
]

HELLO = "query.secure_fl_hello"
WITNESS = "query.secure_fl_witness"
SETUP = "train.secure_fl_setup"
SECAGG = "query.secure_fl_secagg"
STATE_KEY = "secure_fl.secagg"
SITE_CONFIG_KEY = "site-config"
MAX_REASON = 1000
"""Characters of a refusal reason sent to the server (the full error stays in the site's log)."""


# -- shared with the server: parameters both sides derive from the public set-up ------------
def round_config_from(env: Envelope) -> RoundConfig:
    """The cohort set-up (:class:`RoundConfig`) carried in a set-up message's fields."""
    neighbors = env.get("neighbors", int)
    keys = env.get("identity_keys", list)
    if not all(isinstance(k, bytes) for k in keys):
        raise RemoteProtocolError("identity_keys must be a list of bytes")
    try:
        return RoundConfig(
            session_id=env.get("session_id", bytes),
            round_number=env.get("round_number", int),
            bits=env.get("bits", int),
            length=env.get("length", int),
            threshold=env.get("threshold", int),
            identity_keys=tuple(keys),
            graph_seed=env.get("graph_seed", bytes),
            neighbors=None if neighbors < 0 else neighbors,
        )
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"invalid cohort set-up: {exc}") from exc


def round_config_fields(config: RoundConfig) -> dict[str, FieldValue]:
    """The inverse of :func:`round_config_from`."""
    return {
        "session_id": config.session_id,
        "round_number": config.round_number,
        "bits": config.bits,
        "length": config.length,
        "threshold": config.threshold,
        "identity_keys": list(config.identity_keys),
        "graph_seed": config.graph_seed,
        "neighbors": -1 if config.neighbors is None else config.neighbors,
    }


def mechanism_for(config: RunConfig, *, dim: int, num_clients: int, provisioned: int) -> Any:
    """The distributed DP mechanism of a round (``None`` without DP), from public settings."""
    from privacy.mechanisms.distributed import DistributedDiscreteGaussian, DistributedSkellam

    dp = config.dp
    if dp.mechanism == "none":
        return None
    if dp.mechanism not in ("discrete_gaussian", "skellam"):
        raise ConfigError(
            f"{dp.mechanism!r} cannot be summed exactly in Z_2^b; use discrete_gaussian or skellam",
            field="dp.mechanism",
        )
    cls = DistributedDiscreteGaussian if dp.mechanism == "discrete_gaussian" else DistributedSkellam
    return cls.create(
        dim=dim,
        clip=dp.clip,
        bits=config.secagg.bits,
        noise_multiplier=dp.noise_multiplier,
        num_clients=num_clients,
        threshold=provisioned,
    )


# -- the state kept at the site between messages -------------------------------------------------
def start_round(
    state: Any,
    *,
    config: RoundConfig,
    index: int,
    site: SiteConfig,
    vector: np.ndarray[Any, Any],
    first_frames: tuple[bytes, ...],
    budget_event: DPEvent,
    delta: float,
    run: str,
) -> list[bytes]:
    """Start this site's SecAgg client on ``vector`` (already encoded into Z_2^b), feed it
    the server's first frames, keep the replay state in ``state``; return the reply frames."""
    seed = secrets.token_bytes(32)
    values: dict[str, FieldValue] = {
        **round_config_fields(config),
        "index": index,
        "seed": seed,
        "vector": np.ascontiguousarray(vector).tobytes(),
        "dtype": str(np.asarray(vector).dtype),
        "downlinks": [],
        "budget_event": _event_json(budget_event),
        "delta": delta,
        "run": run,
        "charged": False,
    }
    put_state(state, STATE_KEY, values)
    return _step(state, site, first_frames)


def _event_json(event: DPEvent) -> str:
    import json

    return json.dumps(encode_event(event))


def _step(state: Any, site: SiteConfig, frames: tuple[bytes, ...]) -> list[bytes]:
    values = get_state(state, STATE_KEY)
    if values is None:
        raise LocalProtocolError(f"site {site.name}: no secure aggregation round in progress")
    env = Envelope(fields=values)
    config = round_config_from(env)
    index = env.get("index", int)
    vector = np.frombuffer(env.get("vector", bytes), dtype=np.dtype(env.get("dtype", str)))
    client = SecAggClient(
        config,
        index=index,
        identity_key=load_identity_key(site),
        vector=vector,
        rng=Csprng(env.get("seed", bytes)),
    )
    history = [f for f in env.get("downlinks", list) if isinstance(f, bytes)]
    for frame in history:  # replay: reproduces the state the last process ended in
        client.receive(decode(frame))
    replies: list[UplinkMessage] = []
    for frame in frames:
        replies.extend(client.receive(decode(frame)))
    history.extend(frames)
    out: list[bytes] = []
    for reply in replies:
        if isinstance(reply, MaskedInput) and not env.get("charged", bool):
            # The noisy update leaves the site now: charge before sending, worst case.
            import json

            budget = SiteBudget(site, delta=env.get("delta", float))
            event = decode_event(json.loads(env.get("budget_event", str)))
            budget.charge(event, version=config.round_number, run=env.get("run", str))
            values["charged"] = True
        out.append(encode(reply))
    if client.stage in (Stage.DONE, Stage.ABORTED) or any(isinstance(decode(f), UnmaskRequest) for f in frames):
        drop_state(state, STATE_KEY)  # the round is over: forget its secrets
    else:
        values["downlinks"] = history
        put_state(state, STATE_KEY, values)
    return out


# -- handlers (Flower-free signatures: envelope in, envelope out) -----------------------------------
def handle_hello(env: Envelope, site: SiteConfig) -> Envelope:
    """Public site metadata for the cohort set-up, with a proof of possession of the
    identity key over the server's fresh challenge (:mod:`secure_fl.hello`). A site
    without a valid roster refuses to start (fail closed)."""
    load_roster(site.roster)
    data = load_site_data(site)
    key = load_identity_key(site)
    return Envelope(
        fields={
            "site": site.name,
            "identity_key": key.public_key().public_bytes_raw(),
            "signature": sign_hello(key, env.get("challenge", bytes), name=site.name),
            "feature_shape": list(data.feature_shape),
            "num_classes": data.num_classes,
            "num_train": int(data.y_train.shape[0]),
        }
    )


def handle_setup(env: Envelope, site: SiteConfig, state: Any) -> Envelope:
    """Check the set-up, evaluate, train, encode, start the SecAgg client."""
    import torch

    from secure_fl.models import build_model, get_flat, set_flat
    from secure_fl.training import evaluate, train_local

    drop_state(state, STATE_KEY)  # a new round supersedes any unfinished one
    config = round_config_from(env)
    index = env.get("index", int)
    try:
        run_cfg = build_config(tomllib.loads(env.get("config_toml", str)))
    except tomllib.TOMLDecodeError as exc:
        raise RemoteProtocolError(f"unreadable run configuration: {exc}") from exc
    provisioned = env.get("provisioned", int)
    checked = check_site_setup(
        site, identity_keys=config.identity_keys, index=index, threshold=config.threshold,
        provisioned=provisioned, run_max_colluders=run_cfg.threat.max_colluders,
    )
    if run_cfg.protocol != "secagg" or run_cfg.secagg.bits != config.bits:
        raise RemoteProtocolError("the run configuration does not match the cohort set-up")
    weights = env.arrays.get("weights")
    if weights is None or weights.ndim != 1:
        raise RemoteProtocolError("the set-up carries no global model")
    dim = int(weights.size)
    mech = mechanism_for(run_cfg, dim=dim, num_clients=config.n, provisioned=provisioned)
    weight = float(env.get("weight", float))
    if not 0 < weight <= 1:
        raise RemoteProtocolError(f"staleness weight must be in (0, 1], got {weight}")
    if mech is not None:
        if abs(mech.gamma - env.get("gamma", float)) > 1e-12 * mech.gamma or mech.padded_dim != config.length:
            raise RemoteProtocolError("the server's DP parameters differ from the ones this site derives")
        # Worst case that can still complete: `threshold` survivors, `max_colluders` of
        # them adding no noise (secure_fl.roster.check_setup).
        budget_event: DPEvent = mech.event(num_survivors=min(checked.counted_shares, config.n))
    else:
        budget_event = NonPrivateEvent()
        if config.length != dim + 1:
            raise RemoteProtocolError("the cohort set-up has the wrong vector length")
    budget = SiteBudget(site, delta=run_cfg.dp.delta)
    why = budget.refusal(budget_event)
    if why is not None:
        return Envelope(fields={"refused": why, "refusal": "budget", "site": site.name})

    remember_round(state, version=config.round_number, session_id=config.session_id, put=put_state, get=get_state)
    data = load_site_data(site)
    shape = tuple(int(v) for v in env.get("feature_shape", list))
    if data.num_classes > env.get("num_classes", int) or shape != data.feature_shape:
        raise RemoteProtocolError("the set-up's feature shape or num_classes does not fit this site's data")
    torch.manual_seed(secrets.randbits(62))
    model = build_model(run_cfg.model, shape, env.get("num_classes", int))
    set_flat(model, weights.astype(np.float32))
    before = evaluate(model, data.x_test, data.y_test)
    train_local(model, data.x_train, data.y_train, run_cfg.train, seed=secrets.randbits(62))
    delta = get_flat(model).astype(np.float64) - weights.astype(np.float64)
    clipped, _ = clip_l2(delta, max_norm=run_cfg.dp.clip)
    u = weight * clipped
    rng = Csprng.from_entropy()  # noise and rounding: fresh OS entropy, never leaves the site
    if mech is not None:
        vector = mech.client_encode(u, round_seed=env.get("round_seed", bytes), rng=rng)
    else:
        scale = max_scale(num_summands=config.n, max_abs=max(run_cfg.dp.clip, 1.0), bits=config.bits)
        vector = fixed_encode(np.concatenate([u, [weight]]), scale=scale, bits=config.bits, rng=rng)
    del delta, clipped, u, model
    frames = start_round(
        state,
        config=config,
        index=index,
        site=site,
        vector=vector,
        first_frames=env.frames,
        budget_event=budget_event,
        delta=run_cfg.dp.delta,
        run=env.get("run", str),
    )
    return Envelope(
        frames=tuple(frames),
        fields={
            "site": site.name,
            "eval_accuracy": float(before.accuracy),
            "eval_loss": float(before.loss),
            "eval_samples": int(before.num_samples),
        },
    )


def handle_evaluate(env: Envelope, site: SiteConfig) -> Envelope:
    """Accuracy and loss of the global model on the site's local test split (aggregates only)."""
    from secure_fl.models import build_model, set_flat
    from secure_fl.training import evaluate

    run_cfg = build_config(tomllib.loads(env.get("config_toml", str)))
    weights = env.arrays.get("weights")
    if weights is None or weights.ndim != 1:
        raise RemoteProtocolError("the evaluation request carries no model")
    shape = tuple(int(v) for v in env.get("feature_shape", list))
    model = build_model(run_cfg.model, shape, env.get("num_classes", int))
    set_flat(model, weights.astype(np.float32))
    data = load_site_data(site)
    ev = evaluate(model, data.x_test, data.y_test)
    return Envelope(
        fields={
            "site": site.name,
            "eval_accuracy": float(ev.accuracy),
            "eval_loss": float(ev.loss),
            "eval_samples": int(ev.num_samples),
        }
    )


def handle_witness(env: Envelope, site: SiteConfig, state: Any) -> Envelope:
    """Countersign the ledger entry of the aggregation this site took part in (:mod:`secure_fl.witness`)."""
    import json

    request = WitnessRequest(env.get("index", int), env.get("prev_hash", str), json.loads(env.get("body", str)))
    sig = site_countersign(state, request, load_identity_key(site), member=site.name, put=put_state, get=get_state)
    return Envelope(fields={"site": site.name, "countersignature": sig})


def handle_secagg(env: Envelope, site: SiteConfig, state: Any) -> Envelope:
    """Feed later protocol frames to this site's SecAgg client."""
    return Envelope(frames=tuple(_step(state, site, env.frames)))


# -- Flower glue ----------------------------------------------------------------------------------------
def _site(context: Context) -> SiteConfig:
    path = context.node_config.get(SITE_CONFIG_KEY) or os.environ.get("SECURE_FL_SITE_CONFIG")
    if not isinstance(path, str) or not path:
        raise ConfigError(
            "start the SuperNode with --node-config 'site-config=\"/path/to/site.toml\"'",
            field=SITE_CONFIG_KEY,
        )
    return load_site_config(path)


def _serve(msg: Message, context: Context, handler: Any) -> Message:
    """Run ``handler``; a refusal or a failure becomes a reply that names the reason.

    The server logs the reason and records it in the run's metrics and ledger
    (``excluded``); the site logs it too (the SuperNode's own log). Never silent: a site
    that cannot take part says why.
    """
    from flwr.common.logger import log

    kind = msg.metadata.message_type
    site_name = "?"
    try:
        site = _site(context)
        site_name = site.name
        reply = handler(unpack(msg.content), site, context.state)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, never swallowed
        drop_state(context.state, STATE_KEY)
        label = "protocol" if isinstance(exc, ProtocolError) else type(exc).__name__
        error_id = uuid.uuid4().hex
        expected = isinstance(exc, SecureFLError | ValueError | OSError)
        log(WARNING, "secure-fl site %s: %s failed (error id %s): %s: %s", site_name, kind, error_id, label, exc,
            exc_info=None if expected else exc)
        reason = f"{label}: {exc}"
        reply = Envelope(fields={"refused": reason[:MAX_REASON], "refusal": "error", "error_id": error_id})
    else:
        why = reply.fields.get("refused")
        if why is not None:
            log(WARNING, "secure-fl site %s: %s refused: %s", site_name, kind, why)
    return Message(pack(frames=reply.frames, fields=reply.fields, arrays=reply.arrays), reply_to=msg)


app = ClientApp()


@app.query("secure_fl_hello")
def _hello(msg: Message, context: Context) -> Message:
    return _serve(msg, context, lambda env, site, _state: handle_hello(env, site))


@app.train("secure_fl_setup")
def _setup(msg: Message, context: Context) -> Message:
    return _serve(msg, context, handle_setup)


@app.evaluate("secure_fl_eval")
def _evaluate(msg: Message, context: Context) -> Message:
    return _serve(msg, context, lambda env, site, _state: handle_evaluate(env, site))


@app.query("secure_fl_witness")
def _witness(msg: Message, context: Context) -> Message:
    return _serve(msg, context, handle_witness)


@app.query("secure_fl_secagg")
def _secagg(msg: Message, context: Context) -> Message:
    return _serve(msg, context, handle_secagg)
