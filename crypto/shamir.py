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

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

from crypto.errors import CryptoError
from crypto.prg import Csprng

__all__ = [
    "MAX_SUBSETS",
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "lagrange_coefficients_at_zero",
    "reconstruct",
    "robust_reconstruct",
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
    nums, dens = [], []
    for j, xj in enumerate(points):
        num, den = 1, 1
        for m, xm in enumerate(points):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        nums.append(num)
        dens.append(den)
    # one modular inversion for all denominators (Montgomery's batch trick)
    prefix = [1]
    for den in dens:
        prefix.append(prefix[-1] * den % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    coeffs = [0] * len(points)
    for j in range(len(points) - 1, -1, -1):
        coeffs[j] = nums[j] * inv % PRIME * prefix[j] % PRIME
        inv = inv * dens[j] % PRIME
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


def _solve(rows: list[list[int]], rhs: list[int], unknowns: int) -> list[int] | None:
    """One solution of ``rows @ z = rhs`` mod P (free variables 0), or ``None`` if none."""
    aug = [row[:] + [b] for row, b in zip(rows, rhs, strict=True)]
    pivots: list[int] = []
    r = 0
    for col in range(unknowns):
        piv = next((i for i in range(r, len(aug)) if aug[i][col]), None)
        if piv is None:
            continue
        aug[r], aug[piv] = aug[piv], aug[r]
        inv = pow(aug[r][col], -1, PRIME)
        aug[r] = [v * inv % PRIME for v in aug[r]]
        for i in range(len(aug)):
            if i != r and aug[i][col]:
                f = aug[i][col]
                aug[i] = [(a - f * b) % PRIME for a, b in zip(aug[i], aug[r], strict=True)]
        pivots.append(col)
        r += 1
    if any(row[-1] for row in aug[r:]):
        return None
    z = [0] * unknowns
    for i, col in enumerate(pivots):
        z[col] = aug[i][-1]
    return z


def _poly_divide(num: list[int], den: list[int]) -> tuple[list[int], bool]:
    """``num / den`` over GF(P) (coefficients low to high): (quotient, exact?)."""
    num = num[:]
    while len(den) > 1 and den[-1] == 0:
        den = den[:-1]
    inv = pow(den[-1], -1, PRIME)
    q = [0] * max(1, len(num) - len(den) + 1)
    for i in range(len(num) - len(den), -1, -1):
        coef = num[i + len(den) - 1] * inv % PRIME
        q[i] = coef
        for j, dj in enumerate(den):
            num[i + j] = (num[i + j] - coef * dj) % PRIME
    return q, not any(num[: len(den) - 1])


def _evaluate(poly: list[int], x: int) -> int:
    acc = 0
    for c in reversed(poly):
        acc = (acc * x + c) % PRIME
    return acc


MAX_SUBSETS = 4096
"""Work bound of :func:`robust_reconstruct`'s subset search (t-subsets tried)."""


def _interpolate(pts: Sequence[tuple[int, int]]) -> list[int] | None:
    """Coefficients (low to high) of the polynomial of degree < len(pts) through ``pts``."""
    rows = [[pow(x, j, PRIME) for j in range(len(pts))] for x, _ in pts]
    return _solve(rows, [y for _, y in pts], len(pts))


def _berlekamp_welch(pts: Sequence[tuple[int, int]], t: int) -> list[int] | None:
    m = len(pts)
    e = (m - t) // 2
    rows, rhs = [], []
    for x, y in pts:
        powers = [pow(x, j, PRIME) for j in range(t + e)]
        rows.append(powers + [(-y * powers[j]) % PRIME for j in range(e)])
        rhs.append(y * pow(x, e, PRIME) % PRIME)
    z = _solve(rows, rhs, t + 2 * e)
    if z is None:
        return None
    f, exact = _poly_divide(z[: t + e], [*z[t + e :], 1])
    if not exact:
        return None
    f = (f + [0] * t)[:t]
    if any(f[t:]) or sum(_evaluate(f, x) != y for x, y in pts) > e:
        return None
    return f


def robust_reconstruct(
    shares: Sequence[tuple[int, int]],
    *,
    threshold: int,
    check: Callable[[bytes], bool],
    coefficients: Sequence[int] | None = None,
    max_subsets: int = MAX_SUBSETS,
) -> tuple[bytes, frozenset[int]]:
    """Recover a secret from ``m >= t`` shares of which some may be wrong: (secret, bad xs).

    1. Fast path: interpolate the first ``t`` shares (``coefficients`` may hold their
       Lagrange coefficients) and accept the result if ``check(secret)`` holds (callers
       check a commitment or a public key): one dot product, the honest case (the
       spare shares are then not examined: a wrong spare share did no harm).
    2. Berlekamp-Welch (Welch & Berlekamp, US patent 4,633,470, 1986; Gemmell & Sudan,
       IPL 1992), if ``e = floor((m - t) / 2) >= 1``: find ``E`` monic of degree ``e``
       and ``Q`` of degree ``< t + e`` with ``Q(x_i) = y_i E(x_i)`` for every share;
       ``f = Q / E`` is the sharing polynomial whenever at most ``e`` shares are wrong.
       One ``m x (t + 2e)`` linear system over GF(P): ``O(m^3)`` field operations.
    3. Otherwise (more than ``e`` wrong, or ``m = t + 1``): t-subsets in lexicographic
       order, at most ``max_subsets`` of them, each checked with ``check``; the check
       makes up to ``m - t`` wrong shares correctable, at a bounded cost.

    The wrong shares are those off the recovered polynomial ``f``. Raises
    :class:`~crypto.errors.CryptoError` when neither step finds a polynomial whose
    constant passes ``check`` within the bound.
    """
    pts = sorted(shares)
    _check_points([x for x, _ in pts])
    _check_threshold(threshold, len(pts))
    t, m = threshold, len(pts)
    try:
        fast = reconstruct(list(shares), threshold=t, coefficients=coefficients)
        if check(fast):  # spare shares are not examined when the first t are right
            return fast, frozenset()
    except CryptoError:
        pass

    def accept(f: list[int] | None) -> tuple[bytes, frozenset[int]] | None:
        if f is None or f[0] >= 1 << (8 * SECRET_BYTES):
            return None
        secret = f[0].to_bytes(SECRET_BYTES, "big")
        if not check(secret):
            return None
        return secret, frozenset(x for x, y in pts if _evaluate(f, x) != y)

    if (m - t) // 2 >= 1:
        found = accept(_berlekamp_welch(pts, t))
        if found is not None:
            return found
    for tried, subset in enumerate(itertools.combinations(pts, t)):
        if tried >= max_subsets:
            break
        try:
            candidate = reconstruct(subset, threshold=t)
        except CryptoError:
            continue
        if check(candidate):
            found = accept(_interpolate(subset))
            if found is not None:
                return found
    raise CryptoError(
        f"no {t} of the {m} shares reconstruct a secret that passes its check "
        f"(Berlekamp-Welch and {min(max_subsets, math.comb(m, t))} subsets tried)"
    )


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
