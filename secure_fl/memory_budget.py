"""Memory-budget parameter subsets: train and send only what the tightest device affords.

Devices differ in memory; the one with the least memory bounds what every cohort member
can train. Training memory of a subset ``S`` of parameter tensors (float32, SGD with
momentum):

    M(S) = 4 * ( d                      every parameter is held for the forward pass
               + 2 * |S|                gradients and optimizer state of trained tensors
               + B * sum_{l >= l0(S)} a_l )   activations kept for backprop from the
                                              first trained layer l0(S) on (B = batch size)

``sparsity.density`` states the tightest device's budget as a fraction of the memory of
training the whole model, ``M(all)``. Among the subsets that fit, the server picks by an
*accuracy-aware search* (in the spirit of FedLTN / memory-adaptive FL): each maximal
feasible subset is scored by a probe at up to 10 sampled clients (each trains that subset
alone from the initial model on its own data and reports its accuracy on its own
validation split: the server engine's probe phase, :mod:`secure_fl.engine.support`), and
the subset with the best mean accuracy becomes the public support for the run. Without
the probe (unnoised site metrics not allowed, or no client answered) the subset training
the most parameters wins. The chosen subset, the memory model and the probe scores are
recorded in the run summary.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from torch import nn

from secure_fl.errors import ConfigError

__all__ = ["TensorInfo", "feasible_subsets", "subset_memory", "tensor_layout"]


@dataclass(frozen=True)
class TensorInfo:
    """One trainable tensor: its name, flat position range and the layer it belongs to."""

    name: str
    start: int
    size: int
    layer: int
    activation: int  # output width of its layer (per example)


def tensor_layout(model: nn.Module, feature_shape: tuple[int, ...]) -> list[TensorInfo]:
    """Flat-vector layout of ``model``'s trainable tensors with per-layer activation sizes."""
    import torch

    widths: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if any(p.requires_grad for p in mod.parameters(recurse=False)):
            hooks.append(
                mod.register_forward_hook(
                    lambda m, i, o, name=name: widths.__setitem__(name, int(o[0].numel()))
                )
            )
    with torch.no_grad():
        model.eval()
        model(torch.zeros(1, *feature_shape))
    for h in hooks:
        h.remove()
    out: list[TensorInfo] = []
    offset = 0
    layer_ids: dict[str, int] = {}
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mod_name = pname.rsplit(".", 1)[0] if "." in pname else ""
        layer = layer_ids.setdefault(mod_name, len(layer_ids))
        out.append(TensorInfo(pname, offset, p.numel(), layer, widths.get(mod_name, 0)))
        offset += p.numel()
    return out


def subset_memory(layout: list[TensorInfo], subset: frozenset[int], *, batch_size: int) -> int:
    """``M(S)`` in bytes (see module docstring); ``subset`` holds indices into ``layout``."""
    d = sum(t.size for t in layout)
    trained = sum(layout[i].size for i in subset)
    if not subset:
        return 4 * d
    first = min(layout[i].layer for i in subset)
    acts = {t.layer: t.activation for t in layout if t.layer >= first}
    return 4 * (d + 2 * trained + batch_size * sum(acts.values()))


def feasible_subsets(
    layout: list[TensorInfo], *, budget_fraction: float, batch_size: int, max_candidates: int = 8
) -> list[frozenset[int]]:
    """Maximal non-empty subsets of tensors whose training memory fits the budget,
    largest (most parameters) first, at most ``max_candidates``."""
    full = subset_memory(layout, frozenset(range(len(layout))), batch_size=batch_size)
    budget = budget_fraction * full
    n = len(layout)
    if n > 16:
        raise ConfigError(
            f"memory_budget searches subsets of at most 16 tensors; this model has {n}",
            field="sparsity.kind",
        )
    fits = [
        frozenset(c)
        for r in range(1, n + 1)
        for c in itertools.combinations(range(n), r)
        if subset_memory(layout, frozenset(c), batch_size=batch_size) <= budget
    ]
    maximal = [s for s in fits if not any(s < other for other in fits)]
    if not maximal:
        raise ConfigError(
            f"no subset of the model fits a memory budget of {budget_fraction:.0%} of full "
            f"training ({budget / 2**10:.1f} KiB of {full / 2**10:.1f} KiB); raise sparsity.density",
            field="sparsity.density",
        )
    maximal.sort(key=lambda s: -sum(layout[i].size for i in s))
    return maximal[:max_candidates]


def subset_indices(layout: list[TensorInfo], subset: frozenset[int]) -> np.ndarray:
    """Sorted flat positions of the tensors in ``subset``."""
    return np.concatenate(
        [np.arange(layout[i].start, layout[i].start + layout[i].size) for i in sorted(subset)]
    ).astype(np.int64)
