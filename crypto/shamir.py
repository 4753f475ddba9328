"""Shamir t-out-of-n secret sharing of 32-byte secrets over GF(P), P = 2^256 + 297.

Shamir, "How to share a secret", CACM 1979. To share a secret ``s`` (a 32-byte string
read as a big-endian integer, so ``0 <= s < 2^256 < P``) with threshold ``t``:

    f(x) = s + a_1 x + ... + a_{t-1} x^{t-1}  (mod P),   a_i uniform in GF(P)
    share_i = (x_i, f(x_i)),  x_i distinct and non-zero

Any ``t`` shares determine ``f`` and hence ``s = f(0)`` by Lagrange interpolation

    s = sum_j y_j * prod_{m != j} x_m / (x_m - x_j)  (mod P);

any ``t - 1`` shares are jointly uniform and independent of ``s`` (for every candidate
secret there is exactly one polynomial of degree < t through them), so they carry no
information. ``P = 2^256 + 297`` is the smallest prime above 2^256 (checked by the
test-suite), so every 32-byte secret, including a raw X25519 private key, is a field
element; shares serialize to 33 bytes.

In SecAgg the x-coordinate of a client is its cohort index + 1 (x = 0 would reveal the
secret). Coefficients come from the injected :class:`~crypto.prg.Csprng`, never from
``random``/numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from crypto.errors import CryptoError
from crypto.prg import Csprng

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "lagrange_coefficients_at_zero",
    "reconstruct",
    "share_from_bytes",
    "share_to_bytes",
    "split",
]

PRIME = (1 << 256) + 297
SECRET_BYTES = 32
SHARE_BYTES = 33


def _check_threshold(threshold: int, count: int) -> None:
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise CryptoError(f"threshold must be a positive integer, got {threshold!r}")
    if threshold > count:
        raise CryptoError(f"threshold {threshold} exceeds the number of shares {count}")


def _check_points(xs: Sequence[int]) -> None:
    for x in xs:
        if not isinstance(x, int) or isinstance(x, bool) or not 1 <= x < PRIME:
            raise CryptoError(f"share index {x!r} must be an integer in [1, P)")
    if len(set(xs)) != len(xs):
        raise CryptoError("share indices must be distinct")


def split(secret: bytes, *, threshold: int, xs: Sequence[int], rng: Csprng) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of a 32-byte ``secret`` at the distinct non-zero points ``xs``."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise CryptoError(f"a shared secret is exactly {SECRET_BYTES} bytes")
    points = list(xs)
    _check_points(points)
    _check_threshold(threshold, len(points))
    coeffs = [int.from_bytes(secret, "big")] + [rng.randbelow(PRIME) for _ in range(threshold - 1)]
    shares: dict[int, int] = {}
    for x in points:
        acc = 0
        for c in reversed(coeffs):  # Horner's rule
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


def lagrange_coefficients_at_zero(xs: Sequence[int]) -> list[int]:
    """``lambda_j = prod_{m != j} x_m / (x_m - x_j) mod P`` for the points ``xs``.

    Depends only on the point set, so SecAgg's server computes it once per set of
    responders and re-uses it for every secret reconstructed from that set.
    """
    points = list(xs)
    _check_points(points)
    coeffs = []
    for j, xj in enumerate(points):
        num, den = 1, 1
        for m, xm in enumerate(points):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        coeffs.append(num * pow(den, -1, PRIME) % PRIME)
    return coeffs


def reconstruct(
    shares: Iterable[tuple[int, int]], *, threshold: int, coefficients: Sequence[int] | None = None
) -> bytes:
    """Recover the 32-byte secret from at least ``threshold`` shares ``(x, y)``.

    Exactly the first ``threshold`` shares are interpolated. A result that does not fit
    in 32 bytes proves the shares are inconsistent and raises
    :class:`~crypto.errors.CryptoError`; a wrong-but-small result cannot be detected
    here (callers verify against a commitment or a public key).
    """
    pts = list(shares)
    xs = [x for x, _ in pts]
    _check_points(xs)
    _check_threshold(threshold, len(pts))
    for _, y in pts:
        if not isinstance(y, int) or isinstance(y, bool) or not 0 <= y < PRIME:
            raise CryptoError("share value must be an integer in [0, P)")
    use = pts[:threshold]
    lam = (
        lagrange_coefficients_at_zero([x for x, _ in use])
        if coefficients is None
        else list(coefficients)
    )
    if len(lam) != threshold:
        raise CryptoError("need exactly one Lagrange coefficient per share used")
    secret = sum(lj * y for lj, (_, y) in zip(lam, use, strict=True)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise CryptoError("inconsistent shares")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(y: int) -> bytes:
    """Fixed-width (33-byte big-endian) encoding of a share value."""
    if not 0 <= y < PRIME:
        raise CryptoError("share value must be in [0, P)")
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(raw: bytes) -> int:
    """Strict inverse of :func:`share_to_bytes` (exact length, value below P)."""
    if not isinstance(raw, bytes) or len(raw) != SHARE_BYTES:
        raise CryptoError(f"a share value is exactly {SHARE_BYTES} bytes")
    y = int.from_bytes(raw, "big")
    if y >= PRIME:
        raise CryptoError("share value must be in [0, P)")
    return y
