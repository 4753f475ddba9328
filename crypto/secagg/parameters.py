"""Sizing of the SecAgg+ threshold ``t``, degree ``k`` and consistency quorum for ``c`` colluders.

One function decides the protocol parameters everywhere (the in-process aggregator,
the configuration check, the Flower server, the clients' own checks), so the relation
below is enforced once.

Notation: ``n`` cohort size, ``k`` the degree of the SecAgg+ graph (``n - 1`` on the
complete graph), ``h = k + 1`` the holder set ``N(u) ∪ {u}`` of an owner ``u``, ``t``
Shamir's threshold inside each holder set, ``c`` = ``threat.max_colluders``: clients
that collude with the (possibly malicious) server. The parameters are admissible iff

    (1)  2t > h + c        per-owner consistency: two survivor sets that each collect
                           t signatures from one holder set share at least
                           2t - h > c signers, so at least one honest signer, who
                           signs only one set (Bonawitz et al. CCS'17 section 4 with
                           c signers that sign everything);
    (2)  h >= t + c        an owner keeps t honest holders when its c colluding
                           holders withhold their shares (robust reconstruction), and
                           a client masks with at least t + c - 1 partners or
                           withdraws (at least t - 1 of them honest);
    (3)  t > c             implied by (1) and (2): the c colluders' shares of any
                           secret are fewer than t, so they reveal nothing (Shamir).

Globally, a client releases shares only for a survivor set signed by a quorum
``q = floor((n + c) / 2) + 1`` of the whole cohort (2q > n + c: two such sets share an
honest signer), so every honest client that releases anything agrees on one survivor
set even on a sparse graph, where (1) alone only protects one holder set at a time.

Defaults: ``k = default_neighbors(n)`` (the O(log n) degree of Bell et al. CCS'20),
raised while (1)-(2) have no solution, and the smallest ``t`` satisfying (1), which
leaves ``h - t - c`` dropouts per holder set before a client withdraws.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto.errors import LocalProtocolError
from crypto.secagg.graph import default_neighbors, effective_degree

__all__ = ["SecAggParameters", "check_parameters", "consistency_quorum", "secagg_parameters"]


@dataclass(frozen=True)
class SecAggParameters:
    """Admissible parameters of one round: ``neighbors`` is the ``RoundConfig`` argument
    (``None`` for the complete graph), ``holders = k + 1``, ``quorum`` the cohort-wide
    number of consistency signatures a client needs before it releases any share."""

    n: int
    neighbors: int | None
    holders: int
    threshold: int
    max_colluders: int
    quorum: int


def _int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise LocalProtocolError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def consistency_quorum(n: int, max_colluders: int) -> int:
    """``q = floor((n + c) / 2) + 1``: two sets signed by q of n clients share an honest signer."""
    return (_int(n, "cohort size", 2) + _int(max_colluders, "max_colluders", 0)) // 2 + 1


def check_parameters(n: int, neighbors: int | None, threshold: int, max_colluders: int) -> SecAggParameters:
    """Validate (t, k, c) for ``n`` clients against (1)-(2) of the module docstring.

    Raises :class:`~crypto.errors.LocalProtocolError` naming the violated relation.
    """
    n = _int(n, "cohort size", 2)
    c = _int(max_colluders, "max_colluders", 0)
    t = _int(threshold, "threshold", 1)
    h = effective_degree(n, neighbors) + 1
    if t > h:
        raise LocalProtocolError(f"threshold {t} exceeds the {h} share holders per client (k + 1)")
    if 2 * t <= h + c:
        raise LocalProtocolError(
            f"threshold {t} is too small for {h} share holders and {c} colluders: per-owner "
            f"consistency needs 2t > k + 1 + c = {h + c} (t >= {(h + c) // 2 + 1})"
        )
    if h < t + c:
        raise LocalProtocolError(
            f"{h} share holders per client cannot hold threshold {t} plus {c} colluders: "
            f"need k + 1 >= t + c = {t + c} (raise the cohort size or neighbors, or lower "
            f"max_colluders)"
        )
    return SecAggParameters(
        n=n,
        neighbors=None if h == n else neighbors,
        holders=h,
        threshold=t,
        max_colluders=c,
        quorum=consistency_quorum(n, c),
    )


def secagg_parameters(
    n: int, *, max_colluders: int, threshold: int | None = None, neighbors: int | None = None
) -> SecAggParameters:
    """(k, t, q) for ``n`` clients and ``c = max_colluders``, honouring a user's t and k.

    ``neighbors=None`` picks ``default_neighbors(n)`` and raises it (in steps of 2)
    until some ``t`` satisfies ``2t > k + 1 + c`` and ``k + 1 >= t + c``; ``threshold``
    defaults to the smallest such ``t``. An explicit ``threshold``/``neighbors`` that
    violates the relations raises :class:`~crypto.errors.LocalProtocolError`.
    """
    n = _int(n, "cohort size", 2)
    c = _int(max_colluders, "max_colluders", 0)
    if neighbors is not None:
        _int(neighbors, "neighbors", 1)
        k: int | None = None if neighbors >= n - 1 else neighbors
    else:
        k = default_neighbors(n)
        # raise k until 3c < h (the condition for a t with (h + c)/2 < t <= h - c)
        while effective_degree(n, k) + 1 <= 3 * c and effective_degree(n, k) < n - 1:
            k += 2
        k = None if effective_degree(n, k) >= n - 1 else k
    h = effective_degree(n, k) + 1
    t = (h + c) // 2 + 1 if threshold is None else threshold
    return check_parameters(n, k, t, c)
