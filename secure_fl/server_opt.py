"""Server optimizers applied to the aggregated update (Reddi et al., "Adaptive
Federated Optimization", ICLR 2021).

The aggregate ``delta`` (mean of client updates, a pseudo-gradient with the sign of a
descent step) is applied as:

* ``sgd``:      w <- w + lr * delta                       (FedAvg when lr = 1)
* ``momentum``: m <- beta * m + delta;  w <- w + lr * m   (FedAvgM)
* ``adam``:     m <- b1 m + (1 - b1) delta;  v <- b2 v + (1 - b2) delta^2;
                w <- w + lr * m / (sqrt(v) + tau)         (FedAdam)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secure_fl.config import ServerConfig
from secure_fl.errors import CheckpointError

__all__ = ["ServerOptimizer"]

Vec = npt.NDArray[np.float64]


@dataclass
class ServerOptimizer:
    config: ServerConfig
    _m: Vec | None = field(default=None, repr=False)
    _v: Vec | None = field(default=None, repr=False)

    def step(self, weights: npt.NDArray[np.floating], delta: npt.NDArray[np.floating]) -> Vec:
        """Return the new weights; ``weights`` is not modified."""
        w = np.asarray(weights, dtype=np.float64)
        d = np.asarray(delta, dtype=np.float64)
        if d.shape != w.shape:
            raise ValueError(f"update shape {d.shape} does not match model shape {w.shape}")
        c = self.config
        if c.optimizer == "sgd":
            return w + c.lr * d
        if self._m is None:
            self._m = np.zeros_like(w)
        if c.optimizer == "momentum":
            self._m = c.momentum * self._m + d
            return w + c.lr * self._m
        if self._v is None:
            self._v = np.zeros_like(w)
        self._m = c.momentum * self._m + (1 - c.momentum) * d
        self._v = c.beta2 * self._v + (1 - c.beta2) * d * d
        return w + c.lr * self._m / (np.sqrt(self._v) + c.tau)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's moments (``m``, ``v``; ``None`` before the first step) and the
        optimizer name they belong to. Both moments are functions of the released
        aggregates only (post-processing of DP outputs)."""
        return {
            "optimizer": self.config.optimizer,
            "m": None if self._m is None else self._m.copy(),
            "v": None if self._v is None else self._v.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; :class:`CheckpointError` if it belongs to another
        optimizer or its moments are not float vectors of one length."""
        name = state.get("optimizer")
        if name != self.config.optimizer:
            raise CheckpointError(
                f"checkpoint holds {name!r} optimizer state, the run uses {self.config.optimizer!r}",
                field="server.optimizer",
            )
        moments: dict[str, Vec | None] = {}
        for key in ("m", "v"):
            value = state.get(key)
            if value is not None:
                arr = np.asarray(value)
                if arr.ndim != 1 or arr.dtype.kind != "f":
                    raise CheckpointError(f"server optimizer moment {key!r} is not a float vector")
                value = arr.astype(np.float64, copy=True)
            moments[key] = value
        m, v = moments["m"], moments["v"]
        if m is not None and v is not None and m.shape != v.shape:
            raise CheckpointError("server optimizer moments m and v differ in length")
        self._m, self._v = m, v
