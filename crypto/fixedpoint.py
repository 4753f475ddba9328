"""Fixed-point encoding of real vectors into the ring Z_{2^b} and back.

Secure aggregation sums integers modulo 2^b. A client maps its clipped real update
``x`` (each coordinate bounded by ``max_abs``) to ``round(scale * x) mod 2^b`` with
*stochastic* rounding driven by the CSPRNG (unbiased: E[round(v)] = v), and the server
maps the modular sum back with two's-complement style centring:

    encode(x)   = (floor(s x) + Bernoulli(s x - floor(s x)))  mod 2^b
    decode(S)   = (S - 2^b * [S >= 2^(b-1)]) / s

Capacity (no silent wrap-around). With n summands, each encoded coordinate satisfies
``|round(s x_i)| <= s * max_abs + 1``, so the true integer sum lies in
``[-n (s m + 1), n (s m + 1)]``. Decoding is exact iff that interval fits in the
centred range ``[-2^(b-1), 2^(b-1) - 1]``, i.e.

    n * (s * m + 1) <= 2^(b-1) - 1.                                            (*)

:func:`check_capacity` enforces (*) and :func:`max_scale` returns the largest ``s`` that
satisfies it. For an L2 clip bound C, every coordinate obeys |x_i| <= C, so m = C is a
valid (worst-case) choice. Example: b = 32, n = 100, m = 1 gives s ~ 2.1e7, a
resolution of ~5e-8 per coordinate.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from crypto.errors import FieldOverflowError
from crypto.prg import Csprng

__all__ = [
    "check_capacity",
    "decode",
    "encode",
    "field_dtype",
    "max_scale",
    "stochastic_round",
    "to_signed",
]


def field_dtype(bits: int) -> type[np.unsignedinteger]:
    """The unsigned dtype in which vectors of Z_{2^bits} are stored (wraps mod 2^32/2^64)."""
    if not 1 <= bits <= 62:
        raise FieldOverflowError(f"field bits must be in [1, 62], got {bits}")
    return np.uint32 if bits <= 32 else np.uint64


def stochastic_round(v: npt.ArrayLike, *, rng: Csprng) -> npt.NDArray[np.int64]:
    """Unbiased randomized rounding: ``floor(v) + Bernoulli(v - floor(v))`` per coordinate."""
    arr = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise FieldOverflowError("cannot round non-finite values (NaN or infinity)")
    lo = np.floor(arr)
    up = rng.uniform01(arr.size).reshape(arr.shape) < (arr - lo)
    return lo.astype(np.int64) + up.astype(np.int64)


def max_scale(*, num_summands: int, max_abs: float, bits: int) -> float:
    """Largest scale ``s`` with ``n * (s * max_abs + 1) <= 2^(bits-1) - 1`` (see (*))."""
    if num_summands < 1:
        raise FieldOverflowError(f"num_summands must be >= 1, got {num_summands}")
    if not max_abs > 0:
        raise FieldOverflowError(f"max_abs must be > 0, got {max_abs}")
    room = ((1 << (bits - 1)) - 1) / num_summands - 1.0
    if room <= 0:
        raise FieldOverflowError(
            f"a {bits}-bit field cannot hold a sum of {num_summands} values: "
            f"need n + 1 <= 2^(b-1), i.e. at least {(num_summands + 1).bit_length() + 1} bits"
        )
    return room / max_abs


def check_capacity(*, num_summands: int, max_abs: float, scale: float, bits: int) -> None:
    """Raise :class:`FieldOverflowError` unless (*) holds, naming every quantity."""
    need = num_summands * (scale * max_abs + 1.0)
    limit = (1 << (bits - 1)) - 1
    if need > limit:
        raise FieldOverflowError(
            f"sum of {num_summands} values bounded by {max_abs} at scale {scale:g} "
            f"reaches {need:.4g} > 2^{bits - 1} - 1 = {limit}: it could wrap around; "
            f"use more bits, a smaller scale or a smaller clip"
        )


def encode(
    x: npt.ArrayLike, *, scale: float, bits: int, rng: Csprng
) -> npt.NDArray[np.unsignedinteger]:
    """Map reals to Z_{2^bits}: ``stochastic_round(scale * x) mod 2^bits``."""
    ints = stochastic_round(np.asarray(x, dtype=np.float64) * scale, rng=rng)
    mask = (1 << bits) - 1
    dtype = field_dtype(bits)
    return (ints.astype(np.uint64) & np.uint64(mask)).astype(dtype)


def to_signed(values: npt.ArrayLike, *, bits: int) -> npt.NDArray[np.int64]:
    """Centre elements of Z_{2^bits} into ``[-2^(bits-1), 2^(bits-1))`` (bits <= 62)."""
    if not 1 <= bits <= 62:
        raise FieldOverflowError(f"centring supports 1..62 bits, got {bits}")
    signed = (np.asarray(values).astype(np.uint64) & np.uint64((1 << bits) - 1)).astype(np.int64)
    signed[signed >= (1 << (bits - 1))] -= 1 << bits
    return signed


def decode(values: npt.ArrayLike, *, scale: float, bits: int) -> npt.NDArray[np.float64]:
    """Invert :func:`encode` on a (sum of) encoded vector(s): centre, then divide by scale."""
    return to_signed(values, bits=bits).astype(np.float64) / scale
