"""Client-local layers: batch normalisation stays on each client (FedBN).

Li, Jiang, Zhang, Kamp, Dou, "FedBN: Federated Learning on Non-IID Features via Local
Batch Normalization" (ICLR 2021): batch-norm affine parameters and running statistics
describe a client's own feature distribution, so they are kept local, never aggregated
(and never sent), while every other parameter is shared. Besides personalisation this
keeps data-dependent statistics (running means and variances of a site's records) off
the wire entirely. The flat positions of local parameters are removed from every
aggregation's public support.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

__all__ = ["LocalLayers"]


class LocalLayers:
    """Per-client state of the batch-norm layers of ``model`` (empty when it has none)."""

    def __init__(self, model: nn.Module) -> None:
        self.module_names = [
            name
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        prefixes = tuple(f"{n}." for n in self.module_names)
        self.keys = [k for k in model.state_dict() if k.startswith(prefixes)]
        self.initial = {
            k: v.detach().clone() for k, v in model.state_dict().items() if k in self.keys
        }
        self._per_client: dict[int, dict[str, torch.Tensor]] = {}
        flags = [
            np.full(p.numel(), name.startswith(prefixes))
            for name, p in model.named_parameters()
            if p.requires_grad
        ]
        self.mask: npt.NDArray[np.bool_] = (
            np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
        )

    @property
    def enabled(self) -> bool:
        return bool(self.module_names)

    def load(self, model: nn.Module, client: int) -> None:
        """Put ``client``'s own batch-norm state (initial values at first) into ``model``."""
        if self.enabled:
            model.load_state_dict(self._per_client.get(client, self.initial), strict=False)

    def save(self, model: nn.Module, client: int) -> None:
        """Keep ``client``'s batch-norm state after its local training."""
        if self.enabled:
            current = model.state_dict()
            self._per_client[client] = {k: current[k].detach().clone() for k in self.keys}
