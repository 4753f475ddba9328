"""CKKS additive aggregation: key holder, clients, streaming server (TenSEAL backend).

This is the only module of secure-fl that imports :mod:`tenseal`. Everything
TenSEAL-specific sits in :class:`TenSEALBackend`, one implementation of the small
:class:`CkksBackend` protocol, so another HE library (OpenFHE, Lattigo via bindings, ...)
could replace it without touching the roles below.

Roles and keys (see ``docs/threat-model.md``)
---------------------------------------------
* **KeyHolder** runs :meth:`KeyHolder.generate`: it owns the secret key, exports the
  *public* context (public key only, no secret, relinearization or Galois keys) signed
  with its Ed25519 identity for a session id it draws itself
  (:meth:`KeyHolder.signed_context`), and decrypts only aggregates
  (:meth:`KeyHolder.decrypt_aggregate`), **counting them itself**: the number of
  distinct roster members (``members``) whose signed :class:`UploadReceipt` over
  (session, round, key id, SHA-256 of the upload) came with the aggregate; it refuses
  below ``min_summands`` or when the server's declared count differs, and each key
  decrypts once whatever round is declared. Secret material is written only by
  :meth:`KeyHolder.save_secret` (mode 0600, never overwrites).
* **Clients** (:class:`CkksClient`) accept only a context signed by the key holder
  identity they pin (and, optionally, a pinned key id), weight their own update by
  their staleness weight, encrypt, and sign a receipt for the bytes they upload.
* **Server** holds the same public context; :class:`Aggregator` adds each upload into a
  running sum on receipt (memory O(d), not O(n d)), rejects malformed uploads or
  uploads without a valid receipt naming the sender, and hands only the summed
  ciphertext with the receipts (:class:`EncryptedAggregate`) to the key holder. The
  server's context cannot decrypt.

What the receipts do not give: the key holder sees only the sum, so a server that sums
a *subset* of the signed uploads while forwarding every receipt is not detected here;
and the key holder must not collude with the server (``docs/threat-model.md``).

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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.errors import (
    CryptoError,
    DecryptionError,
    FieldOverflowError,
    LocalProtocolError,
    RemoteProtocolError,
    RoundAbortedError,
)
from crypto.prg import Csprng
from crypto.signatures import generate_identity, identity_public_bytes, sign, verify

__all__ = [
    "DEFAULT_FLOOD_BITS",
    "DEFAULT_PARAMS",
    "HE_STANDARD_128_MAX_LOG_Q",
    "NVFLARE_PARAMS",
    "Aggregator",
    "CONTEXT_SIGNATURE",
    "UPLOAD_SIGNATURE",
    "CkksBackend",
    "CkksClient",
    "CkksParams",
    "CkksRoundResult",
    "EncryptedAggregate",
    "EncryptedVector",
    "KeyHolder",
    "PublicContext",
    "SignedContext",
    "TenSEALBackend",
    "UploadReceipt",
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
_AGG_HEADER = struct.Struct("<7sBQIQI")  # magic, version, round, count, len(ciphertext), receipts
_AGG_MAGIC: Final = b"SFLCKAG"
_AGG_VERSION: Final = 2
_SIGNED_MAGIC: Final = b"SFLCKSC"
_SIGNED_HEADER = struct.Struct("<7sB32s32s64s")  # magic, version, session id, holder key, signature
#: Signature context (crypto.signatures) of the key holder over ``key_id || session_id``.
CONTEXT_SIGNATURE: Final = b"ckks-public-context"
#: Signature context of a client over ``session_id || round u64 || key_id || SHA-256(upload)``.
UPLOAD_SIGNATURE: Final = b"ckks-upload"
_RECEIPT_BYTES: Final = 32 + 32 + 64


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


def _receipt_message(session_id: bytes, round: int, key_id: bytes, digest: bytes) -> bytes:
    return session_id + struct.pack("<Q", round) + key_id + digest


@dataclass(frozen=True)
class SignedContext:
    """The key holder's public context, bound to its identity and to one session.

    ``signature`` is the key holder's Ed25519 signature (context
    :data:`CONTEXT_SIGNATURE`) over ``key_id || session_id``, where ``key_id`` is the
    SHA-256 of ``context`` (the same id every ciphertext header carries). A client pins
    the key holder's identity key ``holder_key`` (and, optionally, an expected
    ``key_id``) and accepts nothing else, so a context the server made itself is refused
    (:class:`CkksClient`).
    """

    context: bytes
    session_id: bytes
    holder_key: bytes
    signature: bytes

    @property
    def key_id(self) -> bytes:
        return _key_id(self.context)

    def to_bytes(self) -> bytes:
        return _SIGNED_HEADER.pack(_SIGNED_MAGIC, _VERSION, self.session_id, self.holder_key, self.signature) + self.context

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedContext:
        if not isinstance(data, bytes) or len(data) <= _SIGNED_HEADER.size:
            raise CryptoError("invalid signed CKKS context")
        magic, version, session, holder, sig = _SIGNED_HEADER.unpack_from(data, 0)
        if magic != _SIGNED_MAGIC or version != _VERSION:
            raise CryptoError("invalid signed CKKS context")
        return cls(data[_SIGNED_HEADER.size :], session, holder, sig)


@dataclass(frozen=True)
class UploadReceipt:
    """A client's signed statement "I uploaded the ciphertext with SHA-256 ``digest`` in
    session ``s``, round ``r``, under key ``key_id``" (context :data:`UPLOAD_SIGNATURE`).

    The key holder counts summands from these, not from the server's declaration.
    Wire form: ``client_key 32 B | digest 32 B | signature 64 B``.
    """

    client_key: bytes
    digest: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return self.client_key + self.digest + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> UploadReceipt:
        if not isinstance(data, bytes) or len(data) != _RECEIPT_BYTES:
            raise DecryptionError()
        return cls(data[:32], data[32:64], data[64:])

    def valid_for(self, *, session_id: bytes, round: int, key_id: bytes) -> bool:
        """Whether the signature verifies for this session, round and key."""
        try:
            verify(self.client_key, self.signature, _receipt_message(session_id, round, key_id, self.digest),
                   context=UPLOAD_SIGNATURE)
        except CryptoError:
            return False
        return True


class CkksClient:
    """A client's CKKS role: encrypt under a context the pinned key holder signed, and
    sign a receipt for each upload.

    Refuses (:class:`~crypto.errors.CryptoError`) a context whose signature does not
    verify under the pinned ``key_holder`` identity key, or whose ``key_id`` differs from
    the pinned ``key_id`` when one is given (client configuration or roster): the server
    cannot substitute a context whose secret key it holds.
    """

    def __init__(
        self,
        signed: SignedContext,
        *,
        key_holder: bytes,
        identity_key: Ed25519PrivateKey,
        params: CkksParams = DEFAULT_PARAMS,
        key_id: bytes | None = None,
        backend: CkksBackend | None = None,
    ) -> None:
        if not isinstance(signed, SignedContext):
            raise CryptoError("CkksClient takes a SignedContext")
        if signed.holder_key != key_holder:
            raise CryptoError("the CKKS context is not signed by the pinned key holder")
        verify(key_holder, signed.signature, signed.key_id + signed.session_id, context=CONTEXT_SIGNATURE)
        if key_id is not None and signed.key_id != key_id:
            raise CryptoError("the CKKS context's key id is not the pinned one")
        self.context = PublicContext.from_bytes(signed.context, params, backend=backend)
        self.session_id = signed.session_id
        self._identity = identity_key
        self.identity = identity_public_bytes(identity_key)

    def encrypt(self, x: npt.ArrayLike, *, bound: float = 1.0, round: int) -> tuple[bytes, UploadReceipt]:
        """The upload bytes of ``x`` and the client's signed receipt for them."""
        blob = encrypt_vector(self.context, x, bound=bound).to_bytes()
        return blob, self.sign_upload(blob, round=round)

    def sign_upload(self, blob: bytes, *, round: int) -> UploadReceipt:
        """The client's receipt for the upload bytes ``blob`` in ``round`` of this session."""
        digest = hashlib.sha256(bytes(blob)).digest()
        sig = sign(self._identity, _receipt_message(self.session_id, round, self.context.key_id, digest),
                   context=UPLOAD_SIGNATURE)
        return UploadReceipt(self.identity, digest, sig)


class KeyHolder:
    """Owner of the CKKS secret key; decrypts only aggregates, and counts them itself.

    Accountability (docs/threat-model.md: the server never decides alone what the key
    holder decrypts):

    * The public context is published signed with the key holder's Ed25519 identity
      (:meth:`signed_context`), for a session id the key holder draws itself.
    * :meth:`decrypt_aggregate` ignores the server's declared ``count``: it recomputes it
      as the number of **distinct roster members** (``members``: the clients' identity
      public keys, given to the key holder, not by the server) with a valid
      :class:`UploadReceipt` for (this session, the aggregate's round, this key id), and
      refuses below ``min_summands`` or when the declaration differs.
    * Each key decrypts **once**, whatever round number is declared.

    What remains (``docs/threat-model.md``): the key holder sees only the sum, so it
    cannot check that the sum contains every signed upload; a server that sums a subset
    while forwarding all receipts is not detected here. And the key holder must not
    collude with the server: together they decrypt every individual ciphertext.
    """

    __slots__ = (
        "_backend",
        "_identity",
        "_public_bytes",
        "_rng",
        "_secret",
        "_spent",
        "flood_bits",
        "key_id",
        "members",
        "min_summands",
        "params",
        "session_id",
    )

    def __init__(
        self,
        params: CkksParams,
        secret_handle: object,
        *,
        min_summands: int,
        backend: CkksBackend,
        members: Collection[bytes] | None = None,
        identity_key: Ed25519PrivateKey | None = None,
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
        if members is not None and not all(isinstance(m, bytes) and len(m) == 32 for m in members):
            raise CryptoError("members are 32-byte Ed25519 identity public keys")
        self.params = params
        self.min_summands = min_summands
        self.flood_bits = flood_bits
        self._rng = rng or Csprng.from_entropy()
        self._backend = backend
        self._secret = secret_handle
        self._public_bytes = backend.export_context(secret_handle, secret=False)
        self.key_id = _key_id(self._public_bytes)
        self.members: frozenset[bytes] | None = None if members is None else frozenset(members)
        self._identity = identity_key or generate_identity(self._rng)
        self.session_id = self._rng.random_bytes(32)
        self._spent: int | None = None

    @classmethod
    def generate(
        cls,
        params: CkksParams = DEFAULT_PARAMS,
        *,
        min_summands: int = 2,
        members: Collection[bytes] | None = None,
        identity_key: Ed25519PrivateKey | None = None,
        flood_bits: int | None = DEFAULT_FLOOD_BITS,
        rng: Csprng | None = None,
        backend: CkksBackend | None = None,
    ) -> KeyHolder:
        """Generate a fresh key pair (explicit key-generation step).

        Generating a fresh key pair per round is cheap (~10 ms, a ~108 KB public context)
        and limits every secret key to one released decryption (see
        :meth:`decrypt_aggregate`). ``members`` are the identity keys of the clients whose
        receipts count; without them the key holder refuses to decrypt (fails closed).
        """
        be = backend or _DEFAULT_BACKEND
        return cls(
            params,
            be.generate(params),
            min_summands=min_summands,
            backend=be,
            members=members,
            identity_key=identity_key,
            flood_bits=flood_bits,
            rng=rng,
        )

    @property
    def identity_public_key(self) -> bytes:
        """The key holder's Ed25519 identity (what clients pin)."""
        return identity_public_bytes(self._identity)

    def public_context_bytes(self) -> bytes:
        """The public context to distribute to the server and clients (no secret key)."""
        return self._public_bytes

    def public_context(self) -> PublicContext:
        """The public context as the other roles load it (round-trips through bytes)."""
        return PublicContext.from_bytes(self._public_bytes, self.params, backend=self._backend)

    def signed_context(self) -> SignedContext:
        """The public context signed over ``key_id || session_id`` (what clients accept)."""
        sig = sign(self._identity, self.key_id + self.session_id, context=CONTEXT_SIGNATURE)
        return SignedContext(self._public_bytes, self.session_id, self.identity_public_key, sig)

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
        members: Collection[bytes] | None = None,
        identity_key: Ed25519PrivateKey | None = None,
        flood_bits: int | None = DEFAULT_FLOOD_BITS,
        rng: Csprng | None = None,
        backend: CkksBackend | None = None,
    ) -> KeyHolder:
        """Load a secret context written by :meth:`save_secret`; refuse lax permissions.

        The "decrypts once" record lives in the object: a key reloaded from disk must
        not be used for a second aggregate (generate a key per aggregation).
        """
        p = Path(path)
        if p.stat().st_mode & 0o077:
            raise CryptoError("secret key file must not be accessible by group or others")
        be = backend or _DEFAULT_BACKEND
        handle = be.load_context(p.read_bytes(), params, secret=True)
        return cls(
            params, handle, min_summands=min_summands, backend=be, members=members,
            identity_key=identity_key, flood_bits=flood_bits, rng=rng,
        )

    def signed_count(self, agg: EncryptedAggregate) -> int:
        """Distinct roster members with a valid receipt for (session, ``agg.round``,
        key id), each counted once, and at most once per ciphertext digest."""
        members = self.members or frozenset()
        keys: set[bytes] = set()
        digests: set[bytes] = set()
        for r in agg.receipts:
            if r.client_key in members and r.client_key not in keys and r.digest not in digests and r.valid_for(
                session_id=self.session_id, round=agg.round, key_id=self.key_id
            ):
                keys.add(r.client_key)
                digests.add(r.digest)
        return len(keys)

    def decrypt_aggregate(self, agg: EncryptedAggregate) -> FloatArray:
        """Decrypt a server aggregate into a float64 vector, after counting it.

        Refuses (``LocalProtocolError``) when the key holder has no ``members`` roster,
        when this key already decrypted an aggregate (whatever round is declared), when
        fewer than ``min_summands`` distinct roster members signed receipts for this
        session, round and key (:meth:`signed_count`), or when the server's declared
        ``count`` differs from that signed count. Raises the opaque
        ``DecryptionError`` for a ciphertext that does not parse under this key, and also
        when the plaintext exceeds ``count * bound`` in any coordinate: a summand under
        another key (or a corrupted one) decrypts to noise of magnitude
        ~2^(data bits - scale bits), which this catches w.h.p.

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
        destroy the 1e-6 precision target; a fresh key per aggregation (each key
        decrypts once) remains the structural mitigation. The flooding is not
        differential privacy either.
        """
        if not isinstance(agg, EncryptedAggregate):
            raise LocalProtocolError("decrypt_aggregate takes an EncryptedAggregate")
        if self._spent is not None:
            raise LocalProtocolError(
                f"this key already decrypted an aggregate (declared round {self._spent}); each key decrypts once"
            )
        if self.members is None:
            raise LocalProtocolError(
                "the key holder has no roster of client identity keys, so it cannot count summands itself"
            )
        count = self.signed_count(agg)
        if count < self.min_summands:
            raise LocalProtocolError(
                f"key holder refuses to decrypt: {count} distinct roster member(s) signed for this "
                f"session, round {agg.round} and key; policy minimum is {self.min_summands}"
            )
        if agg.count != count:
            raise LocalProtocolError(
                f"the server declares {agg.count} summands but {count} roster members signed receipts"
            )
        if count > self.params.max_summands:
            raise LocalProtocolError("aggregate count exceeds the parameters' capacity")
        vec = _parse_vector(
            self.params,
            self.key_id,
            self._secret,
            self._backend,
            agg.ciphertext,
            dim=agg.dim,
            bound=agg.bound,
        )
        self._spent = agg.round  # spent even if the plaintext check below fails
        parts = [self._backend.decrypt(self._secret, ct) for ct in vec._cts]
        out = np.concatenate(parts)[: agg.dim] if parts else np.zeros(0)
        limit = count * agg.bound * (1.0 + 1e-6) + 1e-3 * agg.bound
        if out.shape != (agg.dim,) or not np.all(np.abs(out) <= limit):
            raise DecryptionError()
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
    """The server's sum of uploads for one round: all the key holder receives.

    ``ciphertext`` is in the :class:`EncryptedVector` wire format; ``count`` and
    ``round`` are declared by the server and ``receipts`` are the clients' signed
    :class:`UploadReceipt` of the summed uploads: the key holder recomputes the count
    from them (:meth:`KeyHolder.signed_count`) and never trusts ``count`` alone.
    """

    ciphertext: bytes
    count: int
    dim: int
    bound: float = 1.0
    round: int = 0
    receipts: tuple[UploadReceipt, ...] = ()

    def to_bytes(self) -> bytes:
        """Wire form for the server -> key holder hop (version 2: receipts appended)."""
        head = _AGG_HEADER.pack(
            _AGG_MAGIC, _AGG_VERSION, self.round, self.count, len(self.ciphertext), len(self.receipts)
        )
        return head + self.ciphertext + b"".join(r.to_bytes() for r in self.receipts)

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedAggregate:
        """Parse :meth:`to_bytes`; dim and bound are read from the embedded ciphertext."""
        if not isinstance(data, bytes) or len(data) < _AGG_HEADER.size + _HEADER.size:
            raise DecryptionError()
        magic, version, rnd, count, ln, n_receipts = _AGG_HEADER.unpack_from(data, 0)
        body = data[_AGG_HEADER.size : _AGG_HEADER.size + ln]
        tail = data[_AGG_HEADER.size + ln :]
        if (
            magic != _AGG_MAGIC
            or version != _AGG_VERSION
            or ln != len(body)
            or len(body) < _HEADER.size
            or len(tail) != n_receipts * _RECEIPT_BYTES
        ):
            raise DecryptionError()
        _, _, _, dim, bound, _ = _HEADER.unpack_from(body, 0)
        if not (math.isfinite(bound) and bound > 0 and dim > 0):
            raise DecryptionError()
        receipts = tuple(
            UploadReceipt.from_bytes(tail[i : i + _RECEIPT_BYTES]) for i in range(0, len(tail), _RECEIPT_BYTES)
        )
        return cls(body, count, dim, bound, rnd, receipts)


class Aggregator:
    """The server's streaming accumulator: adds each upload on receipt, O(d) memory.

    ``add`` rejects a malformed, foreign or duplicate upload with
    :class:`~crypto.errors.RemoteProtocolError` carrying ``sender`` and leaves the running
    sum untouched, so the round continues without the offender. With ``session_id`` set
    (the key holder's, from its :class:`SignedContext`) every upload must come with its
    client's :class:`UploadReceipt` for this session and round, over exactly these bytes;
    the receipts travel with the aggregate so the key holder can count it itself.
    """

    def __init__(
        self, ctx: PublicContext, dim: int, *, bound: float = 1.0, round: int = 0, session_id: bytes | None = None
    ) -> None:
        _check_dim_bound(dim, bound)
        self._ctx = ctx
        self.dim = dim
        self.bound = float(bound)
        self.round = round
        self.session_id = session_id
        self._acc: EncryptedVector | None = None
        self._senders: list[int] = []
        self._receipts: list[UploadReceipt] = []

    @property
    def count(self) -> int:
        """Uploads summed so far."""
        return len(self._senders)

    @property
    def senders(self) -> tuple[int, ...]:
        """Senders whose uploads are in the sum, in order of receipt."""
        return tuple(self._senders)

    def add(self, data: bytes, *, sender: int, receipt: UploadReceipt | None = None) -> None:
        """Validate one upload (and its receipt) completely, then add it into the running sum."""
        if sender in self._senders:
            raise RemoteProtocolError("duplicate upload", sender=sender)
        if self.count >= self._ctx.params.max_summands:
            raise FieldOverflowError(
                f"more than {self._ctx.params.max_summands} summands could wrap the sum"
            )
        if self.session_id is not None:
            if (
                not isinstance(receipt, UploadReceipt)
                or receipt.digest != hashlib.sha256(bytes(data)).digest()
                or not receipt.valid_for(session_id=self.session_id, round=self.round, key_id=self._ctx.key_id)
            ):
                raise RemoteProtocolError("upload without a valid signed receipt", sender=sender)
            if any(r.client_key == receipt.client_key for r in self._receipts):
                raise RemoteProtocolError("a second upload under one client identity", sender=sender)
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
        if receipt is not None:
            self._receipts.append(receipt)

    def result(self) -> EncryptedAggregate:
        """The summed ciphertext with its declared count and the receipts, for the key holder."""
        if self._acc is None:
            raise LocalProtocolError("no upload was aggregated")
        return EncryptedAggregate(
            self._acc.to_bytes(), self.count, self.dim, self.bound, self.round, tuple(self._receipts)
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
    client_keys: Sequence[Ed25519PrivateKey] | None = None,
    round: int = 0,
) -> CkksRoundResult:
    """Run key holder, clients and server in memory over ``inputs`` (already weighted).

    The accountable flow of :class:`KeyHolder`: the key holder signs its public context;
    each client (identity ``client_keys[i]``, fresh keys when omitted) accepts it only
    under the key holder's pinned identity, encrypts and signs a receipt; the server sums
    uploads with their receipts; the key holder counts the receipts of its ``members``
    (by default exactly the clients' identities) and decrypts once.

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
    if client_keys is None:
        entropy = Csprng.from_entropy()
        client_keys = [generate_identity(entropy) for _ in vecs]
    if len(client_keys) != len(vecs):
        raise LocalProtocolError("one client identity key per input")
    kh = key_holder or KeyHolder.generate(
        params or DEFAULT_PARAMS, members=[identity_public_bytes(k) for k in client_keys]
    )
    if params is not None and kh.params != params:
        raise LocalProtocolError("key_holder.params differ from params")
    signed = kh.signed_context()
    pub_bytes = signed.to_bytes()
    server_ctx = PublicContext.from_bytes(signed.context, kh.params)
    agg = Aggregator(server_ctx, dim, bound=bound, round=round, session_id=signed.session_id)
    uploads: dict[int, int] = {}
    digests: dict[int, str] = {}
    excluded: dict[int, str] = {}
    pinned = kh.identity_public_key  # the clients' configuration (roster: ckks_key_holder)
    for i, v in enumerate(vecs):
        if i in dropped:
            continue
        client = CkksClient(
            SignedContext.from_bytes(pub_bytes), key_holder=pinned, identity_key=client_keys[i], params=kh.params
        )
        blob, receipt = client.encrypt(v, bound=bound, round=round)
        if tamper and i in tamper:
            blob = tamper[i](blob)
        uploads[i] = len(blob)
        digests[i] = hashlib.sha256(blob).hexdigest()
        try:
            agg.add(blob, sender=i, receipt=receipt)
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
