"""One simulated client's local job: download the global model, train, form the update.

The parent process describes each job (:class:`TrainJob`: client id, the training seed,
the seed of the client's record-level DP CSPRNG) in cohort order; :class:`ClientTrainer`
runs it, in the parent or in a worker of :class:`secure_fl.workers.WorkerPool`, and the
result is the same either way. The global weights and the round's frozen mask (pruning or
memory budget) are read from shared memory that the parent writes before each batch, so
they reach each worker once per aggregation, not once per client.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from torch import nn

from crypto.prg import Csprng
from privacy.events import DPEvent
from secure_fl.client_encode import EncodeJob
from secure_fl.config import RunConfig
from secure_fl.data import FederatedData
from secure_fl.models import get_flat, set_flat
from secure_fl.personalization import LocalLayers
from secure_fl.simulator import TrainResult
from secure_fl.training import LossFn, train_local, train_local_dp
from secure_fl.workers import SharedArray

__all__ = ["ClientTrainer", "TrainJob", "TrainOutput"]


@dataclass(frozen=True)
class TrainJob:
    """What a worker needs to run one client's local training (picklable, small)."""

    client_id: int
    seed: int  # batch order: simulation randomness, from the public seed
    frozen: bool  # apply the shared frozen mask (pruning / memory budget)
    dp_seed: bytes | None = None  # key of the client's DP-SGD CSPRNG (record-level DP)


@dataclass(frozen=True)
class TrainOutput:
    result: TrainResult
    event: DPEvent | None  # record-level DP event of this local training, if any


class ClientTrainer:
    """Runs :class:`TrainJob` s on ``model`` (a private copy in each forked worker).

    ``delta = w_local - w_global``; the FedAvg base weight is ``n_i / max_j n_j`` with
    ``aggregation.weighting = "samples"`` and no DP, else 1 (under DP the denominator must
    be public and the sensitivity the clip bound).
    """

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        data: FederatedData,
        local: LocalLayers,
        *,
        dim: int,
        loss_fn: LossFn | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.data = data
        self.local = local
        self.loss_fn = loss_fn
        self.max_train = max(c.num_train for c in data.clients) or 1
        self.weights = SharedArray(dim, np.float32)
        self.frozen = SharedArray(dim, np.bool_)

    def publish(
        self, weights: npt.NDArray[np.float32], frozen: npt.NDArray[np.bool_] | None
    ) -> None:
        """Parent side, between batches: the global weights and frozen mask of the round."""
        self.weights.write(weights)
        if frozen is not None:
            self.frozen.write(frozen)

    def run(self, job: TrainJob | EncodeJob) -> TrainOutput | npt.NDArray[np.uint32]:
        """The pool's job function: local training, or a client's DP encoding."""
        if isinstance(job, EncodeJob):
            return job.run()
        return self(job)

    def __call__(self, job: TrainJob) -> TrainOutput:
        config = self.config
        model = self.model
        client = self.data.clients[job.client_id]
        w_global = self.weights.array.copy()
        set_flat(model, w_global)
        self.local.load(model, job.client_id)
        event: DPEvent | None = None
        if job.dp_seed is not None:
            steps, event = train_local_dp(
                model,
                client.x_train,
                client.y_train,
                config.train,
                noise_multiplier=config.dp.record_noise_multiplier,
                max_grad_norm=config.dp.record_clip,
                rng=Csprng(job.dp_seed),
                loss_fn=self.loss_fn,
            )
        else:
            frozen = self.frozen.array.copy() if job.frozen else None
            steps = train_local(
                model,
                client.x_train,
                client.y_train,
                config.train,
                seed=job.seed,
                frozen=frozen,
                loss_fn=self.loss_fn,
            )
        self.local.save(model, job.client_id)
        delta = get_flat(model) - w_global
        by_samples = config.aggregation.weighting == "samples" and config.dp.mechanism == "none"
        base = client.num_train / self.max_train if by_samples else 1.0
        return TrainOutput(TrainResult(delta, steps * config.train.batch_size, base), event)
