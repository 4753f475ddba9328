"""Cryptographically secure pseudo-random generation from a 32-byte seed.

Every privacy-relevant random value in secure-fl (pairwise and self masks, DP noise,
randomized rounding, rotations' sign flips) comes from :class:`Csprng`: the AES-256-CTR
keystream of a 32-byte key, as produced by ``cryptography``'s AES implementation
(AES-NI where the CPU has it). numpy's generators are never used on these paths: a
seeded Mersenne Twister or PCG is predictable from its output (Flower's SecAgg+ seeds
one with 32 bits; an observer can brute-force it and strip the masks).

Construction: ``keystream = AES-256-CTR(key=seed, nonce=0^16)``. A seed is used for one
stream only, so the all-zero initial counter block is safe. Conversions:

* uniform integers mod 2^b: take 4 (b <= 32) or 8 (b <= 64) keystream bytes per value,
  little-endian, and keep the low b bits. Because 2^b divides 2^32 (2^64) the result is
  exactly uniform.
* uniform integers below an arbitrary bound U: rejection sampling on
  ``ceil(log2 U)``-bit candidates (each accepted with probability > 1/2); exact.
* uniform floats in [0, 1): ``(u64 >> 11) * 2^-53``, all 53 mantissa bits random.

Fresh seeds come from :func:`fresh_seed` (``secrets.token_bytes``); that single private
entry point ``_entropy`` is what tests replace to obtain fixed vectors.

Position and resumption: a generator is fully described by its seed and the number of
keystream bytes it has produced (:meth:`Csprng.position`). :meth:`Csprng.at` rebuilds a
generator at any position by starting the CTR counter at block ``offset // 16`` (OpenSSL
increments the whole 128-bit counter block big-endian, so the initial counter block of
block ``i`` is ``i`` as 16 big-endian bytes) and discarding ``offset % 16`` bytes; the
stream that follows is byte-identical to the original one. A seed and a position are
exactly as secret as the stream they produce: whoever holds them can regenerate every
mask and noise value drawn, so they are saved only where the stream is already public
(``simulation.reproducible_noise``) or in the holder's private state.
"""

from __future__ import annotations

import secrets

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto.errors import CryptoError

__all__ = ["SEED_BYTES", "Csprng", "fresh_seed"]

SEED_BYTES = 32
_ZERO_NONCE = bytes(16)
_CHUNK = 1 << 24  # bytes of keystream produced per call into OpenSSL


_ZERO_BLOCK = bytes(_CHUNK)


def _zeros(n: int) -> memoryview:
    """A read-only view of ``n <= _CHUNK`` zero bytes (CTR plaintext), shared, never written."""
    return memoryview(_ZERO_BLOCK)[:n]


def _entropy(n: int) -> bytes:
    """The one place fresh entropy enters secure-fl (the OS CSPRNG)."""
    return secrets.token_bytes(n)


def fresh_seed() -> bytes:
    """A new uniformly random 32-byte seed from the operating system."""
    return _entropy(SEED_BYTES)


class Csprng:
    """AES-256-CTR keystream generator with exact conversions to integers and floats.

    >>> g = Csprng(bytes(32))
    >>> g.random_bytes(4).hex()   # AES-256_0(0^128) begins dc95c078
    'dc95c078'
    """

    __slots__ = ("_enc", "_offset", "_seed")

    def __init__(self, seed: bytes, *, _counter: bytes = _ZERO_NONCE) -> None:
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
            raise CryptoError(f"a PRG seed must be exactly {SEED_BYTES} bytes")
        self._seed = bytes(seed)
        self._offset = 0
        self._enc = Cipher(algorithms.AES(self._seed), modes.CTR(_counter)).encryptor()

    @classmethod
    def at(cls, seed: bytes, offset: int) -> Csprng:
        """The generator of ``seed`` after ``offset`` keystream bytes were drawn from it."""
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < (16 << 128):
            raise CryptoError(f"a keystream offset is an int in [0, 2**132), got {offset!r}")
        block, skip = divmod(offset, 16)
        gen = cls(seed, _counter=block.to_bytes(16, "big"))
        if skip:
            gen._enc.update(bytes(skip))
        gen._offset = offset
        return gen

    def position(self) -> tuple[bytes, int]:
        """``(seed, offset)``: :meth:`at` rebuilds this generator from them. As secret as
        the stream itself (see the module docstring)."""
        return self._seed, self._offset

    @classmethod
    def from_entropy(cls) -> Csprng:
        """A generator keyed with fresh OS entropy."""
        return cls(fresh_seed())

    # -- raw keystream ---------------------------------------------------------------
    def random_bytes(self, n: int) -> bytes:
        """The next ``n`` keystream bytes."""
        if n < 0:
            raise CryptoError("cannot draw a negative number of bytes")
        self._offset += n
        if n <= _CHUNK:
            return self._enc.update(bytes(n))
        return b"".join(self._enc.update(bytes(min(_CHUNK, n - i))) for i in range(0, n, _CHUNK))

    def random_into(self, out: bytearray | memoryview) -> None:
        """Overwrite ``out`` with the next ``len(out)`` keystream bytes, allocating nothing.

        The same stream as :meth:`random_bytes`. Hot loops (SecAgg mask expansion, one
        4*d-byte draw per neighbour) reuse one buffer instead of faulting in fresh pages
        for every draw, which on large draws costs several times the AES-CTR work itself.
        """
        view = memoryview(out).cast("B")
        n = len(view)
        self._offset += n
        head = max(0, n - 16)  # update_into needs block_size - 1 bytes of slack after the data
        for i in range(0, head, _CHUNK):
            step = min(_CHUNK, head - i)
            self._enc.update_into(_zeros(step), view[i : i + step + 15])
        view[head:] = self._enc.update(bytes(n - head))

    def keystream_into(self, out: bytearray, n: int) -> None:
        """Overwrite ``out[:n]`` with the next ``n`` keystream bytes in one OpenSSL call.

        The hot-loop form of :meth:`random_into` (same stream): ``0 <= n <= 16 MiB`` and
        ``out`` must be at least ``n + 15`` bytes long (the cipher API asks for one block
        of slack; CTR mode writes exactly ``n`` bytes and leaves the slack untouched).
        """
        if not 0 <= n <= _CHUNK or len(out) < n + 15:
            raise CryptoError(f"keystream_into needs 0 <= n <= {_CHUNK} and n + 15 bytes of buffer")
        self._enc.update_into(_zeros(n), out)

    def fork(self) -> Csprng:
        """An independent child generator keyed with the next 32 keystream bytes."""
        return Csprng(self.random_bytes(SEED_BYTES))

    # -- integers --------------------------------------------------------------------
    def uniform_mod_pow2(self, size: int, *, bits: int) -> npt.NDArray[np.unsignedinteger]:
        """``size`` independent uniform integers in ``[0, 2**bits)``.

        dtype is ``uint32`` for ``bits <= 32`` and ``uint64`` up to 64 bits, so sums of
        such vectors wrap modulo 2^32 / 2^64, a multiple of 2^bits.
        """
        if not 1 <= bits <= 64:
            raise CryptoError(f"bits must be in [1, 64], got {bits}")
        if bits <= 32:
            out32 = np.frombuffer(self.random_bytes(4 * size), dtype="<u4").astype(np.uint32)
            if bits < 32:
                out32 &= np.uint32((1 << bits) - 1)
            return out32
        out64 = np.frombuffer(self.random_bytes(8 * size), dtype="<u8").astype(np.uint64)
        if bits < 64:
            out64 &= np.uint64((1 << bits) - 1)
        return out64

    def integers_below(self, upper: int, size: int) -> npt.NDArray[np.int64]:
        """``size`` exact uniform integers in ``[0, upper)`` for ``1 <= upper <= 2**62``."""
        if not 1 <= upper <= (1 << 62):
            raise CryptoError(f"upper bound must be in [1, 2**62], got {upper}")
        if upper == 1:
            return np.zeros(size, dtype=np.int64)
        k = (upper - 1).bit_length()
        mask = np.uint64((1 << k) - 1)
        out = np.empty(size, dtype=np.int64)
        filled = 0
        while filled < size:
            need = size - filled
            draw = need + need // 2 + 16  # acceptance probability > 1/2
            cand = np.frombuffer(self.random_bytes(8 * draw), dtype="<u8") & mask
            ok = cand[cand < np.uint64(upper)][:need]
            out[filled : filled + ok.size] = ok.astype(np.int64)
            filled += ok.size
        return out

    def randbelow(self, upper: int) -> int:
        """One exact uniform integer in ``[0, upper)`` for an arbitrarily large ``upper``."""
        if upper < 1:
            raise CryptoError(f"upper bound must be >= 1, got {upper}")
        if upper == 1:
            return 0
        k = (upper - 1).bit_length()
        nbytes = (k + 7) // 8
        excess = 8 * nbytes - k
        while True:
            v = int.from_bytes(self.random_bytes(nbytes), "little") >> excess
            if v < upper:
                return v

    # -- floats ----------------------------------------------------------------------
    def uniform01(self, size: int) -> npt.NDArray[np.float64]:
        """``size`` uniform floats in ``[0, 1)`` with 53 random mantissa bits each."""
        raw = np.frombuffer(self.random_bytes(8 * size), dtype="<u8")
        return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

    def standard_normal(self, size: int) -> npt.NDArray[np.float64]:
        """``size`` standard normal floats by the Box-Muller transform on CSPRNG uniforms.

        For the continuous Gaussian mechanism (central baseline, CKKS path) only; the
        SecAgg path uses the exact integer samplers of :mod:`privacy.samplers`.
        """
        half = (size + 1) // 2
        u1 = 1.0 - self.uniform01(half)  # (0, 1]: log is finite
        u2 = self.uniform01(half)
        r = np.sqrt(-2.0 * np.log(u1))
        theta = 2.0 * np.pi * u2
        return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:size]
