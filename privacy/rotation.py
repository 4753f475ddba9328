"""Randomized Hadamard rotation (flattening) of update vectors.

Before quantization, the distributed discrete Gaussian and Skellam mechanisms rotate
each clipped update by the orthogonal matrix

    U = H_d D_xi / sqrt(d),      d = 2^ceil(log2(dim)),

where ``D_xi = diag(xi)`` holds uniform random signs and ``H_d`` is the (unnormalized,
symmetric, ``H_d^2 = d I``) Walsh-Hadamard matrix. Kairouz, Liu, Steinke (ICML 2021,
Sec. 4) and Agarwal, Kairouz, Liu (NeurIPS 2021) use it because after the rotation
every coordinate of ``U x`` is sub-Gaussian with variance proxy ``||x||_2^2 / d``
(Hoeffding over the signs): the vector's energy is spread evenly, so a spiky update
cannot push one coordinate past the modular range ``[-2^(b-1), 2^(b-1))``, and the
granularity can be chosen from ``||x||_2 / sqrt(d)`` rather than ``||x||_inf``.

The inverse is ``U^T = D_xi H_d / sqrt(d)`` (``H_d`` symmetric, ``D_xi^2 = I``). The
server applies it to the *sum* of rotated vectors (linearity), so all clients must use
the same signs: they come from a public per-round seed, expanded with
:class:`crypto.prg.Csprng` under the purpose label ``secure-fl/rotation/v1`` so they are
independent of anything else derived from the same round seed (for example shared-seed
random-k sparsity). The seed must be fixed *after* updates are computed (or at least
unknown to the clients while training); a client that knew the signs in advance could
craft an update that concentrates in one rotated coordinate and causes a wrap-around.
This affects robustness only, never privacy.

The fast Walsh-Hadamard transform runs in ``O(d log d)`` as ``log2 d`` vectorized
butterfly passes over a ``(-1, 2, h)`` view of the array.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from crypto.prg import SEED_BYTES, Csprng
from privacy.errors import PrivacyError

__all__ = [
    "hadamard_transform",
    "padded_dim",
    "random_signs",
    "rotate",
    "unrotate",
]

FloatArray = npt.NDArray[np.float64]

_LABEL = b"secure-fl/rotation/v1"


def padded_dim(dim: int) -> int:
    """The smallest power of two ``>= dim`` (``dim >= 1``)."""
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise PrivacyError(f"dim must be a positive int, got {dim!r}")
    return 1 << (int(dim) - 1).bit_length()


def hadamard_transform(x: npt.ArrayLike) -> FloatArray:
    """Orthonormal Walsh-Hadamard transform ``H_d x / sqrt(d)`` along the last axis.

    ``d`` (the last axis length) must be a power of two. The transform is symmetric and
    its own inverse.
    """
    a = np.array(x, dtype=np.float64)  # copy: the butterflies work on a private buffer
    if a.ndim == 0 or a.shape[-1] == 0:
        raise PrivacyError("hadamard_transform needs a non-empty last axis")
    d = a.shape[-1]
    if d & (d - 1):
        raise PrivacyError(f"Hadamard length must be a power of two, got {d}")
    shape = a.shape
    flat = a.reshape(-1, d)
    rows = flat.shape[0]
    buf = np.empty_like(flat)
    h = 1
    while h < d:
        src = flat.reshape(rows, -1, 2, h)
        dst = buf.reshape(rows, -1, 2, h)
        np.add(src[:, :, 0, :], src[:, :, 1, :], out=dst[:, :, 0, :])
        np.subtract(src[:, :, 0, :], src[:, :, 1, :], out=dst[:, :, 1, :])
        flat, buf = buf, flat
        h *= 2
    flat *= 1.0 / np.sqrt(d)
    return flat.reshape(shape)


def random_signs(seed: bytes, size: int) -> FloatArray:
    """``size`` public uniform signs ``xi in {-1, +1}`` derived from a 32-byte round seed."""
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise PrivacyError(f"the rotation seed must be exactly {SEED_BYTES} bytes")
    key = hashlib.sha256(_LABEL + bytes(seed)).digest()
    bits = Csprng(key).uniform_mod_pow2(size, bits=1)
    return 1.0 - 2.0 * bits.astype(np.float64)


def rotate(x: npt.ArrayLike, *, seed: bytes) -> FloatArray:
    """``U x``: zero-pad the last axis to a power of two, flip signs, Hadamard-transform.

    Preserves the L2 norm (up to floating-point rounding, ~1e-15 relative).
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        raise PrivacyError("rotate needs at least one axis")
    dim = a.shape[-1]
    d = padded_dim(dim)
    padded = np.zeros(a.shape[:-1] + (d,), dtype=np.float64)
    padded[..., :dim] = a
    return hadamard_transform(padded * random_signs(seed, d))


def unrotate(y: npt.ArrayLike, *, seed: bytes, dim: int) -> FloatArray:
    """``U^T y`` truncated to the first ``dim`` coordinates: the exact inverse of :func:`rotate`."""
    a = np.asarray(y, dtype=np.float64)
    d = padded_dim(dim)
    if a.ndim == 0 or a.shape[-1] != d:
        raise PrivacyError(f"expected a last axis of length {d} for dim={dim}")
    return (hadamard_transform(a) * random_signs(seed, d))[..., :dim]
