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

import numpy as np
import numpy.typing as npt

from secure_fl.config import ServerConfig

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
