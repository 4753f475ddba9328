"""Models: logistic regression, MLP and a small CNN, plus flat-vector helpers.

Any ``torch.nn.Module`` mapping a batch of inputs to class logits can be plugged in
through the Python API (``secure_fl.run(config, model_fn=...)``); the built-ins here are
chosen from ``model.kind``. The federated protocols see a model only as a flat float32
vector of its trainable parameters (:func:`get_flat` / :func:`set_flat`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from secure_fl.config import ModelConfig
from secure_fl.errors import ConfigError

__all__ = ["ModelFn", "build_model", "get_flat", "num_parameters", "set_flat"]

ModelFn = Callable[[tuple[int, ...], int], nn.Module]


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class SmallCNN(nn.Module):
    """Two 3x3 conv layers (8 and 16 channels) with max-pooling, then a linear head."""

    def __init__(
        self, feature_shape: tuple[int, ...], num_classes: int, *, batch_norm: bool = False
    ) -> None:
        super().__init__()
        if len(feature_shape) != 3:
            raise ConfigError(
                f"model.kind = 'cnn' needs image-shaped data (C, H, W), got features {feature_shape}",
                field="model.kind",
            )
        c, h, w = feature_shape
        self.shape = (c, h, w)
        pool = 2 if min(h, w) >= 8 else 1
        def block(cin: int, cout: int) -> list[nn.Module]:
            norm: list[nn.Module] = [nn.BatchNorm2d(cout)] if batch_norm else []
            return [nn.Conv2d(cin, cout, 3, padding=1), *norm, nn.ReLU(), nn.MaxPool2d(pool)]

        self.features = nn.Sequential(*block(c, 8), *block(8, 16))
        out = 16 * (h // pool // pool) * (w // pool // pool)
        self.head = nn.Linear(out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.shape)
        logits: torch.Tensor = self.head(self.features(x).flatten(1))
        return logits


def build_model(config: ModelConfig, feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate the built-in model named by ``config.kind``."""
    d = int(np.prod(feature_shape))
    if config.kind == "logreg":
        return nn.Sequential(_Flatten(), nn.Linear(d, num_classes))
    if config.kind == "mlp":
        layers: list[nn.Module] = [_Flatten()]
        width = d
        for h in config.hidden:
            norm: list[nn.Module] = [nn.BatchNorm1d(h)] if config.batch_norm else []
            layers += [nn.Linear(width, h), *norm, nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)
    return SmallCNN(feature_shape, num_classes, batch_norm=config.batch_norm)


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (the dimension d the protocols aggregate)."""
    return sum(p.numel() for p in _params(model))


def get_flat(model: nn.Module) -> npt.NDArray[np.float32]:
    """Trainable parameters as one flat float32 vector."""
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1) for p in _params(model)]).cpu().numpy().astype(np.float32)


def set_flat(model: nn.Module, flat: npt.NDArray[np.floating]) -> None:
    """Load a flat vector produced by :func:`get_flat` back into ``model``."""
    params = _params(model)
    total = sum(p.numel() for p in params)
    if flat.shape != (total,):
        raise ValueError(f"flat parameter vector has shape {flat.shape}, model needs ({total},)")
    src = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(src[offset : offset + n].reshape(p.shape))
            offset += n
