"""What the empirical privacy tests need from the software that produced a run.

``audits`` checks a run directory; it does not know how to train the run's model. The
empirical tests of :mod:`audits.empirical` (canary re-run, membership inference,
gradient inversion) therefore receive a :class:`JobReplay` from their caller: an object
that can re-run a reduced version of the audited job through its real aggregator,
compute losses of its released model, and take one training step on one record.
``secure-fl audit`` supplies one built from the run's ``config.toml`` (the secure-fl
runner's building blocks); any other producer of run directories can supply its own.
Dependencies point one way: the producer depends on ``audits``, never the reverse.

Every vector is a flat ``float64`` parameter (or update) vector of the job's model, of
length :attr:`JobFacts.dimension`; records are ``float32`` feature arrays and ``int64``
labels, one row per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from privacy.events import DPEvent

__all__ = [
    "CanaryRerun",
    "JobFacts",
    "JobReplay",
    "Records",
    "ReplayFactory",
    "facts_json",
]

Vec = npt.NDArray[np.float64]


@dataclass(frozen=True)
class JobFacts:
    """The configuration facts of the audited job that the empirical tests read.

    ``cohort_size`` is the number of clients per aggregation (``clients.per_round``, or
    all clients); ``clip`` the L2 bound of one client's update (its sensitivity);
    ``bits`` the SecAgg field width; ``lr`` the local learning rate of one SGD step.
    """

    protocol: str
    mechanism: str
    clip: float
    noise_multiplier: float
    bits: int
    num_clients: int
    cohort_size: int
    rounds: int
    lr: float
    reproducible_noise: bool
    dimension: int
    feature_shape: tuple[int, ...]
    sparsity: str = "none"
    aggregation_mode: str = "sync"


@dataclass(frozen=True)
class Records:
    """A set of records (features ``x``, labels ``y``)."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]

    @property
    def size(self) -> int:
        return int(self.y.size)


@dataclass(frozen=True)
class CanaryRerun:
    """Outcome of :meth:`JobReplay.canary_rerun`: the model before and after the re-run
    (flat vectors), the DP events its aggregations emitted (the noise actually added)
    and the aggregations that released an aggregate."""

    initial: Vec
    final: Vec
    dp_events: tuple[DPEvent, ...]
    aggregations: int


class JobReplay(Protocol):
    """A re-runnable view of the audited job (see the module docstring)."""

    @property
    def facts(self) -> JobFacts:
        """The job's configuration facts."""
        ...

    def canary_rerun(
        self, canaries: Sequence[Sequence[tuple[int, Vec]]], *, real_clients: int, seed: int
    ) -> CanaryRerun:
        """Re-run ``len(canaries)`` synchronous aggregations from the job's initial model.

        Aggregation ``t`` (1-based ``t + 1``) takes ``real_clients`` real clients, each
        training locally from the current model as the job does, plus one extra client
        per entry ``(canary_id, update)`` of ``canaries[t]`` whose update is exactly
        ``update`` (weight 1). All updates go through the job's real aggregator
        (clipping, noise shares, masking or encryption) in a random order, and the server
        optimizer applies each released mean. ``seed`` drives the choice of real clients
        and their batch order (simulation randomness; DP noise comes from the CSPRNG).
        """
        ...

    def member_records(self) -> Records:
        """Every client's training records (the members of the released model)."""
        ...

    def nonmember_records(self) -> Records:
        """Held-out test records (global and per client): never trained on."""
        ...

    def released_losses(self, records: Records) -> Vec:
        """Per-record cross-entropy loss of the released model (``model.pt``)."""
        ...

    def reference_losses(
        self, train: Records, evaluate: Sequence[Records], *, epochs: int, seed: int
    ) -> list[Vec]:
        """Train a fresh model of the job's architecture on ``train`` for ``epochs``
        epochs (the job's local training) and return its per-record losses on each set
        of ``evaluate``."""
        ...

    def first_linear_layer(self) -> tuple[int, int] | None:
        """``(out_features, in_features)`` when the flat vector starts with the weight
        (row-major) and then the bias of a fully connected first layer; else ``None``."""
        ...

    def first_records(self, count: int) -> list[tuple[npt.NDArray[np.float32], int]]:
        """The first training record (flattened features, label) of the first ``count``
        clients that hold data."""
        ...

    def one_step_update(self, x: npt.NDArray[np.float32], y: int) -> Vec:
        """The update (new minus old flat parameters) of one SGD step at the job's
        learning rate on the single record ``(x, y)``, from the released model."""
        ...


class ReplayFactory(Protocol):
    """Builds the :class:`JobReplay` of a run directory (raises a ``SecureFLError``
    naming the file when the directory cannot be replayed)."""

    def __call__(self, run_dir: Path, /) -> JobReplay: ...


def facts_json(facts: JobFacts) -> dict[str, Any]:
    """JSON-ready copy of ``facts`` (for ``audit.json``)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(facts).items()}
