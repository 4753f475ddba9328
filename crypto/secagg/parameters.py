"""Sizing of the SecAgg+ threshold ``t``, degree ``k`` and consistency quorum for ``c`` colluders.

One function decides the protocol parameters everywhere (the in-process aggregator,
the configuration check, the Flower server, the clients' own checks), so the relation
below is enforced once.

Notation: ``n`` cohort size, ``k`` the degree of the SecAgg+ graph (``n - 1`` on the
complete graph), ``h = k + 1`` the holder set ``N(u) ∪ {u}`` of an owner ``u``, ``t``
Shamir's threshold inside each holder set, ``c`` = ``threat.max_colluders``: clients
(in the whole cohort) that collude with the possibly malicious server.

Privacy rests on three rules the clients enforce (see :mod:`crypto.secagg.client`):

* a cohort quorum: a client releases shares only for a survivor set S signed by
  ``q = floor((n + c) / 2) + 1`` clients; two such sets share ``2q - n > c`` signers,
  so an honest one, who signs once: every honest release is for one set S;
* per owner, never both shares: an owner in S gets only its ``b`` shares released,
  an owner outside S only its ``s_sk`` shares;
* a surviving owner's ``b`` shares are released only if at least ``c + 1`` of the
  partners it signed to have masked with are in S (so one honest partner survived,
  whose pairwise mask with the owner nobody can rebuild).

The parameters are admissible iff

    (1)  t > c             the c colluders' shares of a secret are fewer than t and
                           reveal nothing (Shamir);
    (0)  h >= c + 2        a client can have c + 1 mask partners (else no round can
                           release anything under the third rule above);
    (2)  2t > h            a majority of each holder set (Bonawitz et al. CCS'17
                           section 4): two survivor sets cannot both collect t
                           signatures from one holder set;
and, for robustness (not privacy), the default sizing aims at

    (3)  h >= t + c        an owner keeps t honest holders when its colluding holders
                           withhold their shares; a client masks with at least
                           min(t + c, h) - 1 partners (:func:`mask_floor`) or withdraws.

The default threshold is the smallest ``t`` with ``2t > h + c`` (per-owner
consistency with c signers that sign every set: it holds inside each holder set even
without the cohort quorum), capped at ``h - c`` so that (3) holds, and never below
(1)-(2). Neither ``2t > h + c`` nor (3) is required: the cohort quorum already makes
every honest release agree on one set, and requiring them would rule out, e.g., three
sites with one colluder (n = 3, t = 2 or 3, c = 1), which the rules above protect:
there a client masks with every other site, and the round aborts, rather than leaks,
if a site drops.

The default degree is ``default_neighbors(n)`` (the O(log n) degree of Bell et al.
CCS'20), raised while no ``t`` satisfies (1)-(3).
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto.errors import LocalProtocolError
from crypto.secagg.graph import default_neighbors, effective_degree

__all__ = ["SecAggParameters", "check_parameters", "consistency_quorum", "mask_floor", "secagg_parameters"]


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
    if h < c + 2:
        raise LocalProtocolError(
            f"{h} share holders per client leave {h - 1} mask partners, fewer than c + 1 = {c + 1}: "
            f"a surviving client needs one honest surviving partner, so no round could complete"
        )
    if t <= c:
        raise LocalProtocolError(
            f"threshold {t} must exceed the {c} colluders (t > c): their shares would reveal secrets"
        )
    if 2 * t <= h:
        raise LocalProtocolError(
            f"threshold {t} must be a strict majority of the {h} share holders per client "
            f"(2t > k + 1 = {h}); otherwise a server showing different survivor sets to two "
            f"disjoint groups could unmask an individual input"
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
    until some ``t`` satisfies (1)-(3); ``threshold`` defaults to the smallest ``t``
    with ``2t > k + 1 + c``, capped at ``k + 1 - c`` and at least what (1)-(2) need.
    An explicit ``threshold``/``neighbors`` that violates (1)-(2) raises
    :class:`~crypto.errors.LocalProtocolError`.
    """
    n = _int(n, "cohort size", 2)
    c = _int(max_colluders, "max_colluders", 0)
    if neighbors is not None:
        _int(neighbors, "neighbors", 1)
        k: int | None = None if neighbors >= n - 1 else neighbors
    else:
        k = default_neighbors(n)
        # raise k until some t satisfies (1)-(3): max(c + 1, h // 2 + 1) <= t <= h - c
        while effective_degree(n, k) < n - 1 and (
            effective_degree(n, k) + 1 - c < max(c + 1, (effective_degree(n, k) + 1) // 2 + 1)
        ):
            k += 2
        k = None if effective_degree(n, k) >= n - 1 else k
    h = effective_degree(n, k) + 1
    if threshold is None:
        lo = max(c + 1, h // 2 + 1)
        if lo > h:
            raise LocalProtocolError(
                f"no threshold fits {h} share holders per client and {c} colluders: t must satisfy "
                f"max(c + 1, floor((k + 1) / 2) + 1) = {lo} <= t <= k + 1 = {h}"
            )
        threshold = max(lo, min((h + c) // 2 + 1, h - c))
    return check_parameters(n, k, threshold, c)


def mask_floor(holders: int, threshold: int, max_colluders: int) -> int:
    """``min(t + c, h)``: a client with fewer mask partners plus itself withdraws."""
    return min(threshold + max_colluders, holders)
