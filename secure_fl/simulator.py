"""Event-driven simulation of clients on a virtual clock: synchronous rounds and
semi-asynchronous buffered aggregation (FedBuff, Nguyen et al. AISTATS 2022; FTTE).

The simulator decides *who* contributes *what* to each aggregation and *when*; the
runner supplies real local training (``train``) and a real protocol (``aggregate``).
Virtual time comes from device profiles and the real message sizes the protocol
reports, never from the host clock, so a run is reproducible from its seed.

Synchronous mode: each aggregation draws a cohort (:mod:`secure_fl.sampling`:
``clients.per_round`` clients, or a Poisson sample of that expected size); each
downloads the model, trains and uploads; the round lasts until the slowest surviving
member finishes (or until ``aggregation.timeout_s``, after which late members count as
dropped before the protocol's first stage).

Asynchronous mode: ``clients.per_round`` clients train concurrently, each from the
latest model it downloaded. A client that finishes reports ready; the server closes the
buffer after K = ``aggregation.buffer_size`` ready clients (or ``timeout_s`` after the
first one) and that buffer is one secure-aggregation cohort: its members run the short
SecAgg/CKKS exchange then, each weighting its clipped update by ``s(tau)`` with
``tau = version at close - version trained from``. Updates staler than
``staleness.max_staleness`` are rejected with a recorded reason. Released members are
replaced by clients drawn from the idle pool, who start from the newest model.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from crypto.prg import Csprng
from secure_fl.aggregation import AggregateOutcome, ClientUpdate
from secure_fl.config import RunConfig
from secure_fl.devices import DeviceProfile
from secure_fl.sampling import draw_cohort
from secure_fl.staleness import staleness_weight

__all__ = ["CohortPlan", "Simulator", "TrainResult"]


@dataclass(frozen=True)
class TrainResult:
    """A client's local result: its update and how many samples it processed."""

    delta: npt.NDArray[np.float32]
    samples_processed: int
    base_weight: float


@dataclass(frozen=True)
class CohortPlan:
    """What the simulator hands to the aggregation step."""

    updates: list[ClientUpdate]
    staleness: dict[int, int]
    rejected: dict[int, str]
    close_time: float


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    client: int = field(compare=False)


TrainFn = Callable[[int, int], TrainResult]  # (client id, base version) -> result
# (client ids, base version) -> results in the same order (a worker pool runs them)
TrainManyFn = Callable[[list[int], int], list[TrainResult]]
AggregateFn = Callable[[CohortPlan], AggregateOutcome]
CompleteFn = Callable[[float], None]  # virtual time at which an aggregation completed


class Simulator:
    """Drives one run's schedule. ``train(cid, version)`` trains client ``cid`` from the
    current global model (of version ``version``); ``aggregate(plan)`` runs the protocol
    on a closed cohort and advances the global model by one version."""

    def __init__(
        self,
        config: RunConfig,
        profiles: list[DeviceProfile],
        *,
        model_bytes: int,
        stages: tuple[str, ...],
        rng: np.random.Generator,
        cohort_rng: Csprng | None = None,
    ) -> None:
        self.config = config
        #: Secret randomness of Poisson cohort draws (secure_fl/sampling.py).
        self.cohort_rng = cohort_rng
        self.profiles = profiles
        self.model_bytes = model_bytes
        self.stages = stages
        self.rng = rng
        self.now = 0.0
        self.version = 0
        #: Set by the runner to end the run early (e.g. every site's budget is spent).
        self.stopped = False
        #: Virtual time at which each aggregation (version) completed.
        self.completion_times: list[float] = []

    # -- helpers -----------------------------------------------------------------------
    def _drop_stage(self) -> str | None:
        if self.rng.random() < self.config.simulation.dropout:
            return str(self.rng.choice(self.stages))
        return None

    def _exchange_seconds(self, outcome: AggregateOutcome) -> float:
        """Time of the protocol exchange after the cohort is fixed: slowest survivor."""
        return max(
            (
                self.profiles[c].upload_seconds(outcome.upload_bytes.get(c, 0))
                + self.profiles[c].download_seconds(outcome.download_bytes.get(c, 0))
                for c in outcome.survivors
            ),
            default=0.0,
        )

    # -- synchronous rounds ------------------------------------------------------------
    def _completed(self, complete: CompleteFn | None) -> None:
        self.completion_times.append(self.now)
        self.version += 1
        if complete is not None:
            complete(self.now)

    def run_sync(
        self,
        train: TrainFn,
        aggregate: AggregateFn,
        complete: CompleteFn | None = None,
        *,
        train_many: TrainManyFn | None = None,
    ) -> None:
        cfg = self.config
        deadline = cfg.aggregation.timeout_s
        while self.version < cfg.rounds and not self.stopped:
            cohort = draw_cohort(cfg, rng=self.rng, secret_rng=self.cohort_rng)
            updates: list[ClientUpdate] = []
            finish: dict[int, float] = {}
            drops = [self._drop_stage() for _ in cohort]  # training draws nothing from self.rng
            results = (
                train_many(cohort, self.version)
                if train_many is not None
                else [train(cid, self.version) for cid in cohort]
            )
            for cid, drop, result in zip(cohort, drops, results, strict=True):
                prof = self.profiles[cid]
                finish[cid] = prof.download_seconds(self.model_bytes) + prof.train_seconds(result.samples_processed)
                if deadline is not None and finish[cid] > deadline:
                    drop = self.stages[0]  # missed the deadline: silent from the first stage
                updates.append(ClientUpdate(cid, result.delta, result.base_weight, drop))
            live = [finish[u.client_id] for u in updates if u.drop_stage is None]
            ready = max(live, default=0.0)
            if deadline is not None:
                ready = min(ready, deadline) if live else deadline
            plan = CohortPlan(updates, {c: 0 for c in cohort}, {}, self.now + ready)
            outcome = aggregate(plan)
            self.now = plan.close_time + self._exchange_seconds(outcome)
            self._completed(complete)

    # -- semi-asynchronous buffered aggregation --------------------------------------
    def run_async(
        self,
        train: TrainFn,
        aggregate: AggregateFn,
        complete: CompleteFn | None = None,
        *,
        train_many: TrainManyFn | None = None,
    ) -> None:
        cfg = self.config
        k = cfg.buffer_size
        timeout = cfg.aggregation.timeout_s
        st = cfg.staleness
        events: list[_Event] = []
        seq = 0
        pending: dict[int, tuple[TrainResult, int]] = {}  # training clients: result, base version
        buffer: list[int] = []
        busy: set[int] = set()
        buffer_epoch = 0  # invalidates timeout events of buffers already closed

        def push(t: float, kind: str, cid: int) -> None:
            nonlocal seq
            heapq.heappush(events, _Event(t, seq, kind, cid))
            seq += 1

        def start(cid: int, t: float, result: TrainResult) -> None:
            pending[cid] = (result, self.version)
            busy.add(cid)
            prof = self.profiles[cid]
            done = t + prof.download_seconds(self.model_bytes) + prof.train_seconds(result.samples_processed)
            push(done, "ready", cid)

        def fill(t: float) -> None:
            idle = [c for c in range(cfg.clients.num) if c not in busy]
            need = cfg.cohort_size - len(busy)
            if need > 0 and idle:
                chosen = sorted(int(i) for i in self.rng.choice(idle, min(need, len(idle)), replace=False))
                results = (
                    train_many(chosen, self.version)
                    if train_many is not None
                    else [train(cid, self.version) for cid in chosen]
                )
                for cid, result in zip(chosen, results, strict=True):
                    start(cid, t, result)

        def close(t: float) -> None:
            nonlocal buffer, buffer_epoch
            members, buffer = buffer, []
            buffer_epoch += 1
            updates: list[ClientUpdate] = []
            staleness: dict[int, int] = {}
            rejected: dict[int, str] = {}
            for cid in members:
                result, base = pending.pop(cid)
                tau = self.version - base
                staleness[cid] = tau
                if tau > st.max_staleness:
                    rejected[cid] = f"staleness {tau} exceeds the bound {st.max_staleness}"
                    continue
                w = staleness_weight(tau, fn=st.fn, a=st.a, b=st.b)
                updates.append(ClientUpdate(cid, result.delta, result.base_weight * w, self._drop_stage()))
            plan = CohortPlan(updates, staleness, rejected, t)
            outcome = aggregate(plan)
            self.now = t + self._exchange_seconds(outcome)
            self._completed(complete)
            for cid in members:
                busy.discard(cid)
            fill(self.now)

        fill(0.0)
        while self.version < cfg.rounds and events and not self.stopped:
            ev = heapq.heappop(events)
            if ev.kind == "timeout":
                if ev.client == buffer_epoch and buffer:
                    close(max(ev.time, self.now))
                continue
            # A client that finished while the previous buffer's exchange was running
            # reports ready once the server is free again.
            t = max(ev.time, self.now)
            buffer.append(ev.client)
            if len(buffer) == 1 and timeout is not None:
                push(t + timeout, "timeout", buffer_epoch)
            if len(buffer) >= k:
                close(t)
