"""Each aggregation's public support, the pruner, and the memory-budget choice.

The support is public and shared (docs/architecture.md): per-client top-k index sets
are never sent. It comes from

* ``sparsity.kind = "random_k"``: ``k = density * d`` indices drawn from a public
  per-aggregation seed ``SHA-256("secure-fl/random-k/{seed}/{version}")``;
* ``"prune"``: the server's global magnitude-pruning mask (:class:`MagnitudePruner`,
  a schedule from 0 to 60% of the rounds, no rewinding); clients train the unpruned
  weights only;
* ``"memory_budget"``: a subset of whole tensors whose training fits the memory budget
  (:mod:`secure_fl.memory_budget`), chosen once per run by the server engine's probe
  phase: the candidates (:func:`memory_candidates`), each probe site's scores
  (:func:`probe_accuracies`, run at the site), the choice (:func:`memory_choice`);
  clients train that subset only;

and local layers (FedBN, :mod:`secure_fl.personalization`) are removed from every
support: they never leave the site.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from secure_fl.config import RunConfig, TrainConfig
from secure_fl.data import SiteData
from secure_fl.errors import DataError
from secure_fl.memory_budget import (
    TensorInfo,
    feasible_subsets,
    subset_indices,
    subset_memory,
)
from secure_fl.sparsity import MagnitudePruner, Support, full_support, random_k_support
from secure_fl.training import LossFn, evaluate, train_local

__all__ = [
    "MemoryChoice",
    "frozen_mask",
    "make_pruner",
    "memory_candidates",
    "memory_choice",
    "probe_accuracies",
    "probe_positions",
    "support_for",
]


@dataclass(frozen=True)
class MemoryChoice:
    """The run's memory-budget subset: its support, frozen mask, memory and report."""

    support: Support
    frozen: npt.NDArray[np.bool_]
    memory_bytes: int
    report: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        """The choice as checkpoint data (:mod:`secure_fl.engine.checkpoint` trees)."""
        return {
            "indices": self.support.indices.astype(np.int64),
            "dim": self.support.dim,
            "description": copy.deepcopy(self.support.description),
            "frozen": self.frozen.astype(bool),
            "memory_bytes": self.memory_bytes,
            "report": copy.deepcopy(self.report),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MemoryChoice:
        """The inverse of :meth:`state_dict` (``ValueError`` naming what is wrong)."""
        try:
            dim = int(state["dim"])
            indices = np.asarray(state["indices"], dtype=np.int64)
            frozen = np.asarray(state["frozen"], dtype=bool)
            choice = cls(Support(indices, dim, dict(state["description"])), frozen, int(state["memory_bytes"]),
                         dict(state["report"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed memory-budget choice in the snapshot: {exc!r}") from None
        trained = np.flatnonzero(~frozen)
        if frozen.shape != (dim,) or not np.array_equal(trained, indices):
            raise ValueError("malformed memory-budget choice in the snapshot: support and frozen mask disagree")
        return choice


def memory_candidates(config: RunConfig, layout: list[TensorInfo]) -> list[frozenset[int]]:
    """The maximal tensor subsets that fit ``sparsity.density`` of full-training memory
    (:func:`secure_fl.memory_budget.feasible_subsets`), largest first."""
    return feasible_subsets(layout, budget_fraction=config.sparsity.density, batch_size=config.train.batch_size)


def probe_positions(config: RunConfig, num: int) -> list[int]:
    """Who is asked to score the candidates: up to 10 positions in the sorted list of the
    ``num`` clients that passed hello, drawn without replacement from a public generator
    seeded by ``(seed, 0x3E3)``."""
    rng = np.random.default_rng([config.seed, 0x3E3])
    return sorted(int(c) for c in rng.choice(num, min(10, num), replace=False))


def frozen_mask(layout: list[TensorInfo], subset: frozenset[int]) -> npt.NDArray[np.bool_]:
    """``True`` at every flat position outside the tensors of ``subset``."""
    frozen = np.ones(sum(t.size for t in layout), dtype=bool)
    frozen[subset_indices(layout, subset)] = False
    return frozen


def probe_accuracies(
    model: nn.Module,
    layout: list[TensorInfo],
    candidates: Sequence[frozenset[int]],
    data: SiteData,
    train: TrainConfig,
    *,
    seed: int,
    loss_fn: LossFn | None = None,
) -> list[float]:
    """One site's scores of the candidate subsets, from ``model`` as it is (the run's
    initial weights): for each candidate ``S`` the model is reset to that starting state
    (parameters and buffers), only the tensors of ``S`` are trained (the run's local
    training, batch order from ``seed``), and ``acc_S`` is its accuracy on the site's
    validation split (its test split; its training split when it holds no test split).
    The model is left in its starting state.

    Runs at the site (the ``PROBE`` message): only ``[acc_S for S in candidates]`` leaves
    it, one unnoised scalar per candidate, outside the DP guarantee (see
    :func:`memory_choice`)."""
    x_val, y_val = (data.x_test, data.y_test) if data.y_test.size else (data.x_train, data.y_train)
    if data.y_train.size == 0:
        raise DataError("the site holds no training examples to probe with")
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    scores: list[float] = []
    for cand in candidates:
        model.load_state_dict(start)
        train_local(model, data.x_train, data.y_train, train, seed=seed, frozen=frozen_mask(layout, cand),
                    loss_fn=loss_fn)
        scores.append(float(evaluate(model, x_val, y_val, loss_fn=loss_fn).accuracy))
    model.load_state_dict(start)
    return scores


def memory_choice(
    config: RunConfig,
    layout: list[TensorInfo],
    candidates: Sequence[frozenset[int]],
    *,
    probe: Sequence[tuple[Any, Sequence[float]]] = (),
    probe_excluded: Mapping[str, str] | None = None,
) -> MemoryChoice:
    """The run's subset from the probe sites' scores.

    Accuracy-aware search over the maximal tensor subsets that fit the budget
    (:mod:`secure_fl.memory_budget`): with ``probe`` = ``[(client, [acc_S per
    candidate]), ...]`` (the sites that answered, in probe order) the candidate with the
    best mean ``(1/m) sum_i acc_S,i`` over the ``m`` answering sites wins. These scalars
    carry no noise and are not covered by the DP guarantee: under DP the probe runs only
    with ``dp.allow_unnoised_site_metrics`` (the summary and the audit then list it as a
    hazard). Without ``probe`` (the probe was not allowed, or no site answered:
    ``probe_excluded`` says why for each asked site) the choice uses no client data: the
    feasible subset that trains the most parameters wins.
    """
    batch = config.train.batch_size
    answered = [c for c, _ in probe]
    if answered:
        scores = [float(np.mean([accs[k] for _, accs in probe])) for k in range(len(candidates))]
    else:
        scores = [float(len(subset_indices(layout, cand))) for cand in candidates]
    best = int(np.argmax(scores))
    chosen = candidates[best]
    idx = subset_indices(layout, chosen)
    dim = sum(t.size for t in layout)
    memory = subset_memory(layout, chosen, batch_size=batch)
    full = subset_memory(layout, frozenset(range(len(layout))), batch_size=batch)
    if answered:
        selection = "probe accuracy on clients' validation splits (unnoised)"
    elif probe_excluded:
        selection = "most trained parameters (no client data used; no probe client answered)"
    else:
        selection = "most trained parameters (no client data used)"
    report: dict[str, Any] = {
        "budget_fraction": config.sparsity.density,
        "full_training_memory_bytes": full,
        "chosen_memory_bytes": memory,
        "chosen_tensors": [layout[i].name for i in sorted(chosen)],
        "trained_parameters": int(idx.size),
        "candidates": [
            {
                "tensors": [layout[i].name for i in sorted(c)],
                "memory_bytes": subset_memory(layout, c, batch_size=batch),
                ("probe_accuracy" if answered else "trained_parameters"): sc,
            }
            for c, sc in zip(candidates, scores, strict=True)
        ],
        "probe_clients": answered,
        "selection": selection,
    }
    if probe_excluded:
        report["probe_excluded"] = dict(probe_excluded)
    desc = {"kind": "memory_budget", "density": idx.size / dim, "tensors": report["chosen_tensors"]}
    return MemoryChoice(Support(idx, dim, desc), frozen_mask(layout, chosen), memory, report)


def make_pruner(config: RunConfig, model: nn.Module, dim: int) -> MagnitudePruner | None:
    """The run's magnitude pruner (``sparsity.kind = "prune"``): weight matrices and
    kernels are pruned, biases (1-D tensors) kept dense."""
    if config.sparsity.kind != "prune":
        return None
    prunable = np.concatenate(
        [np.full(p.numel(), p.dim() > 1) for p in model.parameters() if p.requires_grad]
    )
    end = max(1, int(0.6 * config.aggregations))
    return MagnitudePruner(dim=dim, density=config.sparsity.density, start=0, end=end, prunable=prunable)


def support_for(config: RunConfig, version: int, dim: int, pruner: MagnitudePruner | None) -> Support:
    """The public support of aggregation ``version`` (before removing local layers)."""
    if config.sparsity.kind == "random_k":
        seed = hashlib.sha256(f"secure-fl/random-k/{config.seed}/{version}".encode()).digest()
        return random_k_support(dim, density=config.sparsity.density, round_seed=seed)
    if pruner is not None:
        return pruner.support()
    return full_support(dim)
