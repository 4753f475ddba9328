"""One client's privacy encoding as a picklable job (runs in a worker of the pool).

In the SecAgg DP path each client rotates, scales, randomly rounds and adds its exact
integer noise share (:meth:`privacy.mechanisms.distributed._DistributedMechanism.client_encode`).
That is the most expensive client step after training, and it is independent across
clients, so :class:`secure_fl.protocols.SecAggAggregator` can hand it to
``simulation.workers`` processes. Each job carries the key of the client's own CSPRNG,
drawn by the aggregator in cohort order, so the encodings are the same for any number of
workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from crypto.prg import Csprng

__all__ = ["ClientEncoder", "EncodeJob"]


class ClientEncoder(Protocol):
    def client_encode(
        self, x: npt.ArrayLike, *, round_seed: bytes, rng: Csprng
    ) -> npt.NDArray[np.uint32]: ...


@dataclass(frozen=True)
class EncodeJob:
    """``mechanism.client_encode(vector, round_seed, Csprng(rng_seed))``."""

    mechanism: ClientEncoder
    vector: npt.NDArray[np.float64]
    round_seed: bytes  # public: the round's rotation seed
    rng_seed: bytes  # private: the client's CSPRNG key (rounding and noise)

    def run(self) -> npt.NDArray[np.uint32]:
        return self.mechanism.client_encode(
            self.vector, round_seed=self.round_seed, rng=Csprng(self.rng_seed)
        )
