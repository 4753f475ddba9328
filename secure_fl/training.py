"""Local training and evaluation of a client's model (plain torch, CPU)."""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from crypto.prg import Csprng
from privacy.events import DPEvent, NoOpEvent
from secure_fl.config import TrainConfig

__all__ = [
    "Evaluation",
    "LossFn",
    "evaluate",
    "train_local",
    "train_local_dp",
]

#: A training loss ``loss_fn(logits, targets) -> scalar tensor`` averaged over the batch
#: (``torch.nn.CrossEntropyLoss()`` by default). Under record-level DP-SGD it must be a
#: mean over examples: Opacus scales per-example gradients accordingly.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    num_samples: int


def train_local(
    model: nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    config: TrainConfig,
    *,
    seed: int,
    frozen: npt.NDArray[np.bool_] | None = None,
    loss_fn: LossFn | None = None,
) -> int:
    """Train ``model`` in place for ``config.local_epochs`` epochs of minibatch SGD.

    Batch order comes from a torch generator seeded by ``seed`` (simulation randomness;
    DP noise is never drawn here). ``frozen`` marks flat parameter positions that must not
    change (pruned weights): their gradients are zeroed by hooks. ``loss_fn`` replaces
    the cross-entropy (:data:`LossFn`). Returns the number of optimizer steps taken.
    """
    if y.shape[0] == 0:
        return 0
    hooks = []
    if frozen is not None and frozen.any():
        offset = 0
        for p in (q for q in model.parameters() if q.requires_grad):
            n = p.numel()
            keep = torch.from_numpy(~frozen[offset : offset + n]).reshape(p.shape).to(p.dtype)
            hooks.append(p.register_hook(lambda g, keep=keep: g * keep))  # type: ignore[no-untyped-call]
            offset += n
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.train()
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    steps = 0
    for _ in range(config.local_epochs):
        perm = torch.randperm(yt.shape[0], generator=gen)
        for start in range(0, yt.shape[0], config.batch_size):
            idx = perm[start : start + config.batch_size]
            if has_bn and idx.numel() < 2:
                continue  # batch norm cannot normalise a single example
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
            steps += 1
    for h in hooks:
        h.remove()
    return steps


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _without_hook_chatter(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Opacus's hooks make torch warn "Full backward hook is firing" on every step (the
    input batch needs no gradient): nothing for the user, so it is filtered out."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return fn(*args, **kwargs)

    return wrapper


@_without_hook_chatter
def train_local_dp(
    model: nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    config: TrainConfig,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    rng: Csprng,
    loss_fn: LossFn | None = None,
) -> tuple[int, DPEvent]:
    """Record-level DP-SGD (Abadi et al. 2016) with Opacus, noise and Poisson batch
    sampling from the CSPRNG (:func:`privacy.dpsgd.make_private`).

    Trains a private copy of ``model`` and copies the result back, so Opacus's hooks
    never stay attached to the caller's module. Returns the number of optimizer steps
    and the record-level DP event of this local training (Poisson-subsampled Gaussian,
    Opacus's sample rate ``q = 1 / len(loader) = 1 / ceil(n / batch_size)``).

    A Poisson batch may be empty: the step still runs (forward and backward on the
    empty batch, so Opacus has zero-length per-sample gradients), adds its noise and
    counts toward the steps and the event, as the analysis assumes.
    """
    from torch.utils.data import DataLoader, TensorDataset

    from privacy.dpsgd import make_private

    if y.shape[0] == 0:
        return 0, NoOpEvent()
    work = copy.deepcopy(model)
    work.train()
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=min(config.batch_size, int(y.shape[0])),
    )
    opt = torch.optim.SGD(work.parameters(), lr=config.lr, momentum=config.momentum)
    private = make_private(
        work, opt, loader, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, rng=rng
    )
    module, dp_opt, dp_loader = private
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    for _ in range(config.local_epochs):
        for xb, yb in dp_loader:
            dp_opt.zero_grad(set_to_none=True)
            if yb.shape[0] == 0:  # Poisson sampling can draw an empty batch: noise only
                empty_loss = nn.functional.cross_entropy(module(xb), yb, reduction="sum")
                empty_loss.backward()  # type: ignore[no-untyped-call]
            else:
                loss_fn(module(xb), yb).backward()
            dp_opt.step()
    with torch.no_grad():
        for dst, src in zip(model.parameters(), work.parameters(), strict=True):
            dst.copy_(src)
    return private.steps, private.event()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    loss_fn: LossFn | None = None,
) -> Evaluation:
    """Accuracy (argmax of the logits) and mean loss (cross-entropy, or ``loss_fn``) of
    ``model`` on ``(x, y)``."""
    if y.shape[0] == 0:
        return Evaluation(float("nan"), float("nan"), 0)
    model.eval()
    logits = model(torch.from_numpy(x))
    target = torch.from_numpy(y)
    loss = (loss_fn or nn.functional.cross_entropy)(logits, target).item()
    acc = (logits.argmax(dim=1) == target).float().mean().item()
    return Evaluation(float(acc), float(loss), int(y.shape[0]))
