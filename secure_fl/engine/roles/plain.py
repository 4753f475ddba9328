"""FedAvg in the clear (``protocol = "plain"``): the baseline.

Client half: the upload is ``u = w * clip_l2(delta, C)`` over the public support (no
clipping without DP) and the weight ``w``, as float64 arrays: the server sees it in the
clear, and the audit says so. The update travels as float32 (4 bytes a coordinate). Server half: the weighted sum, with central Gaussian
noise ``N(0, (z C')^2)`` added by the server under ``dp.mechanism = "gaussian"`` (the
DP-FedAvg baseline of McMahan et al. 2018: the released model is private, but the
server saw every update), divided by the sum of weights.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from secure_fl.engine.transport import Envelope

__all__ = ["client_upload", "read_upload"]


def client_upload(u: npt.NDArray[np.float64], *, weight: float) -> Envelope:
    """The plain upload: the update and its weight, in the clear."""
    return Envelope(fields={"weight": float(weight)}, arrays={"update": np.ascontiguousarray(u, dtype=np.float32)})


def read_upload(env: Envelope, *, length: int) -> tuple[npt.NDArray[np.float64], float] | None:
    """``(u, w)`` of a plain upload, or ``None`` when it is malformed."""
    u = env.arrays.get("update")
    w = env.fields.get("weight")
    if u is None or not isinstance(w, float) or not 0 < w <= 1:
        return None
    if np.asarray(u).dtype != np.float32:
        return None
    arr = np.asarray(u, dtype=np.float64)
    if arr.ndim != 1 or arr.size != length or not np.all(np.isfinite(arr)):
        return None
    return arr, w
