"""Each aggregation's public support, the pruner, and the memory-budget choice.

The support is public and shared (DESIGN.md section 2): per-client top-k index sets
are never sent. It comes from

* ``sparsity.kind = "random_k"``: ``k = density * d`` indices drawn from a public
  per-aggregation seed ``SHA-256("secure-fl/random-k/{seed}/{version}")``;
* ``"prune"``: the server's global magnitude-pruning mask (:class:`MagnitudePruner`,
  a schedule from 0 to 60% of the rounds, no rewinding); clients train the unpruned
  weights only;
* ``"memory_budget"``: a subset of whole tensors whose training fits the memory budget
  (:mod:`secure_fl.memory_budget`), chosen once per run (:func:`choose_memory_subset`);
  clients train that subset only;

and local layers (FedBN, :mod:`secure_fl.personalization`) are removed from every
support: they never leave the site.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from secure_fl.accounting import unnoised_statistics_allowed
from secure_fl.config import RunConfig
from secure_fl.data import FederatedData
from secure_fl.memory_budget import (
    TensorInfo,
    feasible_subsets,
    subset_indices,
    subset_memory,
)
from secure_fl.models import get_flat, set_flat
from secure_fl.sparsity import MagnitudePruner, Support, full_support, random_k_support
from secure_fl.training import evaluate, train_local

__all__ = ["MemoryChoice", "choose_memory_subset", "make_pruner", "support_for"]


@dataclass(frozen=True)
class MemoryChoice:
    """The run's memory-budget subset: its support, frozen mask, memory and report."""

    support: Support
    frozen: npt.NDArray[np.bool_]
    memory_bytes: int
    report: dict[str, Any]


def choose_memory_subset(
    config: RunConfig, model: nn.Module, data: FederatedData, layout: list[TensorInfo]
) -> MemoryChoice:
    """Accuracy-aware search over the maximal tensor subsets that fit the budget
    (:mod:`secure_fl.memory_budget`): each candidate is scored by local training of that
    subset on a sample of clients from the initial model, evaluated on the clients' own
    validation splits; the best mean validation accuracy wins.

    In a deployment each probe client reports one scalar (its validation accuracy); these
    probe scalars carry no noise and are not covered by the DP guarantee. Under DP the
    probe therefore runs only with ``dp.allow_unnoised_site_metrics`` (the summary and the
    audit then list it as a hazard); otherwise the choice uses no client data: the
    feasible subset that trains the most parameters wins.
    """
    batch = config.train.batch_size
    candidates = feasible_subsets(layout, budget_fraction=config.sparsity.density, batch_size=batch)
    dim = sum(t.size for t in layout)
    w0 = get_flat(model)
    rng = np.random.default_rng([config.seed, 0x3E3])
    probe = sorted(
        int(c) for c in rng.choice(config.clients.num, min(10, config.clients.num), replace=False)
    )
    scores: list[float] = []
    if not unnoised_statistics_allowed(config):
        probe = []
        scores = [float(len(subset_indices(layout, cand))) for cand in candidates]
    for cand in candidates if probe else ():
        frozen = np.ones(dim, dtype=bool)
        frozen[subset_indices(layout, cand)] = False
        accs = []
        for cid in probe:
            client = data.clients[cid]
            set_flat(model, w0)
            train_local(model, client.x_train, client.y_train, config.train, seed=config.seed + cid, frozen=frozen)
            x_val, y_val = (
                (client.x_test, client.y_test) if client.y_test.size else (client.x_train, client.y_train)
            )
            accs.append(evaluate(model, x_val, y_val).accuracy)
        scores.append(float(np.mean(accs)))
    set_flat(model, w0)
    best = int(np.argmax(scores))
    chosen = candidates[best]
    idx = subset_indices(layout, chosen)
    frozen = np.ones(dim, dtype=bool)
    frozen[idx] = False
    memory = subset_memory(layout, chosen, batch_size=batch)
    full = subset_memory(layout, frozenset(range(len(layout))), batch_size=batch)
    report = {
        "budget_fraction": config.sparsity.density,
        "full_training_memory_bytes": full,
        "chosen_memory_bytes": memory,
        "chosen_tensors": [layout[i].name for i in sorted(chosen)],
        "trained_parameters": int(idx.size),
        "candidates": [
            {
                "tensors": [layout[i].name for i in sorted(c)],
                "memory_bytes": subset_memory(layout, c, batch_size=batch),
                ("probe_accuracy" if probe else "trained_parameters"): sc,
            }
            for c, sc in zip(candidates, scores, strict=True)
        ],
        "probe_clients": probe,
        "selection": "probe accuracy on clients' validation splits (unnoised)"
        if probe
        else "most trained parameters (no client data used)",
    }
    desc = {"kind": "memory_budget", "density": idx.size / dim, "tensors": report["chosen_tensors"]}
    return MemoryChoice(Support(idx, dim, desc), frozen, memory, report)


def make_pruner(config: RunConfig, model: nn.Module, dim: int) -> MagnitudePruner | None:
    """The run's magnitude pruner (``sparsity.kind = "prune"``): weight matrices and
    kernels are pruned, biases (1-D tensors) kept dense."""
    if config.sparsity.kind != "prune":
        return None
    prunable = np.concatenate(
        [np.full(p.numel(), p.dim() > 1) for p in model.parameters() if p.requires_grad]
    )
    end = max(1, int(0.6 * config.rounds))
    return MagnitudePruner(dim=dim, density=config.sparsity.density, start=0, end=end, prunable=prunable)


def support_for(config: RunConfig, version: int, dim: int, pruner: MagnitudePruner | None) -> Support:
    """The public support of aggregation ``version`` (before removing local layers)."""
    if config.sparsity.kind == "random_k":
        seed = hashlib.sha256(f"secure-fl/random-k/{config.seed}/{version}".encode()).digest()
        return random_k_support(dim, density=config.sparsity.density, round_seed=seed)
    if pruner is not None:
        return pruner.support()
    return full_support(dim)
