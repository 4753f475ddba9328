"""The server-side engine: one sans-I/O generator for every transport.

:meth:`ServerEngine.run` yields :mod:`secure_fl.engine.transport` commands and is
resumed with their results; it never touches a socket or a clock. One run:

1. **hello** to every reachable party: a fresh challenge, and each party's name, role
   (``"client"`` or ``"key-holder"``), identity key and proof of possession
   (:func:`secure_fl.hello.screen_hellos`); parties without a valid proof are excluded.
   **probe** (``sparsity.kind = "memory_budget"``, once per run; a resumed run has its
   choice from the snapshot): the tensor subsets that fit the memory budget are scored
   by up to 10 clients on their own data (``PROBE``: one unnoised validation accuracy per
   candidate, only when :func:`secure_fl.accounting.unnoised_statistics_allowed` and the
   site's own rules allow it); the best mean over the clients that answered wins, or,
   with no probe or no answer, the subset training the most parameters
   (:func:`secure_fl.engine.support.memory_choice`).
2. **aggregations** (``rounds`` server model versions). Synchronous: each draws a
   cohort (:mod:`secure_fl.sampling`: fixed or Poisson), sends the training set-up
   (``SETUP`` with ``train``; members past ``aggregation.timeout_s`` are late and left
   out), then the aggregation set-up to those that trained. Asynchronous (FedBuff):
   ``clients.per_round`` clients train concurrently (``Post``); the buffer closes after
   K = ``aggregation.buffer_size`` ready clients or ``timeout_s`` after the first
   (``NextReply``); each buffer is one secure-aggregation cohort whose members weight
   their updates by ``s(tau)``, ``tau`` = versions since they downloaded (announced in
   the set-up and checked by the client); an update staler than the bound
   (:attr:`secure_fl.config.RunConfig.max_staleness`) is rejected when it reports, before
   it takes a buffer slot, with the reason recorded, and its client is sent the current
   model.
3. each aggregation's **protocol** (:mod:`secure_fl.engine.roles`): SecAgg+ stage by
   stage with deadlines, CKKS with the key-holder party, or plain.
4. **accounting** (:class:`secure_fl.accounting.RunPrivacy`): every survivor is charged
   the event actually present: against the server the ``survivors - c`` shares assumed
   honest (``c = threat.max_colluders``), for the released model every share; sites
   refuse on their own (``refusal = "budget"``) and the run stops when every site refused.
5. the **server optimizer**, the pruner, **evaluation**, one metrics line, a ledger
   entry countersigned by the survivors (``WITNESS``), the transcript, and the
   :attr:`ServerEngine.on_aggregation_complete` hook with a resumable snapshot.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from audits.ledger import LedgerWriter, canonical_json, verify_countersignature
from audits.transcript import TranscriptWriter
from crypto.ckks import CkksParams
from crypto.errors import LocalProtocolError
from crypto.prg import Csprng
from crypto.secagg import MaskedInput, RoundConfig
from crypto.secagg import Message as ProtocolMessage
from privacy.events import DPEvent, NonPrivateEvent
from secure_fl.accounting import RunPrivacy, dp_enabled, unnoised_statistics_allowed
from secure_fl.clip_control import ClipController
from secure_fl.config import RunConfig, config_hash, to_toml
from secure_fl.engine import public
from secure_fl.engine.records import Outcome, finite, ledger_body, library_versions
from secure_fl.engine.roles import ckks as ckks_role
from secure_fl.engine.roles import plain as plain_role
from secure_fl.engine.roles import secagg as secagg_role
from secure_fl.engine.support import (
    MemoryChoice,
    make_pruner,
    memory_candidates,
    memory_choice,
    probe_positions,
    support_for,
)
from secure_fl.engine.transport import (
    EVALUATE,
    HELLO,
    PROBE,
    SETUP,
    WITNESS,
    Command,
    Envelope,
    Exchange,
    FieldValue,
    NextReply,
    Now,
    Post,
)
from secure_fl.errors import CheckpointError, ConfigError, ProtocolError, RemoteProtocolError
from secure_fl.hello import HelloReply, new_challenge, screen_hellos
from secure_fl.memory_budget import tensor_layout
from secure_fl.models import get_flat
from secure_fl.personalization import LocalLayers
from secure_fl.sampling import fixed_cohort, poisson_cohort
from secure_fl.server_opt import ServerOptimizer
from secure_fl.sparsity import Support
from secure_fl.staleness import StaleUpdateError, check_staleness, staleness_weight
from secure_fl.training import Evaluation

__all__ = ["Party", "ServerEngine", "ServerResult"]


@dataclass(frozen=True)
class Party:
    """A party that passed hello: transport address, name, role and identity key."""

    address: int
    name: str
    role: str
    identity_key: bytes
    num_train: int = 0

    @property
    def ident(self) -> int | str:
        """How the records name it: a simulated client's number, else its name."""
        return int(self.name) if self.name.isdecimal() else self.name


@dataclass
class ServerResult:
    """What a run produced on the server."""

    metrics: list[dict[str, Any]]
    weights: npt.NDArray[np.float32]
    privacy: RunPrivacy
    clients: list[Party]
    virtual_time: float
    excluded_at_hello: dict[int, str] = field(default_factory=dict)


class _Planner:
    """Stands in for the old aggregator object in :class:`RunPrivacy`: the event
    planned for the aggregation being set up."""

    def __init__(self) -> None:
        self.event: DPEvent = NonPrivateEvent()

    def planned_event(self, *, num_clients: int | None = None, dim: int | None = None) -> DPEvent:
        return self.event


Evaluator = Callable[[npt.NDArray[np.float32]], Evaluation]


class ServerEngine:
    """The server of one run (see the module docstring).

    ``model`` gives the architecture (initial weights, prunable tensors, local layers);
    ``evaluator`` evaluates a global model on a held-out set the server holds (the
    simulation's test split; ``None``: clients evaluate, ``EVALUATE``);
    ``ledger``/``transcript``/``metrics_sink`` the records;
    ``rng`` the server's own CSPRNG (central noise, Poisson draws); ``resume`` a snapshot
    given to :attr:`on_aggregation_complete` by an earlier run; ``client_memory_bytes``
    the training memory the metrics report (replaced by the chosen subset's under
    ``sparsity.kind = "memory_budget"``, whose subset the engine chooses itself:
    :attr:`memory`).
    """

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        *,
        num_classes: int,
        evaluator: Evaluator | None = None,
        ledger: LedgerWriter | None = None,
        transcript: TranscriptWriter | None = None,
        metrics_sink: Callable[[dict[str, Any]], None] | None = None,
        rng: Csprng | None = None,
        transport_name: str = "inprocess",
        on_aggregation_complete: Callable[[dict[str, Any]], None] | None = None,
        on_progress: Callable[[int, dict[str, Any]], None] | None = None,
        resume: dict[str, Any] | None = None,
        client_memory_bytes: int | None = None,
        min_clients: int = 1,
    ) -> None:
        public_check(config)
        self.config = config
        self.model = model
        self.num_classes = num_classes
        self.evaluator = evaluator
        self.memory: MemoryChoice | None = None  # the memory-budget subset (probe phase)
        self.feature_shape: tuple[int, ...] = ()  # the clients' feature shape (hello)
        self.ledger = ledger
        self.transcript = transcript or TranscriptWriter(config.protocol)
        self.metrics_sink = metrics_sink
        self.rng = rng or Csprng.from_entropy()
        self.transport_name = transport_name
        self.on_aggregation_complete = on_aggregation_complete
        self.on_progress = on_progress
        self.client_memory_bytes = client_memory_bytes
        self.min_clients = min_clients
        self.weights = get_flat(model).astype(np.float32)
        self.dim = int(self.weights.size)
        self.local = LocalLayers(model)
        self.pruner = make_pruner(config, model, self.dim)
        self.server_opt = ServerOptimizer(config.server)
        self.clipper = ClipController(config, expected_clients=public.expected_cohort(config))
        self.planner = _Planner()
        self.privacy = RunPrivacy(config, self.planner)  # type: ignore[arg-type]
        self.metrics: list[dict[str, Any]] = []
        self.version = 0
        self.cfg_hash = config_hash(config)
        self.cfg_text = to_toml(config)
        self.versions = library_versions()
        self.run_tag = public.public_seed(config, "run")[:8].hex()
        self.sample_rng = np.random.default_rng([config.seed, 0x5EED])
        self.stopped = False
        self.wall_start = time.perf_counter()
        self.key_holder: Party | None = None
        self.clients: list[Party] = []
        if resume is not None:
            self.load_snapshot(resume)

    # -- snapshots (resume) ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue after the last completed aggregation."""
        return {
            "version": self.version,
            "weights": self.weights.copy(),
            "server_opt": _state(self.server_opt),
            "pruner": _state(self.pruner),
            "clipper": _state(self.clipper),
            "privacy": copy.deepcopy(self.privacy),  # every budget and accountant, by value
            "sample_rng": self.sample_rng.bit_generator.state,
            "ledger_index": self.ledger.next_index if self.ledger is not None else None,
            "ledger_head": self.ledger.head if self.ledger is not None else None,
            "metrics_count": len(self.metrics),
            "metrics": copy.deepcopy(self.metrics),
            "memory": self.memory.state_dict() if self.memory is not None else None,
        }

    def load_snapshot(self, snap: dict[str, Any]) -> None:
        self.version = int(snap["version"])
        self.weights = np.asarray(snap["weights"], dtype=np.float32).copy()
        for key in ("server_opt", "pruner", "clipper"):
            value = snap.get(key)
            obj = getattr(self, key)
            if obj is None or value is None:
                continue
            if hasattr(obj, "load_state_dict") and not isinstance(value, type(obj)):
                obj.load_state_dict(value)
            else:  # no state_dict() yet: the snapshot holds a copy of the object
                setattr(self, key, copy.deepcopy(value))
        if isinstance(snap.get("privacy"), RunPrivacy):
            self.privacy = copy.deepcopy(snap["privacy"])
            self.privacy.aggregator = self.planner  # type: ignore[assignment]
        if snap.get("sample_rng") is not None:
            self.sample_rng.bit_generator.state = snap["sample_rng"]
        self.metrics = list(snap.get("metrics") or [])
        if snap.get("memory") is not None:
            self.memory = MemoryChoice.from_state(snap["memory"])
            self.client_memory_bytes = self.memory.memory_bytes
        elif self.config.sparsity.kind == "memory_budget":
            raise CheckpointError("the snapshot of a memory-budget run lacks its chosen subset; probing again could "
                                  "change the support in the middle of the run", field="sparsity.kind")

    # -- the run -------------------------------------------------------------------------------
    def run(self, addresses: Sequence[int]) -> Generator[Command, Any, ServerResult]:
        """The whole run over the parties at ``addresses`` (``transport.reachable()``)."""
        excluded = yield from self._hello(list(addresses))
        yield from self._choose_memory()
        if unnoised_statistics_allowed(self.config) and dp_enabled(self.config):
            self.privacy.add_hazard(
                "personalized_accuracy in metrics.jsonl is the mean accuracy on cohort clients' own "
                "test splits, released without noise or accounting (dp.allow_unnoised_site_metrics "
                "= true); not covered by epsilon"
            )
        if self.evaluator is None and dp_enabled(self.config):
            self.privacy.add_hazard(
                "test_accuracy and test_loss in metrics.jsonl are the sample-weighted means of the "
                "cohort sites' own evaluations of the global model: each site reports its accuracy, "
                "loss and test-sample count to the server without noise or accounting (a site with "
                "site.test_fraction = 0 reports nothing); not covered by epsilon"
            )
        if self.config.aggregation.mode == "sync":
            yield from self._run_sync()
        else:
            yield from self._run_async()
        now = yield Now()
        return ServerResult(self.metrics, self.weights, self.privacy, self.clients, float(now), excluded)

    def _hello(self, addresses: list[int]) -> Generator[Command, Any, dict[int, str]]:
        challenge = new_challenge()
        env = Envelope(fields={"challenge": challenge})
        replies: dict[int, Envelope] = yield Exchange({a: (HELLO, env) for a in addresses}, stage="hello")
        answers: list[HelloReply] = []
        holders: list[HelloReply] = []
        excluded: dict[int, str] = {}
        roles: dict[int, str] = {}
        for address in addresses:
            reply = replies.get(address)
            if reply is None:
                excluded[address] = "no answer to hello"
                continue
            try:
                if "refused" in reply.fields:
                    raise RemoteProtocolError(str(reply.fields["refused"]))
                role = str(reply.fields.get("role", "client"))
                roles[address] = role
                hr = HelloReply(
                    address,
                    reply.get("site", str),
                    reply.get("identity_key", bytes),
                    reply.get("signature", bytes),
                    tuple(int(v) for v in reply.get("feature_shape", list)),
                    reply.get("num_classes", int),
                    int(reply.fields.get("num_train", 0)),  # type: ignore[arg-type]
                )
                (holders if role == "key-holder" else answers).append(hr)
            except (RemoteProtocolError, TypeError, ValueError) as exc:
                excluded[address] = str(exc)
        screen = screen_hellos(answers, challenge=challenge, num_classes=max(2, self.num_classes))
        excluded.update(screen.excluded)
        self.feature_shape = tuple(screen.feature_shape)
        self.clients = sorted(
            (Party(r.node, r.name, "client", r.identity_key, r.num_train) for r in screen.accepted),
            key=lambda p: (isinstance(p.ident, str), p.ident if isinstance(p.ident, int) else 0, p.name),
        )
        if holders:
            hs = screen_hellos(holders, challenge=challenge, num_classes=2)
            excluded.update(hs.excluded)
            if hs.accepted:
                r = hs.accepted[0]
                self.key_holder = Party(r.node, r.name, "key-holder", r.identity_key)
        if self.config.protocol == "ckks" and self.key_holder is None:
            raise ProtocolError("protocol = 'ckks' needs a key-holder party; none passed hello")
        if len(self.clients) < self.min_clients:
            raise ProtocolError(f"only {len(self.clients)} clients passed hello; at least {self.min_clients} needed")
        return excluded

    # -- the memory-budget probe ----------------------------------------------------------------------
    def _choose_memory(self) -> Generator[Command, Any, None]:
        """The run's memory-budget subset (``sparsity.kind = "memory_budget"``), once,
        after hello and before the first aggregation; a resumed run has it already.

        Candidates: the maximal tensor subsets that fit the budget
        (:func:`~secure_fl.engine.support.memory_candidates`). When unnoised statistics
        are allowed (:func:`~secure_fl.accounting.unnoised_statistics_allowed`) the
        clients at :func:`~secure_fl.engine.support.probe_positions` of the sorted client
        list get ``PROBE``: the initial weights, the candidates (a 0/1 matrix, candidates x
        tensors), the tensor names and the run configuration. Each site checks its own
        rules and replies one validation accuracy per candidate
        (:func:`~secure_fl.engine.support.probe_accuracies`) or refuses; a refusal, a
        failure, a malformed reply or no answer leaves that client out of the mean
        (``probe_excluded`` in the report says why).
        """
        cfg = self.config
        if cfg.sparsity.kind != "memory_budget" or self.memory is not None:
            return
        layout = tensor_layout(self.model, self.feature_shape)
        candidates = memory_candidates(cfg, layout)
        answered: list[tuple[Any, list[float]]] = []
        excluded: dict[str, str] = {}
        if unnoised_statistics_allowed(cfg):
            asked = [(i, self.clients[i]) for i in probe_positions(cfg, len(self.clients))]
            member = np.array([[t in c for t in range(len(layout))] for c in candidates], dtype=np.uint8)
            arrays: dict[str, npt.NDArray[Any]] = {"weights": self.weights, "candidates": member}
            base: dict[str, FieldValue] = {
                "config_toml": self.cfg_text, "run": self.run_tag, "tensor_names": [t.name for t in layout],
            }
            replies: dict[int, Envelope] = yield Exchange(
                {p.address: (PROBE, Envelope(fields={**base, "index": i}, arrays=arrays)) for i, p in asked},
                stage="probe",
            )
            for _i, p in asked:
                accs = _probe_reply(replies.get(p.address), len(candidates))
                if isinstance(accs, str):
                    excluded[str(p.ident)] = accs
                else:
                    answered.append((p.ident, accs))
        self.memory = memory_choice(cfg, layout, candidates, probe=answered, probe_excluded=excluded)
        self.client_memory_bytes = self.memory.memory_bytes
        if answered and dp_enabled(cfg):
            self.privacy.add_hazard(
                "memory-budget probe: the validation accuracies of clients "
                f"{self.memory.report['probe_clients']} chose the trained subset without noise or "
                "accounting (dp.allow_unnoised_site_metrics = true); not covered by epsilon"
            )

    # -- public set-up -----------------------------------------------------------------------------
    def _support(self, version: int) -> Support:
        base = self.memory.support if self.memory is not None else support_for(self.config, version, self.dim, self.pruner)
        return base.without(self.local.mask)

    def _trainable(self) -> npt.NDArray[np.uint8] | None:
        if self.memory is not None:
            return (~self.memory.frozen).astype(np.uint8)
        if self.pruner is not None:
            return self.pruner.mask.astype(np.uint8)
        return None

    def _clip_fields(self) -> dict[str, FieldValue]:
        no_clip = self.config.protocol == "plain" and self.config.dp.mechanism == "none"
        return {
            "clip": 0.0 if no_clip else float(self.clipper.clip),
            "kappa": float(self.clipper.kappa) if self.clipper.adaptive else 0.0,
        }

    def _mechanism(self, n: int, support: Support) -> tuple[Any, int]:
        provisioned = public.honest_provisioned_shares(self.config, n) if self.config.protocol != "plain" else n
        dim = support.size + (1 if self.clipper.adaptive else 0)
        mech = public.mechanism_for(
            self.config, protocol=self.config.protocol, dim=dim, n=n, provisioned=provisioned,
            clip=self.clipper.mechanism_clip,
        )
        return mech, provisioned

    def _train_setup(self, version: int, base_version: int, support: Support, n: int) -> Envelope:
        fields: dict[str, FieldValue] = {
            "version": version,
            "base_version": base_version,
            "config_toml": self.cfg_text,
            "protocol": self.config.protocol,
            "train": True,
            "aggregate": False,
            "max_train": max((p.num_train for p in self.clients), default=0),
            "run": self.run_tag,
            **self._clip_fields(),
        }
        try:  # the event planned for this aggregation: each site checks its cap before training
            _mech, provisioned = self._mechanism(max(n, 1), support)
            fields.update({"n": max(n, 1), "provisioned": provisioned})
        except (ConfigError, LocalProtocolError, ValueError):
            pass  # no valid mechanism for this cohort: the aggregation set-up says so
        arrays: dict[str, npt.NDArray[Any]] = {"weights": self.weights, "support": support.indices.astype(np.int64)}
        trainable = self._trainable()
        if trainable is not None:
            arrays["trainable"] = trainable
        return Envelope(fields=fields, arrays=arrays)

    # -- synchronous rounds ----------------------------------------------------------------------------
    def _draw(self) -> list[Party]:
        cfg = self.config
        m = len(self.clients)
        size = min(cfg.cohort_size, m)
        if cfg.clients.sampling == "poisson":
            idx = poisson_cohort(m, size, rng=self.rng)
        else:
            idx = fixed_cohort(m, size, rng=self.sample_rng)
        return [self.clients[i] for i in idx]

    def _run_sync(self) -> Generator[Command, Any, None]:
        cfg = self.config
        while self.version < cfg.aggregations and not self.stopped:
            version = self.version + 1
            cohort = self._draw()
            support = self._support(version)
            setup = self._train_setup(version, self.version, support, len(cohort))
            start = yield Now()
            replies: dict[int, Envelope] = yield Exchange(
                {p.address: (SETUP, setup) for p in cohort}, stage="train", timeout=cfg.aggregation.timeout_s
            )
            ready, refused, late = self._collect_training(cohort, replies)
            staleness = {p.ident: 0 for p in cohort}
            yield from self._aggregate(version, cohort, ready, support, refused=refused, late=late,
                                       staleness=staleness, rejected={}, taus=dict.fromkeys(
                                           (p.address for p in ready), 0), started=float(start))

    def _collect_training(
        self, members: Sequence[Party], replies: dict[int, Envelope]
    ) -> tuple[list[Party], dict[Any, str], list[Party]]:
        ready: list[Party] = []
        refused: dict[Any, str] = {}
        late: list[Party] = []
        for p in members:
            env = replies.get(p.address)
            if env is None:
                late.append(p)
                continue
            self._record_training(p, env)
            if "refused" in env.fields:
                refused[p.ident] = str(env.fields["refused"])
                continue
            ready.append(p)
        return ready, refused, late

    def _record_training(self, p: Party, env: Envelope) -> None:
        from audits.events_codec import decode_event

        text = env.fields.get("record_event")
        if isinstance(text, str):
            self.privacy.record_training(p.ident, decode_event(json.loads(text)))  # type: ignore[arg-type]

    # -- semi-asynchronous buffers ---------------------------------------------------------------------
    def _run_async(self) -> Generator[Command, Any, None]:
        cfg = self.config
        k = cfg.buffer_size
        timeout = cfg.aggregation.timeout_s
        bound = cfg.max_staleness
        busy: dict[int, int] = {}  # address -> base version it trains from
        by_address = {p.address: p for p in self.clients}

        def fill() -> Generator[Command, Any, None]:
            idle = [i for i, p in enumerate(self.clients) if p.address not in busy]
            need = min(cfg.cohort_size, len(self.clients)) - len(busy)
            if need <= 0 or not idle:
                return
            chosen = sorted(int(i) for i in self.sample_rng.choice(idle, min(need, len(idle)), replace=False))
            setup = self._train_setup(self.version + 1, self.version, self._support(self.version + 1), k)
            msgs = {}
            for i in chosen:
                busy[self.clients[i].address] = self.version
                msgs[self.clients[i].address] = (SETUP, setup)
            yield Post(msgs, stage="train")

        yield from fill()
        buffer: list[Party] = []
        opened: float | None = None
        # Updates staler than the bound are turned away when they report, before they
        # take a buffer slot, and the client is handed the current model at once
        # (FedBuff); the rejections are reported with the next aggregation.
        rejected: dict[Any, str] = {}
        while self.version < cfg.aggregations and not self.stopped and busy:
            now = float((yield Now()))
            wait = None if opened is None or timeout is None else max(0.0, opened + timeout - now)
            got = yield NextReply(timeout=wait)
            if got is not None:
                address, env = got
                p = by_address.get(address)
                if p is None or address not in busy:
                    continue
                self._record_training(p, env)
                if "refused" in env.fields:
                    busy.pop(address)
                    self.privacy.refusals += 1
                    continue
                try:
                    check_staleness(self.version - busy[address], max_staleness=bound)
                except StaleUpdateError as exc:
                    rejected[p.ident] = str(exc)
                    busy.pop(address)
                    yield from fill()
                    continue
                buffer.append(p)
                if opened is None:
                    opened = float((yield Now()))
                if len(buffer) < k:
                    continue
            elif not buffer:
                continue
            members, buffer, opened = buffer, [], None
            version = self.version + 1
            taus = {p.address: self.version - busy[p.address] for p in members}
            staleness = {p.ident: taus[p.address] for p in members}
            start = yield Now()
            yield from self._aggregate(version, members, members, self._support(version), refused={}, late=[],
                                       staleness=staleness, rejected=rejected, taus=taus, started=float(start))
            rejected = {}
            for p in members:
                busy.pop(p.address, None)
            yield from fill()

    # -- one aggregation ---------------------------------------------------------------------------------
    def _aggregate(
        self,
        version: int,
        cohort: Sequence[Party],
        ready: list[Party],
        support: Support,
        *,
        refused: dict[Any, str],
        late: list[Party],
        staleness: dict[Any, int],
        rejected: dict[Any, str],
        taus: dict[int, int],
        started: float,
    ) -> Generator[Command, Any, None]:
        cfg = self.config
        n = len(ready)
        clip_used = self.clipper.clip
        outcome: Outcome
        planned: DPEvent = NonPrivateEvent()
        budget_refused = {k: v for k, v in refused.items() if "budget" in v or "privacy" in v}
        if n == 0:
            reason = (
                "every cohort member refused: privacy budget spent" if refused and len(refused) == len(cohort)
                else "empty cohort: the Poisson draw selected no client" if not cohort
                else "no cohort member finished training in time" if late
                else "no update to aggregate"
            )
            outcome = Outcome(None, tuple(p.ident for p in cohort), (), {}, {}, {}, {}, aborted=reason)
        else:
            try:
                mech, provisioned = self._mechanism(max(n, 1), support)
            except (ConfigError, LocalProtocolError, ValueError) as exc:
                mech, provisioned = None, n
                outcome = Outcome(None, tuple(p.ident for p in cohort), (), {}, {}, {}, {},
                                  aborted=f"mechanism: {exc}")
            else:
                planned = public.planned_event(mech)
                self.planner.event = planned
                outcome = yield from self._protocol(version, ready, support, mech, provisioned, taus)
            outcome.cohort = tuple(p.ident for p in cohort)
            outcome.measurements.setdefault("clip", clip_used)
            # refusals at the aggregation set-up (budget or rules) join those at training
            for ident, why in list(outcome.excluded.items()):
                if why.startswith("refused: "):
                    refused[ident] = why[len("refused: "):]
                    outcome.excluded.pop(ident)
        for p in late:
            outcome.dropped.setdefault("train", []).append(p.ident)
        budget_refused = {k: v for k, v in refused.items() if "budget" in v}
        self.privacy.refusals += len(budget_refused)
        # Every other refusal (a site's rules, its failure) is named too: never silent.
        for ident, why in refused.items():
            if ident not in budget_refused:
                outcome.excluded.setdefault(ident, f"refused: {why}")
        epsilon = self.privacy.record(outcome, version=version, planned=planned)  # type: ignore[arg-type]
        if outcome.mean is not None:
            new = self.server_opt.step(self.weights, support.scatter(outcome.mean))
            if self.pruner is not None:
                new = new * self.pruner.update(new, version)
            self.weights = new.astype(np.float32)
        self.version = version
        test, personal = yield from self._evaluate(cohort)
        end = float((yield Now()))
        up_total = sum(outcome.upload_bytes.values())
        hist: dict[str, int] = {}
        for tau in staleness.values():
            hist[str(tau)] = hist.get(str(tau), 0) + 1
        record: dict[str, Any] = {
            "version": version,
            "virtual_time_s": round(end, 6) if self.transport_name == "inprocess" else None,
            "wall_time_s": round(time.perf_counter() - self.wall_start, 3),
            "test_accuracy": test.accuracy if test is not None else None,
            "test_loss": test.loss if test is not None else None,
            "personalized_accuracy": personal,
            "epsilon": epsilon,
            "cohort": list(outcome.cohort),
            "budget_refusals": {str(k): v for k, v in budget_refused.items()},
            "survivors": list(outcome.survivors),
            "dropped": outcome.dropped,
            "excluded": {str(k): v for k, v in outcome.excluded.items()},
            "rejected_stale": {str(k): v for k, v in rejected.items()},
            "staleness_histogram": hist,
            "aborted": outcome.aborted,
            "clip": outcome.measurements.get("clip"),
            "unclipped_fraction": outcome.measurements.get("unclipped_fraction"),
            "support": support.description,
            "client_trained_parameters": support.size,
            "client_memory_bytes": self.client_memory_bytes,
            "upload_bytes": up_total,
            "upload_bytes_per_client": up_total / max(1, len(outcome.upload_bytes)),
            "download_bytes": self.weights.nbytes * len(cohort) + sum(outcome.download_bytes.values()),
        }
        for s, stage, size, digest in outcome.transcript:
            self.transcript.add_message(version=version, sender=s if isinstance(s, int) else 0, stage=stage,
                                        size=size, sha256=digest)
        corr = outcome.measurements.get("max_abs_corr_masked_vs_true")
        if corr is not None:
            self.transcript.add_statistic(version=version, name="max_abs_corr_masked_vs_true", value=corr)
        if True:
            body = ledger_body(
                cfg, self.cfg_hash, version, outcome, support, refused=budget_refused, rejected=rejected,
                staleness=staleness, privacy=self.privacy, versions=self.versions, transport=self.transport_name,
            )
            body["virtual_time_s"] = record["virtual_time_s"]
            body["test_accuracy"] = record["test_accuracy"]
            yield from self._witness_and_commit(body, outcome)
        self.metrics.append(record)
        if self.metrics_sink is not None:
            self.metrics_sink(record)
        if self.on_progress is not None:
            self.on_progress(version, record)
        if self.privacy.enabled and cohort and len(budget_refused) == len(cohort):
            self.stopped = True  # every site refused: no further aggregation can be private
        if self.on_aggregation_complete is not None:
            self.on_aggregation_complete(self.snapshot())

    def _protocol(
        self, version: int, ready: list[Party], support: Support, mech: Any, provisioned: int, taus: dict[int, int]
    ) -> Generator[Command, Any, Outcome]:
        cfg = self.config
        n = len(ready)
        idents = [p.ident for p in ready]
        st = cfg.staleness
        weights = [staleness_weight(taus.get(p.address, 0), fn=st.fn, a=st.a, b=st.b) for p in ready]
        session_id = public.public_seed(cfg, f"session/{version}")
        round_seed = public.public_seed(cfg, f"round/{version}")
        base: dict[str, FieldValue] = {
            "version": version,
            "model_version": self.version,
            "config_toml": self.cfg_text,
            "protocol": cfg.protocol,
            "train": False,
            "aggregate": True,
            "identity_keys": [p.identity_key for p in ready],
            "members": [p.name for p in ready],
            "n": n,
            "provisioned": provisioned,
            "session_id": session_id,
            "round_seed": round_seed,
            "run": self.run_tag,
            **self._clip_fields(),
        }
        arrays = {"support": support.indices.astype(np.int64)}

        def member(i: int) -> dict[str, FieldValue]:
            return {**base, "index": i, "weight": float(weights[i]), "staleness": int(taus.get(ready[i].address, 0))}

        if cfg.protocol == "plain":
            return (yield from self._plain(version, ready, member, arrays, mech, support))
        if cfg.protocol == "ckks":
            return (yield from self._ckks(version, ready, member, arrays, mech, support, weights))
        if n < 2:
            return Outcome(None, tuple(idents), (), {}, {}, {}, {}, aborted="secure aggregation needs at least 2 clients")
        try:
            neighbors, t = secagg_role.graph_parameters(cfg, n)
        except LocalProtocolError as err:
            return Outcome(None, tuple(idents), (), {}, {}, {}, {}, aborted=f"secure aggregation parameters: {err}")
        length = mech.padded_dim if mech is not None else support.size + 1
        rc = RoundConfig(
            session_id=session_id,
            round_number=version,
            bits=cfg.secagg.bits,
            length=length,
            threshold=t,
            identity_keys=tuple(p.identity_key for p in ready),
            graph_seed=public.public_seed(cfg, f"graph/{version}"),
            neighbors=neighbors,
            max_colluders=cfg.threat.max_colluders,
        )

        def first(i: int, frames: tuple[bytes, ...]) -> Envelope:
            return Envelope(frames, {**member(i), **secagg_role.round_config_fields(rc)}, arrays)

        def observe(i: int, msg: ProtocolMessage) -> None:
            if isinstance(msg, MaskedInput):  # top-bit histogram of the masked vector only
                self.transcript.observe_masked_upload(version=version, sender=_int(idents[i], i), masked=msg.vector,
                                                      bits=msg.bits)

        res: secagg_role.SecureSum = yield from secagg_role.secure_sum(
            addresses=[p.address for p in ready], config=rc, first_message=first,
            first_timeout=None, stage_timeout=None, observe=observe,
        )
        excluded = {idents[i]: f"refused: {why}" for i, why in res.refused.items()}
        excluded.update({idents[i]: why for i, why in res.excluded.items() if i not in res.refused})
        dropped: dict[str, list[Any]] = {}
        for stage, idx in res.dropped.items():
            left = [idents[i] for i in idx if i not in res.refused]
            if left:
                dropped[stage] = sorted(left, key=str)
        measurements: dict[str, Any] = {
            "threshold": t,
            "neighbors": neighbors,
            "bits": cfg.secagg.bits,
            "provisioned_survivors": provisioned,
            "wrap_probability": float(mech.wrap_probability) if mech is not None else 0.0,
            "round_seed": round_seed.hex(),
            "session_id": session_id.hex(),
            "clip": self.clipper.clip,
        }
        out = Outcome(
            None, tuple(idents), (), dropped, excluded,
            {idents[i]: b for i, b in res.upload_bytes.items() if b},
            {idents[i]: b for i, b in res.download_bytes.items()},
            transcript=[(_int(idents[i], i), stage, size, digest) for i, stage, size, digest in res.transcript],
            aborted=res.aborted, measurements=measurements,
        )
        if res.total is None:
            return out
        decoded = secagg_role.server_decode(res.total, mech=mech, n=n, clip=self.clipper.clip, bits=cfg.secagg.bits,
                                            round_seed=round_seed)
        survivors = list(res.survivors)
        if mech is None:
            out.mean = decoded[:-1] / decoded[-1]
        else:
            weight_sum = sum(weights[i] for i in survivors)  # public staleness weights
            upd, indicator = self.clipper.split(decoded)
            out.mean = upd / weight_sum
            out.dp_event, out.dp_event_released = self._events(mech, len(survivors))
            if indicator is not None:
                measurements["unclipped_fraction"] = self.clipper.observe(indicator, num_clients=len(survivors))
        out.survivors = tuple(sorted((idents[i] for i in survivors), key=str))
        if all(isinstance(x, int) for x in out.survivors):
            out.survivors = tuple(sorted(out.survivors))
        return out

    def _events(self, mech: Any, survivors: int) -> tuple[DPEvent, DPEvent]:
        """(against the server: honest shares only; released model: every share)."""
        honest = public.honest_shares(self.config, survivors)
        against = mech.event(num_survivors=honest) if honest >= 1 else NonPrivateEvent()
        return against, mech.event(num_survivors=survivors)

    def _plain(
        self, version: int, ready: list[Party], member: Callable[[int], dict[str, FieldValue]],
        arrays: dict[str, npt.NDArray[Any]], mech: Any, support: Support,
    ) -> Generator[Command, Any, Outcome]:
        idents = [p.ident for p in ready]
        replies: dict[int, Envelope] = yield Exchange(
            {p.address: (SETUP, Envelope(fields=member(i), arrays=arrays)) for i, p in enumerate(ready)},
            stage="upload",
        )
        length = support.size + (1 if self.clipper.adaptive else 0)
        total: npt.NDArray[np.float64] | None = None
        weight_sum = 0.0
        arrived: list[Any] = []
        out = Outcome(None, tuple(idents), (), {}, {}, {}, {})
        sid = member(0)["session_id"] if ready else b""
        out.measurements["session_id"] = sid.hex() if isinstance(sid, bytes) else ""
        for i, p in enumerate(ready):
            env = replies.get(p.address)
            if env is None:
                out.dropped.setdefault("upload", []).append(p.ident)
                continue
            if "refused" in env.fields:
                out.excluded[p.ident] = f"refused: {env.fields['refused']!s}"
                continue
            upload = plain_role.read_upload(env, length=length)
            if upload is None:
                out.excluded[p.ident] = "malformed plain upload"
                continue
            u, w = upload
            payload = np.ascontiguousarray(env.arrays["update"]).tobytes()
            out.upload_bytes[p.ident] = len(payload)
            out.transcript.append((_int(p.ident, i), "upload", len(payload), hashlib.sha256(payload).hexdigest()))
            total = u.copy() if total is None else total + u
            weight_sum += w
            arrived.append(p.ident)
        if total is None or weight_sum <= 0:
            out.aborted = "no client update arrived"
            return out
        if mech is not None:
            total = mech.add_noise(total, rng=self.rng)
            out.dp_event = mech.event()
        if self.config.dp.mechanism != "none":
            total, indicator = self.clipper.split(total)
            if indicator is not None:
                out.measurements["unclipped_fraction"] = self.clipper.observe(indicator, num_clients=len(arrived))
        out.mean = total / weight_sum
        out.survivors = tuple(sorted(arrived, key=str)) if not all(isinstance(x, int) for x in arrived) \
            else tuple(sorted(arrived))
        return out

    def _ckks(
        self, version: int, ready: list[Party], member: Callable[[int], dict[str, FieldValue]],
        arrays: dict[str, npt.NDArray[Any]], mech: Any, support: Support, weights: list[float],
    ) -> Generator[Command, Any, Outcome]:
        cfg = self.config
        idents = [p.ident for p in ready]
        assert_holder = self.key_holder
        out = Outcome(None, tuple(idents), (), {}, {}, {}, {})
        if assert_holder is None:
            out.aborted = "no CKKS key holder"
            return out
        params = CkksParams(poly_modulus_degree=cfg.ckks.poly_modulus_degree)
        dim = support.size + (1 if self.clipper.adaptive else 0) + (0 if mech is not None else 1)
        bound = ckks_role.encoding_bound(mech, self.clipper.mechanism_clip)
        key_setup = Envelope(fields={"version": version, "poly_modulus_degree": params.poly_modulus_degree,
                                     "members": [p.name for p in ready]})

        def first(i: int, signed: bytes) -> Envelope:
            return Envelope(fields={**member(i), "ckks_context": signed,
                                    "poly_modulus_degree": params.poly_modulus_degree}, arrays=arrays)

        res: ckks_role.CkksSum = yield from ckks_role.ckks_sum(
            addresses=[p.address for p in ready], key_holder=assert_holder.address, version=version, params=params,
            dim=dim, bound=bound, first_message=first, key_setup=key_setup, first_timeout=None, stage_timeout=None,
        )
        out.excluded = {idents[i]: f"refused: {w}" for i, w in res.refused.items()}
        out.excluded.update({idents[i]: w for i, w in res.excluded.items()})
        out.dropped = {k: [idents[i] for i in v] for k, v in res.dropped.items()}
        out.upload_bytes = {idents[i]: b for i, b in res.upload_bytes.items()}
        out.download_bytes = {idents[i]: b for i, b in res.download_bytes.items()}
        out.transcript = [(_int(idents[i], i), s, z, d) for i, s, z, d in res.transcript]
        out.aborted = res.aborted
        sid = member(0)["session_id"] if ready else b""
        out.measurements.update({"aggregate_bytes": res.aggregate_bytes,
                                 "session_id": sid.hex() if isinstance(sid, bytes) else ""})
        if res.total is None:
            return out
        total = res.total
        survivors = list(res.survivors)
        if mech is not None:
            weight_sum = sum(weights[i] for i in survivors)
            upd, indicator = self.clipper.split(total)
            out.mean = upd / weight_sum
            out.dp_event, out.dp_event_released = self._events(mech, len(survivors))
            if indicator is not None:
                out.measurements["unclipped_fraction"] = self.clipper.observe(indicator, num_clients=len(survivors))
        else:
            out.mean = total[:-1] / float(total[-1])
        out.survivors = _sorted_idents(idents[i] for i in survivors)
        return out

    # -- evaluation ----------------------------------------------------------------------------------------
    def _evaluate(self, cohort: Sequence[Party]) -> Generator[Command, Any, tuple[Evaluation | None, float | None]]:
        unnoised = unnoised_statistics_allowed(self.config)
        members = list(cohort)
        need_clients = self.evaluator is None or self.local.enabled or unnoised
        results: dict[str, dict[int, Envelope]] = {}
        if need_clients and members:
            splits = []
            if self.evaluator is None or self.local.enabled:
                splits.append("global" if self.evaluator is not None else "local")
            if unnoised and self.evaluator is not None:
                splits.append("local")
            for split in dict.fromkeys(splits):
                env = Envelope(fields={"split": split}, arrays={"weights": self.weights})
                results[split] = yield Exchange({p.address: (EVALUATE, env) for p in members}, stage="evaluate")
        test: Evaluation | None
        if self.evaluator is not None and not self.local.enabled:
            test = self.evaluator(self.weights)
        else:
            # FedBN: the mean over cohort clients of the shared model with each client's
            # own layers; deployments: the sample-weighted mean of the sites' own splits.
            test = _mean_eval(results.get("global" if self.evaluator is not None else "local", {}).values(),
                              weighted=self.evaluator is None)
        personal: float | None = None
        if unnoised and "local" in results:
            accs = [float(e.fields["eval_accuracy"]) for e in results["local"].values()  # type: ignore[arg-type]
                    if isinstance(e.fields.get("eval_samples"), int) and int(e.fields["eval_samples"]) > 0]  # type: ignore[arg-type]
            personal = float(np.mean(accs)) if accs else None
        return test, personal

    # -- ledger --------------------------------------------------------------------------------------------
    def _witness_and_commit(self, body: dict[str, Any], outcome: Outcome) -> Generator[Command, Any, None]:
        """Survivors check and countersign the entry; without a ledger (an in-memory run)
        they are still told what was released (index -1: nothing to sign), so each site
        charges its own budget the event actually present."""
        by_ident = {p.ident: p for p in self.clients}
        signers = [by_ident[s] for s in outcome.survivors if s in by_ident] if not outcome.aborted else []
        ledger = self.ledger
        if ledger is None:
            if signers:
                note: dict[str, FieldValue] = {
                    "index": -1, "prev_hash": "", "body": canonical_json(body).decode("utf-8"), "run": self.run_tag,
                }
                yield Exchange({p.address: (WITNESS, Envelope(fields=note)) for p in signers}, stage="witness")
            return
        entry = ledger.prepare(body)
        sigs: dict[str, bytes] = {}
        if signers:
            fields: dict[str, FieldValue] = {
                "index": entry.index, "prev_hash": entry.prev_hash,
                "body": canonical_json(entry.body).decode("utf-8"), "run": self.run_tag,
            }
            replies: dict[int, Envelope] = yield Exchange(
                {p.address: (WITNESS, Envelope(fields=fields)) for p in signers}, stage="witness"
            )
            for p in signers:
                env = replies.get(p.address)
                sig = env.fields.get("countersignature") if env is not None else None
                if isinstance(sig, bytes) and verify_countersignature(entry.entry_hash, sig, p.identity_key):
                    sigs[p.name] = sig
        ledger.commit(entry, countersignatures=sigs)


def _probe_reply(env: Envelope | None, candidates: int) -> list[float] | str:
    """A probe client's accuracies, or why it is left out of the mean."""
    if env is None:
        return "no answer to the probe"
    if "refused" in env.fields:
        return f"refused: {env.fields['refused']!s}"
    accs = env.fields.get("probe_accuracy")
    if (
        not isinstance(accs, list)
        or len(accs) != candidates
        or not all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in accs)
    ):
        return f"malformed probe reply: expected {candidates} accuracies in [0, 1]"
    return [float(a) for a in accs]


def _mean_eval(envs: Any, *, weighted: bool) -> Evaluation | None:
    accs, losses, ns = [], [], []
    for env in envs:
        n = env.fields.get("eval_samples")
        a, ls = env.fields.get("eval_accuracy"), env.fields.get("eval_loss")
        if isinstance(n, int) and n > 0 and isinstance(a, float) and isinstance(ls, float):
            accs.append(a)
            losses.append(ls)
            ns.append(n)
    if not ns:
        return None
    w = np.asarray(ns, dtype=np.float64) if weighted else np.ones(len(ns))
    return Evaluation(float(np.average(accs, weights=w)), float(np.average(losses, weights=w)),
                      int(ns[0]) if not weighted else int(sum(ns)))


def _sorted_idents(idents: Any) -> tuple[Any, ...]:
    items = list(idents)
    if all(isinstance(x, int) for x in items):
        return tuple(sorted(items))
    return tuple(sorted(items, key=str))


def _int(ident: Any, fallback: int) -> int:
    return ident if isinstance(ident, int) else fallback


def _state(obj: Any) -> Any:
    """``obj.state_dict()`` where it has one, else a deep copy of ``obj``."""
    if obj is None:
        return None
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    return copy.deepcopy(obj)


def public_check(config: RunConfig) -> None:
    """Refuse configurations no transport can run (the same message on every transport)."""
    public.check_run_config(config)


_ = (math, finite)
