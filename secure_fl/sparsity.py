"""Sparse updates over a PUBLIC support.

Per-client top-k index sets leak which parameters a client's data moved most, so they
are never sent. Every client of an aggregation sends a dense vector over the same public
support ``S`` (sorted positions in the flat parameter vector); secure aggregation and
DP run on that dense vector of length ``|S|``, and the L2 clip bounds it, so the
sensitivity is unchanged by sparsification. Supports:

* ``random_k``: ``k = ceil(density * d)`` positions drawn from a public per-round seed
  (everyone derives the same set; the seed is in the cohort set-up and the ledger).
* ``prune``: global magnitude pruning held by the server (Zhu & Gupta 2017 schedule,
  no weight rewinding, lottery-ticket style): the kept positions form the support and
  the mask ships with the model; pruned weights stay exactly zero.

The support description (kind, density, seed or mask hash) is recorded in the ledger.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from crypto.prg import Csprng
from secure_fl.errors import CheckpointError, ConfigError

__all__ = ["MagnitudePruner", "Support", "full_support", "random_k_support"]

IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Support:
    """A public set of parameter positions shared by every client of an aggregation."""

    indices: IndexArray
    dim: int
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.indices.size)

    @property
    def density(self) -> float:
        return self.size / self.dim

    def gather(self, vector: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """The dense vector over the support."""
        return np.asarray(vector, dtype=np.float32)[self.indices]

    def without(self, local: npt.NDArray[np.bool_]) -> Support:
        """This support minus the positions marked ``local`` (client-local layers)."""
        if not local.any():
            return self
        keep = self.indices[~local[self.indices]]
        return Support(keep, self.dim, {**self.description, "local_excluded": int(local.sum())})

    def scatter(self, values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """A full-length vector that is ``values`` on the support and zero elsewhere."""
        out = np.zeros(self.dim, dtype=np.float64)
        out[self.indices] = values
        return out


def full_support(dim: int) -> Support:
    return Support(np.arange(dim, dtype=np.int64), dim, {"kind": "none", "density": 1.0})


def random_k_support(dim: int, *, density: float, round_seed: bytes) -> Support:
    """``ceil(density * dim)`` positions chosen uniformly from the public ``round_seed``.

    The positions are the smallest ``k`` of ``dim`` independent 64-bit keystream values
    (a uniformly random k-subset up to ties of probability < dim^2 / 2^64).
    """
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density}", field="sparsity.density")
    k = max(1, math.ceil(density * dim))
    keys = Csprng(round_seed).uniform_mod_pow2(dim, bits=64)
    idx = np.sort(np.argpartition(keys, k - 1)[:k]).astype(np.int64)
    return Support(idx, dim, {"kind": "random_k", "density": density, "seed": round_seed.hex()})


@dataclass
class MagnitudePruner:
    """Global magnitude pruning on the schedule of Zhu & Gupta (2017):

        s_t = s_f + (s_0 - s_f) * (1 - (t - t_0) / (t_end - t_0))^3,   t_0 <= t <= t_end

    from sparsity ``s_0 = 0`` at version ``t_0`` to the final sparsity ``s_f`` at ``t_end``;
    the mask is recomputed every ``every`` versions among the weights still alive (pruned
    weights never come back: no rewinding), keeping the largest magnitudes.
    ``prunable`` marks the positions pruning may touch (e.g. not biases); ``s_f`` is
    chosen so that the *whole* vector ends at ``density`` (the kept non-prunable
    positions count against it), which is what the upload size depends on.
    """

    dim: int
    density: float
    start: int
    end: int
    every: int = 1
    prunable: npt.NDArray[np.bool_] | None = None
    mask: npt.NDArray[np.bool_] = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.density <= 1:
            raise ConfigError(f"density must be in (0, 1], got {self.density}", field="sparsity.density")
        self.mask = np.ones(self.dim, dtype=bool)
        if self.prunable is None:
            self.prunable = np.ones(self.dim, dtype=bool)

    def final_sparsity(self) -> float:
        """Sparsity among prunable positions that leaves ``density * dim`` positions alive."""
        prunable = self.prunable if self.prunable is not None else np.ones(self.dim, dtype=bool)
        n_prunable = int(prunable.sum())
        if n_prunable == 0:
            return 0.0
        keep = self.density * self.dim - (self.dim - n_prunable)
        return float(min(1.0, max(0.0, 1.0 - keep / n_prunable)))

    def target_sparsity(self, version: int) -> float:
        s_f = self.final_sparsity()
        if version <= self.start:
            return 0.0
        if version >= self.end:
            return s_f
        frac = (version - self.start) / max(1, self.end - self.start)
        return s_f * (1.0 - (1.0 - frac) ** 3)

    def update(self, weights: npt.NDArray[np.floating], version: int) -> npt.NDArray[np.bool_]:
        """Recompute the mask for ``version`` (no-op between pruning steps)."""
        if version % self.every and version < self.end:
            return self.mask
        prunable = self.prunable if self.prunable is not None else np.ones(self.dim, dtype=bool)
        n_prunable = int(prunable.sum())
        n_zero = int(round(self.target_sparsity(version) * n_prunable))
        alive = self.mask & prunable
        already = n_prunable - int(alive.sum())
        extra = n_zero - already
        if extra > 0:
            mags = np.where(alive, np.abs(np.asarray(weights, dtype=np.float64)), np.inf)
            drop = np.argpartition(mags, extra - 1)[:extra]
            self.mask = self.mask.copy()
            self.mask[drop] = False
        return self.mask

    def support(self) -> Support:
        idx = np.flatnonzero(self.mask).astype(np.int64)
        digest = hashlib.sha256(np.packbits(self.mask).tobytes()).hexdigest()
        return Support(
            idx, self.dim, {"kind": "prune", "density": idx.size / self.dim, "mask_sha256": digest}
        )

    def state_dict(self) -> dict[str, Any]:
        """The schedule parameters and the current mask (public: it ships with the model)."""
        return {
            "dim": self.dim,
            "density": self.density,
            "start": self.start,
            "end": self.end,
            "every": self.every,
            "mask": self.mask.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the mask; :class:`CheckpointError` if the schedule differs from this
        pruner's or the mask is not a boolean vector of length ``dim`` that keeps every
        non-prunable position."""
        for key in ("dim", "density", "start", "end", "every"):
            if state.get(key) != getattr(self, key):
                raise CheckpointError(
                    f"checkpoint pruner has {key} = {state.get(key)!r}, this run {getattr(self, key)!r}",
                    field=f"sparsity.{key}" if key == "density" else None,
                )
        mask = np.asarray(state.get("mask"))
        if mask.dtype != np.bool_ or mask.shape != (self.dim,):
            raise CheckpointError(f"pruner mask is not a boolean vector of length {self.dim}")
        prunable = self.prunable if self.prunable is not None else np.ones(self.dim, dtype=bool)
        if not mask[~prunable].all():
            raise CheckpointError("pruner mask prunes positions that are not prunable")
        self.mask = mask.copy()
