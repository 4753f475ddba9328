"""CKKS additive aggregation: key holder, clients, streaming server (TenSEAL backend).

This is the only module of secure-fl that imports :mod:`tenseal`. Everything
TenSEAL-specific sits in :class:`TenSEALBackend`, one implementation of the small
:class:`CkksBackend` protocol, so another HE library (OpenFHE, Lattigo via bindings, ...)
could replace it without touching the roles below.

Roles and keys (see ``docs/threat-model.md``)
---------------------------------------------
* **KeyHolder** runs :meth:`KeyHolder.generate`: it owns the secret key, exports the
  *public* context (public key only, no secret, relinearization or Galois keys) with
  :meth:`KeyHolder.public_context_bytes`, and decrypts only aggregates
  (:meth:`KeyHolder.decrypt_aggregate`). Secret material is written only by
  :meth:`KeyHolder.save_secret` (mode 0600, never overwrites).
* **Clients** load the public context (:meth:`PublicContext.from_bytes`), weight their
  own update by their staleness weight, and call :func:`encrypt_vector`.
* **Server** holds the same public context; :class:`Aggregator` adds each upload into a
  running sum on receipt (memory O(d), not O(n d)), rejects malformed uploads naming
  the sender, and hands only the summed ciphertext (:class:`EncryptedAggregate`) to the
  key holder. The server's context cannot decrypt.

Only additions are performed (staleness weights are applied by each client before
encryption), so multiplicative depth 0 suffices and no relinearization or rotation keys
are generated or distributed.

Parameters and their security rationale
---------------------------------------
Security follows the HomomorphicEncryption.org standard (Albrecht et al., "Homomorphic
Encryption Security Standard", 2018), table for 128-bit classical security with a
ternary secret and error sigma = 3.2: the *total* coefficient modulus (including
TenSEAL/SEAL's special key-switching prime) must satisfy

    N = 1024: log2 q <= 27     N = 2048: log2 q <= 54     N = 4096: log2 q <= 109
    N = 8192: log2 q <= 218    N = 16384: log2 q <= 438   N = 32768: log2 q <= 881

(:data:`HE_STANDARD_128_MAX_LOG_Q`; SEAL enforces the same table). :class:`CkksParams`
refuses anything outside it.

Defaults: ``N = 4096``, ``coeff_mod_bit_sizes = (50, 40)``, ``scale = 2^38``:

* log2 q = 90 <= 109, so 128-bit secure with margin.
* A fresh ciphertext lives at the *data level*: every prime but the last (the last is
  SEAL's special prime, dropped right after public-key encryption). With one 50-bit
  data prime a ciphertext is 2 polynomials x 4096 coefficients x 1 prime for 2048
  values. SEAL stores each coefficient in 64 bits and zstd-compresses the stream, which
  gives ~28.8 serialized bytes per parameter (the floor is 4 * 50 bits = 25 bytes).
  NVFlare's defaults (N = 8192, (60, 40, 40), 2^40) keep two data primes (100 bits):
  ~57.4 bytes per parameter.
* TenSEAL cannot build a single-prime context (it always generates relinearization
  keys, which need a special prime), so two primes is the minimum; the special prime
  only has to exceed the encryption noise it divides away, hence 40 bits.
* Precision. Public-key encryption leaves a rounding noise of standard deviation
  about ``sqrt(N/12 * (1 + 2N/3))`` ~ 1e3 per slot (measured: max ~ 2^12 over 2048 slots),
  so one ciphertext decodes with absolute error ~ 2^12 / Delta relative to the value
  bound. A sum of n ciphertexts has sqrt(n) times that noise: at Delta = 2^38,
  n = 100 and d = 1e6 the max error is ~2e-7 of the bound (target 1e-6).
* Capacity. Decoding is correct while every coefficient of the sum stays below half the
  data modulus: ``n * Delta * (1 + slack) < 2^(50 - 1)``, i.e. up to
  :attr:`CkksParams.max_summands` = 2047 summands whose coordinates are bounded by the
  public ``bound``. Values are encoded at scale ``Delta / bound`` so the error is relative
  to the bound (e.g. the clip norm), whatever the update's units.
* Symmetric ("seeded") encryption would halve the bytes and the time, but needs the
  secret key on every client; it is deliberately not used.

Released decryptions are flooded with fresh CSPRNG Gaussian noise (sigma = 2^-25 of the
bound) against Li-Micciancio key recovery from decryption results; see
:meth:`KeyHolder.decrypt_aggregate` for what this does and does not guarantee.

The encryption noise is **not** differential privacy: it is not calibrated to any
sensitivity and the key holder can partly estimate it. DP noise is added by clients
(:mod:`privacy`) before encryption.

Wire format of an encrypted vector (all integers little-endian)::

    magic "SFLCKKS" | version u8 (=1) | key_id 32 B (SHA-256 of the public context)
    | dim u64 | bound f64 | n_chunks u32 | n_chunks x (length u32 | backend ciphertext)

Parsing is strict: any mismatch (magic, version, key, dim, bound, chunk count, chunk
length, ciphertext parameters, level, scale, slot count, trailing bytes) raises one
opaque :class:`~crypto.errors.DecryptionError`, so the server can exclude the sender
without learning (or leaking) why.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import tenseal as ts

from crypto.errors import (
    CryptoError,
    DecryptionError,
    FieldOverflowError,
    LocalProtocolError,
    RemoteProtocolError,
    RoundAbortedError,
)
from crypto.prg import Csprng

__all__ = [
    "DEFAULT_FLOOD_BITS",
    "DEFAULT_PARAMS",
    "HE_STANDARD_128_MAX_LOG_Q",
    "NVFLARE_PARAMS",
    "Aggregator",
    "CkksBackend",
    "CkksParams",
    "CkksRoundResult",
    "EncryptedAggregate",
    "EncryptedVector",
    "KeyHolder",
    "PublicContext",
    "TenSEALBackend",
    "encrypt_vector",
    "simulate_ckks_round",
]

FloatArray = npt.NDArray[np.float64]

#: Largest total log2(q) for 128-bit classical security (ternary secret, sigma 3.2),
#: HomomorphicEncryption.org security standard, Table 1.
HE_STANDARD_128_MAX_LOG_Q: Final[Mapping[int, int]] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

_MIN_PRIME_BITS: Final = 20
_MAX_PRIME_BITS: Final = 60  # SEAL's limit for a single RNS prime
_MIN_SCALE_BITS: Final = 20
#: Headroom (in coefficient units) per summand for the encryption noise in the capacity
#: bound; the measured fresh noise is below 2^7 per coefficient, so 2^16 is generous.
_NOISE_SLACK: Final = 1 << 16
#: Default decryption noise flooding, log2 of (bound / sigma); see KeyHolder.decrypt_aggregate.
DEFAULT_FLOOD_BITS: Final = 25

_MAGIC: Final = b"SFLCKKS"
_VERSION: Final = 1
_HEADER = struct.Struct("<7sB32sQdI")
_CHUNK_LEN = struct.Struct("<I")
_AGG_HEADER = struct.Struct("<7sBQIQ")  # magic, version, round, count, len(ciphertext)
_AGG_MAGIC: Final = b"SFLCKAG"


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CkksParams:
    """Validated CKKS parameters for additive (depth-0) aggregation.

    ``poly_modulus_degree`` N (ring dimension, N/2 slots per ciphertext),
    ``coeff_mod_bit_sizes`` (bit sizes of the RNS primes; the last one is SEAL's special
    key-switching prime, the others form the data modulus of fresh ciphertexts) and
    ``scale_bits`` (log2 of the encoding scale Delta for values bounded by 1).

    Rejected (with a :class:`~crypto.errors.CryptoError` naming the field): an N that is
    not a power of two in the HE-standard table, fewer than two primes (TenSEAL needs a
    special prime), primes outside [20, 60] bits, a total log2 q above the 128-bit bound
    of :data:`HE_STANDARD_128_MAX_LOG_Q`, or a scale leaving room for fewer than two
    summands in the data modulus.
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (50, 40)
    scale_bits: int = 38

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if not isinstance(n, int) or n not in HE_STANDARD_128_MAX_LOG_Q:
            raise CryptoError(
                f"poly_modulus_degree must be one of {sorted(HE_STANDARD_128_MAX_LOG_Q)}, got {n!r}"
            )
        bits = self.coeff_mod_bit_sizes
        if not isinstance(bits, tuple) or not all(isinstance(b, int) for b in bits):
            raise CryptoError("coeff_mod_bit_sizes must be a tuple of ints")
        if len(bits) < 2:
            raise CryptoError("coeff_mod_bit_sizes needs a data prime and a special prime")
        if any(not _MIN_PRIME_BITS <= b <= _MAX_PRIME_BITS for b in bits):
            raise CryptoError(
                f"coeff_mod_bit_sizes entries must be in [{_MIN_PRIME_BITS}, {_MAX_PRIME_BITS}]"
            )
        limit = HE_STANDARD_128_MAX_LOG_Q[n]
        if sum(bits) > limit:
            raise CryptoError(
                f"coeff_mod_bit_sizes: log2 q = {sum(bits)} exceeds {limit}, the 128-bit "
                f"security bound for poly_modulus_degree {n}"
            )
        if not isinstance(self.scale_bits, int) or self.scale_bits < _MIN_SCALE_BITS:
            raise CryptoError(f"scale_bits must be an int >= {_MIN_SCALE_BITS}")
        if self.max_summands < 2:
            raise CryptoError(
                f"scale_bits: 2^{self.scale_bits} leaves room for fewer than 2 summands in "
                f"a {self.data_modulus_bits}-bit data modulus"
            )

    @property
    def slots(self) -> int:
        """Values per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def data_modulus_bits(self) -> int:
        """Bits of the modulus a fresh ciphertext lives under (all primes but the last)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def scale(self) -> float:
        """Encoding scale Delta for values bounded by 1."""
        return float(2**self.scale_bits)

    @property
    def max_summands(self) -> int:
        """Largest n with ``n * (Delta + slack) < 2^(data bits - 1)``: no wrap-around."""
        return ((1 << (self.data_modulus_bits - 1)) - 1) // ((1 << self.scale_bits) + _NOISE_SLACK)

    def num_chunks(self, dim: int) -> int:
        """Ciphertexts needed for a ``dim``-vector (each holds at most ``slots`` values)."""
        return -(-dim // self.slots)


DEFAULT_PARAMS: Final = CkksParams()
#: NVFlare's HE defaults, kept for side-by-side comparison in the benchmark.
NVFLARE_PARAMS: Final = CkksParams(8192, (60, 40, 40), 40)


# --------------------------------------------------------------------------------------
# Backend interface
# --------------------------------------------------------------------------------------
@runtime_checkable
class CkksBackend(Protocol):
    """What the roles need from an HE library. Handles are opaque to callers.

    Every method raises :class:`~crypto.errors.CryptoError` (for ciphertext parsing:
    :class:`~crypto.errors.DecryptionError`) and never a library exception.
    """

    def generate(self, params: CkksParams) -> object:
        """A fresh secret context (secret and public key) for ``params``."""
        ...

    def export_context(self, ctx: object, *, secret: bool) -> bytes:
        """Serialize a context; with ``secret=False`` the secret key is omitted."""
        ...

    def load_context(self, data: bytes, params: CkksParams, *, secret: bool) -> object:
        """Parse and validate a context for exactly ``params`` (public or secret)."""
        ...

    def has_secret_key(self, ctx: object) -> bool:
        """Whether ``ctx`` can decrypt."""
        ...

    def encrypt(self, ctx: object, values: FloatArray, *, scale: float) -> object:
        """Public-key encryption of at most ``slots`` values at ``scale``."""
        ...

    def dump(self, ct: object) -> bytes:
        """Serialize one ciphertext."""
        ...

    def load(self, ctx: object, data: bytes, *, length: int, scale: float) -> object:
        """Parse one fresh-level ciphertext holding ``length`` values at ``scale``."""
        ...

    def add_inplace(self, acc: object, other: object) -> None:
        """``acc += other``."""
        ...

    def decrypt(self, ctx: object, ct: object) -> FloatArray:
        """Decrypt one ciphertext with a secret context."""
        ...


class TenSEALBackend:
    """:class:`CkksBackend` on TenSEAL 0.3.x (Microsoft SEAL underneath).

    Contexts are single-threaded (``n_threads=1``): the project runs many roles in one
    process and TenSEAL's thread pool would only contend for the same cores. Vectors are
    never longer than the slot count, so TenSEAL's multi-ciphertext "long vector" path
    (which prints a warning on stdout) is never taken.
    """

    def generate(self, params: CkksParams) -> object:
        try:
            return ts.context(
                ts.SCHEME_TYPE.CKKS,
                params.poly_modulus_degree,
                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
                n_threads=1,
            )
        except Exception as exc:  # tenseal raises ValueError/RuntimeError
            raise CryptoError("CKKS key generation failed") from exc

    def export_context(self, ctx: object, *, secret: bool) -> bytes:
        c = _as_context(ctx)
        if secret and not c.has_secret_key():
            raise CryptoError("context holds no secret key")
        data: bytes = c.serialize(
            save_public_key=True,
            save_secret_key=secret,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return data

    def load_context(self, data: bytes, params: CkksParams, *, secret: bool) -> object:
        if not isinstance(data, bytes) or not data:
            raise CryptoError("invalid CKKS context")
        try:
            ctx = ts.context_from(data, n_threads=1)
            ok = _context_matches(ctx, params) and ctx.has_public_key()
            ok = ok and (ctx.has_secret_key() if secret else ctx.is_public())
        except Exception as exc:
            raise CryptoError("invalid CKKS context") from exc
        if not ok:
            raise CryptoError("invalid CKKS context")
        return ctx

    def has_secret_key(self, ctx: object) -> bool:
        return bool(_as_context(ctx).has_secret_key())

    def encrypt(self, ctx: object, values: FloatArray, *, scale: float) -> object:
        c = _as_context(ctx)
        slots = c.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2
        if values.ndim != 1 or not 0 < values.size <= slots:
            raise CryptoError(f"a chunk must hold 1..{slots} values")
        try:
            # The C++ constructor directly: the Python wrapper converts through a
            # PlainTensor first, which costs ~10% of the encryption time.
            return ts._ts_cpp.CKKSVector(c.data, values.tolist(), scale)
        except Exception as exc:
            raise CryptoError("CKKS encryption failed") from exc

    def dump(self, ct: object) -> bytes:
        try:
            data: bytes = _as_vector(ct).serialize()
        except Exception as exc:
            raise CryptoError("CKKS serialization failed") from exc
        return data

    def load(self, ctx: object, data: bytes, *, length: int, scale: float) -> object:
        c = _as_context(ctx)
        try:
            vec = ts._ts_cpp.CKKSVector(c.data, data)
            cts = vec.ciphertext()
            first = c.seal_context().data.first_context_data()
            ok = (
                vec.size() == length
                and len(cts) == 1
                and cts[0].size() == 2  # fresh: (c0, c1), no pending relinearization
                and cts[0].is_ntt_form()
                and cts[0].parms_id() == first.parms_id()  # fresh level, this context
                and cts[0].poly_modulus_degree() == first.parms().poly_modulus_degree()
                and cts[0].scale == scale
            )
        except Exception as exc:
            raise DecryptionError() from exc
        if not ok:
            raise DecryptionError()
        return vec

    def add_inplace(self, acc: object, other: object) -> None:
        try:
            _as_vector(acc).add_(_as_vector(other))
        except Exception as exc:
            raise DecryptionError() from exc

    def decrypt(self, ctx: object, ct: object) -> FloatArray:
        c = _as_context(ctx)
        if not c.has_secret_key():
            raise CryptoError("this context holds no secret key and cannot decrypt")
        try:
            vec = _as_vector(ct)
            vec.link_context(c.data)
            out = np.asarray(vec.decrypt(), dtype=np.float64)
        except Exception as exc:
            raise DecryptionError() from exc
        return out


def _as_context(ctx: object) -> Any:
    if not isinstance(ctx, ts.Context):
        raise CryptoError("not a TenSEAL context")
    return ctx


def _as_vector(ct: object) -> Any:
    if not isinstance(ct, ts._ts_cpp.CKKSVector):
        raise CryptoError("not a TenSEAL CKKS vector")
    return ct


def _context_matches(ctx: Any, params: CkksParams) -> bool:
    seal = ctx.seal_context().data
    key, first = seal.key_context_data(), seal.first_context_data()
    bits = params.coeff_mod_bit_sizes
    return bool(
        seal.parameters_set()
        and key.parms().scheme() == ts.SCHEME_TYPE.CKKS.value
        and key.parms().poly_modulus_degree() == params.poly_modulus_degree
        and key.chain_index() == len(bits) - 1
        and key.total_coeff_modulus_bit_count() == sum(bits)
        and first.total_coeff_modulus_bit_count() == params.data_modulus_bits
    )


_DEFAULT_BACKEND: Final = TenSEALBackend()


# --------------------------------------------------------------------------------------
# Roles
# --------------------------------------------------------------------------------------
def _key_id(public_bytes: bytes) -> bytes:
    return hashlib.sha256(b"secure-fl/ckks/public-context/v1\x00" + public_bytes).digest()


class PublicContext:
    """The public context held by clients and the server: encrypts, adds, never decrypts.

    ``key_id`` (SHA-256 of the public context bytes) is written into every ciphertext
    header, so an upload made under another key (a stale or foreign context) is rejected
    before any homomorphic operation.
    """

    __slots__ = ("_backend", "_handle", "key_id", "params")

    def __init__(
        self, params: CkksParams, key_id: bytes, handle: object, backend: CkksBackend
    ) -> None:
        self.params = params
        self.key_id = key_id
        self._handle = handle
        self._backend = backend

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        expected_params: CkksParams = DEFAULT_PARAMS,
        *,
        backend: CkksBackend | None = None,
    ) -> PublicContext:
        """Load a key holder's public context; refuse one with a secret key or other params."""
        be = backend or _DEFAULT_BACKEND
        handle = be.load_context(data, expected_params, secret=False)
        if be.has_secret_key(handle):
            raise CryptoError("a public context must not contain a secret key")
        return cls(expected_params, _key_id(data), handle, be)

    @property
    def can_decrypt(self) -> bool:
        """Always False for a validly loaded public context."""
        return self._backend.has_secret_key(self._handle)


class KeyHolder:
    """Owner of the CKKS secret key; decrypts only aggregates.

    ``min_summands`` is a **policy** check, not a cryptographic one: the key holder
    cannot verify how many ciphertexts a server actually summed, so a server that lies
    about the count could still obtain one client's update. The guarantee rests on the
    key holder not colluding with the server (see ``docs/threat-model.md``). The key
    holder also refuses to decrypt twice for the same round number (same caveat).
    """

    __slots__ = (
        "_backend",
        "_decrypted_rounds",
        "_public_bytes",
        "_rng",
        "_secret",
        "flood_bits",
        "key_id",
        "min_summands",
        "params",
    )

    def __init__(
        self,
        params: CkksParams,
        secret_handle: object,
        *,
        min_summands: int,
        backend: CkksBackend,
        flood_bits: int | None = DEFAULT_FLOOD_BITS,
        rng: Csprng | None = None,
    ) -> None:
        if not isinstance(min_summands, int) or min_summands < 1:
            raise CryptoError("min_summands must be a positive int")
        if flood_bits is not None and not 10 <= flood_bits <= 60:
            raise CryptoError("flood_bits must be None or in [10, 60]")
        if min_summands > params.max_summands:
            raise FieldOverflowError(
                f"min_summands {min_summands} exceeds the capacity {params.max_summands}"
            )
        self.params = params
        self.min_summands = min_summands
        self.flood_bits = flood_bits
        self._rng = rng or Csprng.from_entropy()
        self._backend = backend
        self._secret = secret_handle
        self._public_bytes = backend.export_context(secret_handle, secret=False)
        self.key_id = _key_id(self._public_bytes)
        self._decrypted_rounds: set[int] = set()

    @classmethod
    def generate(
        cls,
        params: CkksParams = DEFAULT_PARAMS,
        *,
        min_summands: int = 2,
        flood_bits: int | None = DEFAULT_FLOOD_BITS,
        rng: Csprng | None = None,
        backend: CkksBackend | None = None,
    ) -> KeyHolder:
        """Generate a fresh key pair (explicit key-generation step).

        Generating a fresh key pair per round is cheap (~10 ms, a ~108 KB public context)
        and limits every secret key to one released decryption (see
        :meth:`decrypt_aggregate`).
        """
        be = backend or _DEFAULT_BACKEND
        return cls(
            params,
            be.generate(params),
            min_summands=min_summands,
            backend=be,
            flood_bits=flood_bits,
            rng=rng,
        )

    def public_context_bytes(self) -> bytes:
        """The public context to distribute to the server and clients (no secret key)."""
        return self._public_bytes

    def public_context(self) -> PublicContext:
        """The public context as the other roles load it (round-trips through bytes)."""
        return PublicContext.from_bytes(self._public_bytes, self.params, backend=self._backend)

    def save_secret(self, path: str | os.PathLike[str]) -> None:
        """Write the secret context to a new file readable only by its owner (0600).

        Refuses to overwrite an existing file. Run only where the key holder runs.
        """
        data = self._backend.export_context(self._secret, secret=True)
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    @classmethod
    def load_secret(
        cls,
        path: str | os.PathLike[str],
        params: CkksParams = DEFAULT_PARAMS,
        *,
        min_summands: int = 2,
        flood_bits: int | None = DEFAULT_FLOOD_BITS,
        rng: Csprng | None = None,
        backend: CkksBackend | None = None,
    ) -> KeyHolder:
        """Load a secret context written by :meth:`save_secret`; refuse lax permissions."""
        p = Path(path)
        if p.stat().st_mode & 0o077:
            raise CryptoError("secret key file must not be accessible by group or others")
        be = backend or _DEFAULT_BACKEND
        handle = be.load_context(p.read_bytes(), params, secret=True)
        return cls(
            params, handle, min_summands=min_summands, backend=be, flood_bits=flood_bits, rng=rng
        )

    def decrypt_aggregate(self, agg: EncryptedAggregate) -> FloatArray:
        """Decrypt a server aggregate of ``agg.count`` summands into a float64 vector.

        Refuses (``LocalProtocolError``) a count below ``min_summands`` or a round already
        decrypted; raises the opaque ``DecryptionError`` for a ciphertext that does not
        parse under this key, and also when the plaintext exceeds ``count * bound`` in
        any coordinate: a summand under another key (or a corrupted one) decrypts to
        noise of magnitude ~2^(data bits - scale bits), which this catches w.h.p.

        Noise flooding. A CKKS decryption is ``c0 + c1 * s mod q`` up to decoding; whoever
        holds the ciphertext (the server) and sees the full-precision result obtains
        linear equations in the secret key ``s`` (Li and Micciancio, "On the security of
        homomorphic encryption on approximate numbers", EUROCRYPT 2021). Unless
        ``flood_bits`` is None, the key holder adds Gaussian noise of standard deviation
        ``bound * 2^-flood_bits`` (CSPRNG, Box-Muller) to the result before releasing it,
        turning those equations into an RLWE-like instance with ~10x the decryption
        noise (default 2^-25 ~ 3e-8 of the bound; the fresh noise of one ciphertext is
        ~3e-9). This is a heuristic hardening, not the statistical flooding
        (~2^40 x the noise) that would make the release provably simulatable and would
        destroy the 1e-6 precision target; a fresh key per round remains the structural
        mitigation. The flooding is not differential privacy either.
        """
        if not isinstance(agg, EncryptedAggregate):
            raise LocalProtocolError("decrypt_aggregate takes an EncryptedAggregate")
        if agg.count < self.min_summands:
            raise LocalProtocolError(
                f"key holder refuses to decrypt an aggregate of {agg.count} summand(s); "
                f"policy minimum is {self.min_summands}"
            )
        if agg.count > self.params.max_summands:
            raise LocalProtocolError("aggregate count exceeds the parameters' capacity")
        if agg.round in self._decrypted_rounds:
            raise LocalProtocolError(f"round {agg.round} was already decrypted")
        vec = _parse_vector(
            self.params,
            self.key_id,
            self._secret,
            self._backend,
            agg.ciphertext,
            dim=agg.dim,
            bound=agg.bound,
        )
        parts = [self._backend.decrypt(self._secret, ct) for ct in vec._cts]
        out = np.concatenate(parts)[: agg.dim] if parts else np.zeros(0)
        limit = agg.count * agg.bound * (1.0 + 1e-6) + 1e-3 * agg.bound
        if out.shape != (agg.dim,) or not np.all(np.abs(out) <= limit):
            raise DecryptionError()
        self._decrypted_rounds.add(agg.round)
        if self.flood_bits is not None:
            sigma = agg.bound * 2.0**-self.flood_bits
            out = out + sigma * self._rng.standard_normal(agg.dim)
        return out


# --------------------------------------------------------------------------------------
# Ciphertexts
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EncryptedVector:
    """A flat vector encrypted in ``ceil(dim / slots)`` ciphertexts under one key.

    Produced by :func:`encrypt_vector` or parsed strictly by :meth:`from_bytes`.
    """

    params: CkksParams
    key_id: bytes
    dim: int
    bound: float
    _cts: tuple[object, ...] = field(repr=False)
    _backend: CkksBackend = field(repr=False)

    def to_bytes(self) -> bytes:
        """The wire encoding (see the module docstring)."""
        blobs = [self._backend.dump(ct) for ct in self._cts]
        head = _HEADER.pack(_MAGIC, _VERSION, self.key_id, self.dim, self.bound, len(blobs))
        parts = [head]
        for b in blobs:
            parts.append(_CHUNK_LEN.pack(len(b)))
            parts.append(b)
        return b"".join(parts)

    @classmethod
    def from_bytes(
        cls, ctx: PublicContext, data: bytes, *, dim: int, bound: float = 1.0
    ) -> EncryptedVector:
        """Strict parse of an upload expected to hold ``dim`` values bounded by ``bound``.

        Any deviation raises the opaque :class:`~crypto.errors.DecryptionError`.
        """
        return _parse_vector(
            ctx.params, ctx.key_id, ctx._handle, ctx._backend, data, dim=dim, bound=bound
        )


def _check_dim_bound(dim: int, bound: float) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise CryptoError("dim must be a positive int")
    if not isinstance(bound, float | int) or not math.isfinite(bound) or bound <= 0:
        raise CryptoError("bound must be a positive finite number")


def _max_chunk_bytes(params: CkksParams) -> int:
    # Uncompressed SEAL ciphertext (2 polys x N x 8 bytes per data prime) plus
    # generous framing; bounds the work a hostile upload can cause before rejection.
    return 2 * params.poly_modulus_degree * 8 * len(params.coeff_mod_bit_sizes) + 4096


def _parse_vector(
    params: CkksParams,
    key_id: bytes,
    handle: object,
    backend: CkksBackend,
    data: bytes,
    *,
    dim: int,
    bound: float,
) -> EncryptedVector:
    _check_dim_bound(dim, bound)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecryptionError()
    buf = memoryview(data)
    if len(buf) < _HEADER.size:
        raise DecryptionError()
    magic, version, kid, wdim, wbound, n = _HEADER.unpack_from(buf, 0)
    expected_chunks = params.num_chunks(dim)
    if (
        magic != _MAGIC
        or version != _VERSION
        or kid != key_id
        or wdim != dim
        or wbound != float(bound)
        or n != expected_chunks
    ):
        raise DecryptionError()
    scale = params.scale / float(bound)
    limit = _max_chunk_bytes(params)
    off = _HEADER.size
    cts: list[object] = []
    for i in range(n):
        if off + _CHUNK_LEN.size > len(buf):
            raise DecryptionError()
        (ln,) = _CHUNK_LEN.unpack_from(buf, off)
        off += _CHUNK_LEN.size
        if not 0 < ln <= limit or off + ln > len(buf):
            raise DecryptionError()
        length = min(params.slots, dim - i * params.slots)
        cts.append(backend.load(handle, bytes(buf[off : off + ln]), length=length, scale=scale))
        off += ln
    if off != len(buf):
        raise DecryptionError()
    return EncryptedVector(params, key_id, dim, float(bound), tuple(cts), backend)


def encrypt_vector(ctx: PublicContext, x: npt.ArrayLike, *, bound: float = 1.0) -> EncryptedVector:
    """Encrypt a flat float vector under the public key, ``slots`` values per ciphertext.

    ``bound`` is the public per-coordinate bound B shared by the cohort (e.g. the clip
    norm): values are encoded at scale ``Delta / B``, so the aggregate's error is a
    fraction ~2^12 / Delta of B. A coordinate with ``|x_i| > B`` or a non-finite value
    raises :class:`~crypto.errors.FieldOverflowError` (it could wrap the aggregate).
    Staleness weights must already be applied by the caller.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise CryptoError("encrypt_vector takes a non-empty 1-D vector")
    _check_dim_bound(int(arr.size), bound)
    if not np.all(np.isfinite(arr)):
        raise FieldOverflowError("cannot encrypt non-finite values")
    if np.max(np.abs(arr)) > bound:
        raise FieldOverflowError(f"a coordinate exceeds the public bound {bound}")
    p = ctx.params
    scale = p.scale / float(bound)
    be = ctx._backend
    cts = tuple(
        be.encrypt(ctx._handle, arr[i : i + p.slots], scale=scale)
        for i in range(0, arr.size, p.slots)
    )
    return EncryptedVector(p, ctx.key_id, int(arr.size), float(bound), cts, be)


@dataclass(frozen=True)
class EncryptedAggregate:
    """The server's sum of ``count`` uploads for one round: all the key holder receives.

    ``ciphertext`` is in the :class:`EncryptedVector` wire format; ``count`` is declared
    by the server (not verifiable by the key holder).
    """

    ciphertext: bytes
    count: int
    dim: int
    bound: float = 1.0
    round: int = 0

    def to_bytes(self) -> bytes:
        """Wire form for the server -> key holder hop."""
        head = _AGG_HEADER.pack(_AGG_MAGIC, _VERSION, self.round, self.count, len(self.ciphertext))
        return head + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedAggregate:
        """Parse :meth:`to_bytes`; dim and bound are read from the embedded ciphertext."""
        if not isinstance(data, bytes) or len(data) < _AGG_HEADER.size + _HEADER.size:
            raise DecryptionError()
        magic, version, rnd, count, ln = _AGG_HEADER.unpack_from(data, 0)
        body = data[_AGG_HEADER.size :]
        if magic != _AGG_MAGIC or version != _VERSION or ln != len(body):
            raise DecryptionError()
        _, _, _, dim, bound, _ = _HEADER.unpack_from(body, 0)
        if not (math.isfinite(bound) and bound > 0 and dim > 0):
            raise DecryptionError()
        return cls(body, count, dim, bound, rnd)


class Aggregator:
    """The server's streaming accumulator: adds each upload on receipt, O(d) memory.

    ``add`` rejects a malformed, foreign or duplicate upload with
    :class:`~crypto.errors.RemoteProtocolError` carrying ``sender`` and leaves the running
    sum untouched, so the round continues without the offender.
    """

    def __init__(self, ctx: PublicContext, dim: int, *, bound: float = 1.0, round: int = 0) -> None:
        _check_dim_bound(dim, bound)
        self._ctx = ctx
        self.dim = dim
        self.bound = float(bound)
        self.round = round
        self._acc: EncryptedVector | None = None
        self._senders: list[int] = []

    @property
    def count(self) -> int:
        """Uploads summed so far."""
        return len(self._senders)

    @property
    def senders(self) -> tuple[int, ...]:
        """Senders whose uploads are in the sum, in order of receipt."""
        return tuple(self._senders)

    def add(self, data: bytes, *, sender: int) -> None:
        """Validate one upload completely, then add it into the running sum."""
        if sender in self._senders:
            raise RemoteProtocolError("duplicate upload", sender=sender)
        if self.count >= self._ctx.params.max_summands:
            raise FieldOverflowError(
                f"more than {self._ctx.params.max_summands} summands could wrap the sum"
            )
        try:
            vec = EncryptedVector.from_bytes(self._ctx, data, dim=self.dim, bound=self.bound)
        except CryptoError as exc:
            raise RemoteProtocolError("malformed ciphertext", sender=sender) from exc
        if self._acc is None:
            self._acc = vec
        else:
            be = self._ctx._backend
            for acc_ct, ct in zip(self._acc._cts, vec._cts, strict=True):
                be.add_inplace(acc_ct, ct)
        self._senders.append(sender)

    def result(self) -> EncryptedAggregate:
        """The summed ciphertext with its declared count, for the key holder."""
        if self._acc is None:
            raise LocalProtocolError("no upload was aggregated")
        return EncryptedAggregate(
            self._acc.to_bytes(), self.count, self.dim, self.bound, self.round
        )


# --------------------------------------------------------------------------------------
# In-memory round
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CkksRoundResult:
    """Outcome of :func:`simulate_ckks_round`.

    ``total``: the key holder's decryption of the sum of the survivors' inputs;
    ``survivors``: sorted indices whose upload is in the sum; ``upload_bytes``: index ->
    bytes of each upload that reached the server; ``excluded``: index -> reason for each
    upload the server rejected; ``aggregate_bytes``: size of the server -> key holder
    message; ``public_context_bytes``: size of the public context each party downloads.
    """

    total: FloatArray
    survivors: tuple[int, ...]
    upload_bytes: dict[int, int]
    excluded: dict[int, str]
    aggregate_bytes: int
    public_context_bytes: int
    upload_sha256: dict[int, str] = field(default_factory=dict)


def simulate_ckks_round(
    inputs: Sequence[npt.ArrayLike],
    *,
    params: CkksParams | None = None,
    bound: float = 1.0,
    drop: Collection[int] | Mapping[int, str] | None = None,
    tamper: Mapping[int, Callable[[bytes], bytes]] | None = None,
    key_holder: KeyHolder | None = None,
    round: int = 0,
) -> CkksRoundResult:
    """Run key holder, clients and server in memory over ``inputs`` (already weighted).

    ``drop`` lists clients that go silent before uploading (a mapping index -> stage is
    accepted for symmetry with ``crypto.secagg.simulate_round``; the only CKKS stage is
    ``"upload"``). ``tamper`` maps an index to a function applied to that client's
    upload bytes (tests use it to inject malformed ciphertexts). Raises
    :class:`~crypto.errors.RoundAbortedError` when fewer than the key holder's
    ``min_summands`` uploads survive.
    """
    if not inputs:
        raise LocalProtocolError("simulate_ckks_round needs at least one input")
    vecs = [np.asarray(x, dtype=np.float64) for x in inputs]
    dim = int(vecs[0].size)
    if any(v.ndim != 1 or v.size != dim for v in vecs):
        raise LocalProtocolError("all inputs must be 1-D vectors of the same length")
    if isinstance(drop, Mapping):
        if any(stage != "upload" for stage in drop.values()):
            raise LocalProtocolError("the only CKKS drop stage is 'upload'")
    dropped = set(drop or ())
    kh = key_holder or KeyHolder.generate(params or DEFAULT_PARAMS)
    if params is not None and kh.params != params:
        raise LocalProtocolError("key_holder.params differ from params")
    pub_bytes = kh.public_context_bytes()
    server_ctx = PublicContext.from_bytes(pub_bytes, kh.params)
    client_ctx = PublicContext.from_bytes(pub_bytes, kh.params)
    agg = Aggregator(server_ctx, dim, bound=bound, round=round)
    uploads: dict[int, int] = {}
    digests: dict[int, str] = {}
    excluded: dict[int, str] = {}
    for i, v in enumerate(vecs):
        if i in dropped:
            continue
        blob = encrypt_vector(client_ctx, v, bound=bound).to_bytes()
        if tamper and i in tamper:
            blob = tamper[i](blob)
        uploads[i] = len(blob)
        digests[i] = hashlib.sha256(blob).hexdigest()
        try:
            agg.add(blob, sender=i)
        except RemoteProtocolError as exc:
            excluded[i] = str(exc)
    if agg.count < kh.min_summands:
        raise RoundAbortedError(
            f"{agg.count} upload(s) survived; the key holder requires {kh.min_summands}"
        )
    result = agg.result()
    total = kh.decrypt_aggregate(result)
    return CkksRoundResult(
        total=total,
        survivors=tuple(sorted(agg.senders)),
        upload_bytes=uploads,
        excluded=excluded,
        aggregate_bytes=len(result.to_bytes()),
        public_context_bytes=len(pub_bytes),
        upload_sha256=digests,
    )
