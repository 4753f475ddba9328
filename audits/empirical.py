"""Empirical privacy tests on a run: canaries, membership inference, gradient inversion.

These are *measurements*, not proofs: an attack that fails says nothing about a better
attack. They catch what an accountant cannot, e.g. noise that the code claims to add
but does not, and they show a reader what "the server saw individual updates" means.

Every test receives a :class:`audits.replay.JobReplay` from its caller: the object that
re-runs the audited job's real aggregator, computes its released model's losses and
takes one SGD step on one record. ``audits`` never imports the software that produced
the run (``secure-fl audit`` passes the secure-fl runner's replay in).

1. One-shot canary estimate
---------------------------
Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical Privacy
Estimation for Federated Learning", ICLR 2024 (arXiv:2302.03098). A small version of
the configured job is re-run through the *real* aggregator (real clipping, noise shares,
masking) with ``k`` extra canary clients whose update is always ``C u_c`` for a fixed
random unit direction ``u_c`` in R^d (``C`` the clip bound, i.e. the sensitivity),
drawn afresh for every audit from the CSPRNG. Half the canaries are inserted ("seen"),
half held out ("unseen"). With ``Delta`` the final model minus the initial one, the
test statistic of canary ``c`` is

    ``cos_c = <u_c, Delta> / ||Delta||``.

Unseen cosines are ~N(0, 1/d) (random directions); seen ones are shifted by the
canary's contribution. Fitting ``N(mu_0, s_0^2)`` to unseen and ``N(mu_1, s_1^2)`` to
seen cosines, the estimate is the epsilon at ``delta`` of the pair of Gaussians,

    ``eps_hat = inf { eps : max(H_eps(P || Q), H_eps(Q || P)) <= delta }``,
    ``H_eps(P || Q) = P(L > eps) - e^eps Q(L > eps)``, ``L = log dP/dQ``,

with ``P = N(mu_1, s_1^2)``, ``Q = N(mu_0, s_0^2)``; ``L`` is quadratic in the
observation, so both probabilities are Gaussian masses of an interval or its
complement (Steinke, "Composition of DP & privacy amplification by subsampling",
arXiv:2210.00597, as used by Andrew et al.). For equal variances this is the
Gaussian mechanism with ``mu = |mu_1 - mu_0| / s``:
``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` (Balle & Wang 2018).
The estimate concerns the *final model only* (the released model), so it is expected to
sit below the accountant's bound.

**When a run fails.** A point estimate from a few dozen seen canaries scatters widely
(its standard error in ``mu`` is about ``1/sqrt(k_seen)``), so it never fails a run by
itself. The audit fails a run only when a *one-sided lower confidence bound*
``eps_low`` (level :data:`CANARY_CONFIDENCE` = 99 % by default) exceeds the claimed
epsilon or the accountant's bound for the re-run itself: only then is there
statistically significant evidence that the claimed noise is not the noise present.
The bound (:func:`canary_lower_bound`) is the equal-variance estimate evaluated at

    ``mu_low = max(|m_1 - m_0| - t_{1-a/4, nu} SE, 0) / s_high``,
    ``SE = sqrt(s_1^2/k_1 + s_0^2/k_0)`` (Welch 1947, ``nu`` by Welch-Satterthwaite),
    ``s_high = s sqrt((k_1 + k_0 - 2) / chi2_{a/2, k_1 + k_0 - 2})``,

``a = 1 - confidence`` split by Bonferroni between the mean shift (two tails of ``a/4``
for ``|mu_1 - mu_0|``) and the pooled standard deviation ``s`` (one tail of ``a/2``).
``eps(mu)`` is increasing in ``mu``, so ``P(eps_low > eps) <= a`` whenever the cosines
are Gaussian given the re-run (the canaries are independent random directions; the
Welch standard error does not assume that uneven canary participation leaves the seen
variance equal to the unseen one). For an honest run the final-model ``mu`` is at most
``sqrt(T) / z`` (``T`` aggregations, noise multiplier ``z``; a linear server optimizer
and the other clients' updates only lower it), whose epsilon is below the RDP bound, so
the false-alarm probability of one audit is at most ``a``; ``benchmarks/canary_false_alarms.py``
measures it.

2. Membership inference on records
----------------------------------
Against the released ``model.pt``: members are clients' training records, non-members
the held-out test records (global and per-client). (a) loss threshold (Yeom et al.,
CSF 2018): score ``-loss(x)``; (b) difficulty-calibrated reference-model attack
(Watson, Guo, Cormode, Sablayrolles, ICLR 2022; as in Carlini et al., "Membership
inference attacks from first principles", S&P 2022): score
``mean_ref loss_ref(x) - loss_target(x)``, with reference models of the same
architecture trained on records disjoint from those evaluated. Reported: AUC and TPR
at FPR <= 0.1 %. With ``N`` non-members the smallest non-zero FPR is ``1/N``; when
``1/N > 0.1 %`` the figure is the TPR at FPR = 0 and the report says so.

3. Gradient inversion
---------------------
For a client holding one record ``x`` that takes one SGD step, the update of the first
linear layer is ``Delta W = -lr g x^T`` and of its bias ``Delta b = -lr g``, so every row
with ``Delta b_i != 0`` gives ``x = Delta W_i / Delta b_i`` (Phong et al., IEEE TIFS
2018; Geiping et al., "Inverting gradients", NeurIPS 2020, Sec. 3). We use the least
squares combination ``x_hat = sum_i Delta b_i Delta W_i / sum_i Delta b_i^2``. The same
attack runs on what the server actually received: the plaintext update (``plain``) or
the masked vector (``secagg``, read off the wire with the protocol's interceptor hook,
then decoded as if it were an unmasked upload). Quality: Pearson correlation, MSE and a
single-window SSIM against the true record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from audits.epsilon_check import rerun_epsilon
from audits.errors import LedgerError
from audits.replay import JobFacts, JobReplay, Records
from crypto.prg import Csprng
from crypto.secagg.simulate import Interceptor

__all__ = [
    "CANARY_CONFIDENCE",
    "CanaryBound",
    "CanaryResult",
    "EmpiricalError",
    "EmpiricalSizes",
    "InversionResult",
    "MiaAttack",
    "MiaResult",
    "canary_estimate",
    "canary_lower_bound",
    "epsilon_two_gaussians",
    "gradient_inversion",
    "hockey_stick_two_gaussians",
    "image_quality",
    "invert_linear_update",
    "membership_inference",
    "one_shot_epsilon",
    "roc_curve",
]

Vec = npt.NDArray[np.float64]
EPS_CAP = 1.0e4
#: Level of the one-sided lower confidence bound that alone may fail a run.
CANARY_CONFIDENCE = 0.99


class EmpiricalError(LedgerError):
    """An empirical test cannot run on this run directory (``location`` says why)."""


# ============================================================================ math


def hockey_stick_two_gaussians(mu_p: float, sd_p: float, mu_q: float, sd_q: float, eps: float) -> float:
    """``H_eps(P || Q) = sup_S P(S) - e^eps Q(S)`` for ``P = N(mu_p, sd_p^2)``, ``Q = N(mu_q, sd_q^2)``.

    The supremum is attained at ``S = {y : L(y) > eps}`` with the privacy loss
    ``L(y) = log p(y)/q(y) = A y^2 + B y + C0``; ``A = 1/(2 sd_q^2) - 1/(2 sd_p^2)``,
    ``B = mu_p/sd_p^2 - mu_q/sd_q^2``, ``C0 = mu_q^2/(2 sd_q^2) - mu_p^2/(2 sd_p^2) + log(sd_q/sd_p)``.
    """
    from scipy import stats  # deferred: scipy.stats is slow to import

    a = 0.5 / sd_q**2 - 0.5 / sd_p**2
    b = mu_p / sd_p**2 - mu_q / sd_q**2
    c = mu_q**2 / (2 * sd_q**2) - mu_p**2 / (2 * sd_p**2) + math.log(sd_q / sd_p) - eps

    def mass(mu: float, sd: float) -> float:
        if abs(a) * max(sd_p, sd_q) ** 2 < 1e-12:  # equal variances: a half-line
            if b == 0.0:
                return 1.0 if c > 0 else 0.0
            t = -c / b
            return float(stats.norm.sf(t, mu, sd) if b > 0 else stats.norm.cdf(t, mu, sd))
        disc = b * b - 4 * a * c
        if disc <= 0:
            return 1.0 if a > 0 else 0.0
        r1, r2 = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
        if a > 0:  # L - eps > 0 outside the roots
            return float(stats.norm.cdf(r1, mu, sd) + stats.norm.sf(r2, mu, sd))
        lo, hi = stats.norm.cdf(r1, mu, sd), stats.norm.cdf(r2, mu, sd)
        if hi - lo < 1e-3:  # compute a thin interval's mass from the far tail for accuracy
            lo_s, hi_s = stats.norm.sf(r1, mu, sd), stats.norm.sf(r2, mu, sd)
            return float(max(lo_s - hi_s, 0.0))
        return float(hi - lo)

    p, q = mass(mu_p, sd_p), mass(mu_q, sd_q)
    if p <= 0.0:
        return 0.0
    return max(p - math.exp(min(eps, 700.0)) * q, 0.0)


def epsilon_two_gaussians(mu0: float, sd0: float, mu1: float, sd1: float, *, delta: float) -> float:
    """Smallest ``eps`` with ``max(H_eps(P||Q), H_eps(Q||P)) <= delta`` (``P = N(mu1, sd1^2)``,
    ``Q = N(mu0, sd0^2)``); capped at :data:`EPS_CAP`. See the module docstring."""
    from scipy import optimize

    if not (sd0 > 0 and sd1 > 0) or not 0 < delta < 1:
        raise EmpiricalError("standard deviations must be > 0 and delta in (0, 1)", location="canary fit")

    def excess(eps: float) -> float:
        h = max(
            hockey_stick_two_gaussians(mu1, sd1, mu0, sd0, eps),
            hockey_stick_two_gaussians(mu0, sd0, mu1, sd1, eps),
        )
        return h - delta

    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        lo, hi = hi, hi * 2.0
        if hi > EPS_CAP:
            return EPS_CAP
    return float(optimize.brentq(excess, lo, hi, xtol=1e-6, rtol=1e-8))


def one_shot_epsilon(
    seen: Sequence[float] | Vec, unseen: Sequence[float] | Vec, *, delta: float, equal_variance: bool = True
) -> float:
    """Andrew et al. (ICLR 2024) estimate from seen / unseen canary cosines.

    ``equal_variance=False`` fits ``N(mu_1, s_1^2)`` to the seen and ``N(mu_0, s_0^2)``
    to the unseen cosines separately, as in the paper. ``equal_variance=True`` (the
    default) fits one pooled standard deviation ``s`` to both, i.e. the Gaussian
    mechanism with ``mu = |mu_1 - mu_0| / s``. Under a Gaussian mechanism both
    distributions have the same variance (all randomness comes from the noise and the
    other clients' updates, common to seen and unseen canaries; the paper's Sec. 4
    models them as ``N(mu, 1/d)`` vs ``N(0, 1/d)``). With tens of seen canaries the
    separately fitted variance ratio is off by ~10 %, and at delta = 1e-5 such a ratio
    alone adds 2-4 to epsilon, so the pooled fit is the steadier estimate.
    """
    s, u = np.asarray(seen, dtype=np.float64), np.asarray(unseen, dtype=np.float64)
    if s.size < 2 or u.size < 2:
        raise EmpiricalError("need at least 2 seen and 2 unseen canaries", location="canaries")
    sd1 = max(float(s.std(ddof=1)), 1e-12)
    sd0 = max(float(u.std(ddof=1)), 1e-12)
    if equal_variance:
        pooled = math.sqrt(((s.size - 1) * sd1**2 + (u.size - 1) * sd0**2) / (s.size + u.size - 2))
        sd0 = sd1 = max(pooled, 1e-12)
    return epsilon_two_gaussians(float(u.mean()), sd0, float(s.mean()), sd1, delta=delta)


def roc_curve(member_scores: Vec, nonmember_scores: Vec) -> tuple[Vec, Vec, float]:
    """``(fpr, tpr, auc)`` for "member iff score >= threshold" over all thresholds.

    AUC is the Mann-Whitney probability that a member outscores a non-member (ties 1/2).
    """
    from scipy import stats

    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    scores = np.concatenate([m, n])
    labels = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    order = np.argsort(-scores, kind="mergesort")
    s_sorted, l_sorted = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tps = np.cumsum(l_sorted)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(m.size, 1)]
    fpr = np.r_[0.0, fps / max(n.size, 1)]
    ranks = stats.rankdata(scores)
    auc = (ranks[: m.size].sum() - m.size * (m.size + 1) / 2) / max(m.size * n.size, 1)
    return fpr, tpr, float(auc)


def _tpr_at(fpr: Vec, tpr: Vec, target: float) -> float:
    ok = fpr <= target + 1e-15
    return float(tpr[ok].max()) if np.any(ok) else 0.0


def invert_linear_update(weight_update: Vec, bias_update: Vec) -> Vec:
    """``x_hat = sum_i db_i dW_i / sum_i db_i^2`` (exact for a one-record, one-step update)."""
    w = np.asarray(weight_update, dtype=np.float64)
    b = np.asarray(bias_update, dtype=np.float64)
    denom = float(b @ b)
    if denom == 0.0 or not math.isfinite(denom):
        return np.zeros(w.shape[1])
    result: Vec = (b @ w) / denom
    return result


def image_quality(truth: npt.ArrayLike, guess: npt.ArrayLike) -> dict[str, float]:
    """Pearson correlation, MSE and single-window SSIM (Wang et al. 2004) of two records.

    SSIM uses the whole record as one window after scaling both to [0, 1]:
    ``(2 m_x m_y + c1)(2 s_xy + c2) / ((m_x^2 + m_y^2 + c1)(s_x^2 + s_y^2 + c2))``,
    ``c1 = 0.01^2``, ``c2 = 0.03^2``. MSE is in the data's (standardized) units.
    """
    x = np.asarray(truth, dtype=np.float64).ravel()
    y = np.asarray(guess, dtype=np.float64).ravel()
    finite = bool(np.all(np.isfinite(y)))
    if not finite or float(np.std(y)) == 0.0 or float(np.std(x)) == 0.0:
        corr = 0.0
    else:
        corr = float(np.corrcoef(x, y)[0, 1])
    mse = float(np.mean((x - y) ** 2)) if finite else math.inf

    def unit(v: Vec) -> Vec:
        span = float(v.max() - v.min()) if v.size and np.all(np.isfinite(v)) else 0.0
        return (v - v.min()) / span if span > 0 else np.zeros_like(v)

    xs, ys = unit(x), unit(y)
    c1, c2 = 0.01**2, 0.03**2
    mx, my = xs.mean(), ys.mean()
    sxy = float(np.mean((xs - mx) * (ys - my)))
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (xs.var() + ys.var() + c2))
    return {"correlation": corr, "mse": mse, "ssim": float(ssim)}


@dataclass(frozen=True)
class CanaryBound:
    """One-sided lower confidence bound on the canary epsilon (:func:`canary_lower_bound`)."""

    epsilon_low: float
    confidence: float
    mu_hat: float
    mu_low: float
    shift: float
    shift_low: float
    standard_error: float
    welch_df: float
    sd_pooled: float
    sd_high: float
    seen: int
    unseen: int

    def to_json(self) -> dict[str, float | int]:
        return {k: float(v) if isinstance(v, float) else v for k, v in vars(self).items()}


def canary_lower_bound(
    seen: Sequence[float] | Vec, unseen: Sequence[float] | Vec, *, delta: float,
    confidence: float = CANARY_CONFIDENCE,
) -> CanaryBound:
    """Lower confidence bound ``eps_low`` with ``P(eps_low > eps) <= 1 - confidence``.

    ``eps`` is the equal-variance Gaussian-fit epsilon of :func:`one_shot_epsilon`;
    the bound is that epsilon at ``mu_low = max(|m_1 - m_0| - t SE, 0) / s_high`` (Welch's
    t for the mean shift, a chi-square upper bound for the pooled standard deviation,
    Bonferroni between them; see the module docstring for the formulas).
    """
    from scipy import stats

    s, u = np.asarray(seen, dtype=np.float64), np.asarray(unseen, dtype=np.float64)
    if s.size < 2 or u.size < 2:
        raise EmpiricalError("need at least 2 seen and 2 unseen canaries", location="canaries")
    if not 0.5 < confidence < 1.0:
        raise EmpiricalError(f"confidence must be in (0.5, 1), got {confidence}", location="canary bound")
    alpha = 1.0 - confidence
    k1, k0 = s.size, u.size
    v1, v0 = float(s.var(ddof=1)), float(u.var(ddof=1))
    shift = abs(float(s.mean()) - float(u.mean()))
    se = math.sqrt(v1 / k1 + v0 / k0)
    num = (v1 / k1 + v0 / k0) ** 2
    den = (v1 / k1) ** 2 / (k1 - 1) + (v0 / k0) ** 2 / (k0 - 1)
    nu = num / den if den > 0 else float(k1 + k0 - 2)
    shift_low = max(shift - float(stats.t.ppf(1.0 - alpha / 4.0, nu)) * se, 0.0)
    df = k1 + k0 - 2
    sd = max(math.sqrt(((k1 - 1) * v1 + (k0 - 1) * v0) / df), 1e-12)
    sd_high = sd * math.sqrt(df / float(stats.chi2.ppf(alpha / 2.0, df)))
    mu_low = shift_low / sd_high
    eps_low = epsilon_two_gaussians(0.0, 1.0, mu_low, 1.0, delta=delta) if mu_low > 0 else 0.0
    return CanaryBound(
        epsilon_low=eps_low, confidence=confidence, mu_hat=shift / sd, mu_low=mu_low, shift=shift,
        shift_low=shift_low, standard_error=se, welch_df=nu, sd_pooled=sd, sd_high=sd_high, seen=k1, unseen=k0,
    )


# ============================================================================ sizes


@dataclass(frozen=True)
class EmpiricalSizes:
    """How large the empirical tests are (``quick`` for tests, default for the CLI).

    The default is sized so that auditing the default 100-client, 30-aggregation run
    stays well under two minutes on two cores.
    """

    canary_rounds: int = 8
    canary_real_clients: int = 10
    canaries_seen: int = 40
    canaries_unseen: int = 1000
    reference_models: int = 4
    reference_epochs: int = 15

    @classmethod
    def quick(cls) -> EmpiricalSizes:
        return cls(
            canary_rounds=3,
            canary_real_clients=4,
            canaries_seen=24,
            canaries_unseen=500,
            reference_models=2,
            reference_epochs=10,
        )


# ============================================================================ canaries


@dataclass(frozen=True)
class CanaryResult:
    """Outcome of the one-shot canary estimate (see the module docstring)."""

    epsilon: float
    bound: CanaryBound
    delta: float
    claimed_epsilon: float | None
    rerun_bound: float
    seen_cosines: tuple[float, ...]
    unseen_cosines: tuple[float, ...]
    fit: dict[str, float]
    epsilon_null_theory: float
    setup: dict[str, Any]
    flagged: bool
    verdict: str

    @property
    def lower(self) -> float:
        """The one-sided lower confidence bound on epsilon (the only figure that may fail a run)."""
        return self.bound.epsilon_low

    def to_json(self) -> dict[str, Any]:
        def f(x: float | None) -> float | str | None:
            return None if x is None else ("inf" if math.isinf(x) else x)

        return {
            "epsilon_estimate": f(self.epsilon),
            "epsilon_lower_bound": f(self.bound.epsilon_low),
            "confidence": self.bound.confidence,
            "lower_bound": self.bound.to_json(),
            "delta": self.delta,
            "claimed_epsilon": f(self.claimed_epsilon),
            "rerun_epsilon_bound": f(self.rerun_bound),
            "epsilon_separate_fits_theoretical_null": f(self.epsilon_null_theory),
            "fit": self.fit,
            "setup": self.setup,
            "flagged": self.flagged,
            "verdict": self.verdict,
            "seen_cosines": list(self.seen_cosines),
            "unseen_cosines": list(self.unseen_cosines),
        }


def _canary_directions(rng: Csprng, count: int, dim: int) -> Vec:
    """``count`` independent uniform unit vectors in R^dim (normalised Gaussians, CSPRNG)."""
    directions = rng.standard_normal(count * dim).reshape(count, dim)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions


def _canary_verdict(
    eps_hat: float, bound: CanaryBound, claimed: float | None, rerun: float, delta: float
) -> tuple[bool, str]:
    """``(flagged, verdict)``: flagged only when the lower confidence bound exceeds a claim."""
    level = f"{bound.confidence:.0%} lower confidence bound"
    basis = f"{bound.seen} seen and {bound.unseen} unseen canaries"
    low = bound.epsilon_low
    exceeded = []
    if claimed is not None and low > claimed:
        exceeded.append(f"the claimed epsilon {claimed:.3g}")
    if math.isfinite(rerun) and low > rerun:
        exceeded.append(f"the re-run's own accountant bound {rerun:.3g}")
    if exceeded:
        return True, (
            f"FAIL: the {level} {low:.3g} on the canary epsilon (estimate {eps_hat:.3g}; {basis}) exceeds "
            + " and ".join(exceeded)
            + ": statistically significant evidence that the claimed noise is not the noise present"
        )
    limits = [x for x in (claimed, rerun if math.isfinite(rerun) else None) if x is not None]
    if not limits:
        return False, (
            f"no epsilon claimed; the released model leaks like epsilon ~ {eps_hat:.3g} at delta={delta:g} "
            f"({level} {low:.3g}; {basis})"
        )
    limit = min(limits)
    if eps_hat > limit:
        return False, (
            f"pass: the estimate {eps_hat:.3g} is above {limit:.3g}, but its {level} {low:.3g} ({basis}) is not: "
            "no significant evidence against the claim (a point estimate from this few canaries scatters widely)"
        )
    return False, f"pass: estimate {eps_hat:.3g}, {level} {low:.3g} ({basis}), below {limit:.3g}"


def canary_estimate(
    replay: JobReplay,
    *,
    claimed_epsilon: float | None,
    delta: float | None,
    sizes: EmpiricalSizes | None = None,
    confidence: float = CANARY_CONFIDENCE,
    seed: bytes | None = None,
) -> CanaryResult:
    """Re-run a reduced version of the configured job with canary clients; estimate epsilon.

    The re-run (:meth:`JobReplay.canary_rerun`) keeps the configured model, data, local
    training, protocol, mechanism, clip, noise multiplier, field bits and server
    optimizer, and reduces the number of aggregations and of real clients per
    aggregation (``sizes``). Each seen canary joins an aggregation with the configured
    participation rate ``clients.per_round / clients.num``. Support sparsity, dropouts
    and the asynchronous mode are not reproduced (full support, synchronous rounds, no
    dropout): the estimate concerns the mechanism and the code that applies it.

    ``seed`` (32 bytes; fresh OS entropy by default, recorded in the result) drives the
    canary directions, their participation and the re-run's choice of clients; the
    re-run's DP noise is the job's own (CSPRNG).
    """
    sizes = sizes or EmpiricalSizes()
    facts: JobFacts = replay.facts
    seed = seed if seed is not None else Csprng.from_entropy().random_bytes(32)
    rng = Csprng(seed)
    dim = facts.dimension
    k_seen, k_unseen = sizes.canaries_seen, sizes.canaries_unseen
    directions = _canary_directions(rng, k_seen + k_unseen, dim)
    clip = float(facts.clip)
    q = min(1.0, facts.cohort_size / facts.num_clients)
    rounds = max(1, min(facts.rounds, sizes.canary_rounds))
    m_real = max(1, min(facts.cohort_size, sizes.canary_real_clients))
    joined = np.zeros(k_seen, dtype=np.int64)
    canaries: list[list[tuple[int, Vec]]] = []
    for _ in range(rounds):
        takes = np.ones(k_seen, dtype=bool) if q >= 1.0 else rng.uniform01(k_seen) < q
        joined += takes
        canaries.append([(facts.num_clients + int(j), clip * directions[j]) for j in np.flatnonzero(takes)])
    rerun = replay.canary_rerun(canaries, real_clients=m_real, seed=int.from_bytes(rng.random_bytes(4), "little"))
    final_delta = np.asarray(rerun.final, dtype=np.float64) - np.asarray(rerun.initial, dtype=np.float64)
    norm = float(np.linalg.norm(final_delta))
    if norm == 0.0 or not math.isfinite(norm):
        raise EmpiricalError("the re-run did not move the model", location="canary re-run")
    cosines = directions @ final_delta / norm
    seen, unseen = cosines[:k_seen], cosines[k_seen:]
    dlt = delta if delta is not None else 1e-5
    eps_hat = one_shot_epsilon(seen, unseen, delta=dlt)
    bound = canary_lower_bound(seen, unseen, delta=dlt, confidence=confidence)
    eps_separate = one_shot_epsilon(seen, unseen, delta=dlt, equal_variance=False)
    eps_null = epsilon_two_gaussians(0.0, dim**-0.5, float(seen.mean()), max(float(seen.std(ddof=1)), 1e-12), delta=dlt)
    try:
        rerun_bound = rerun_epsilon(rerun.dp_events, delta=dlt) if rerun.dp_events else math.inf
    except LedgerError:
        rerun_bound = math.nan
    flagged, verdict = _canary_verdict(eps_hat, bound, claimed_epsilon, rerun_bound, dlt)
    return CanaryResult(
        epsilon=eps_hat,
        bound=bound,
        delta=dlt,
        claimed_epsilon=claimed_epsilon,
        rerun_bound=rerun_bound,
        seen_cosines=tuple(float(v) for v in seen),
        unseen_cosines=tuple(float(v) for v in unseen),
        fit={
            "seen_mean": float(seen.mean()),
            "seen_std": float(seen.std(ddof=1)),
            "unseen_mean": float(unseen.mean()),
            "unseen_std": float(unseen.std(ddof=1)),
            "null_std_theory": dim**-0.5,
            "epsilon_separate_variances": eps_separate,
        },
        epsilon_null_theory=eps_null,
        setup={
            "aggregations": rerun.aggregations,
            "real_clients_per_aggregation": m_real,
            "canaries_seen": k_seen,
            "canaries_unseen": k_unseen,
            "canary_participation_rate": q,
            "canary_aggregations_joined_mean": float(joined.mean()) if k_seen else 0.0,
            "canary_norm": clip,
            "canary_seed": seed.hex(),
            "dimension": dim,
            "protocol": facts.protocol,
            "mechanism": facts.mechanism,
            "noise_multiplier": facts.noise_multiplier,
            "configured_aggregations": facts.rounds,
            "configured_cohort": facts.cohort_size,
            "statistic": "cosine of the canary direction with the final model delta (final model only)",
            "decision": f"fail only if the {confidence:.0%} one-sided lower confidence bound exceeds a claim",
        },
        flagged=flagged,
        verdict=verdict,
    )


# ============================================================================ MIA


@dataclass(frozen=True)
class MiaAttack:
    name: str
    auc: float
    tpr_at_0_1pct_fpr: float
    fpr: tuple[float, ...]
    tpr: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "auc": self.auc,
            "tpr_at_0.1%_fpr": self.tpr_at_0_1pct_fpr,
        }


@dataclass(frozen=True)
class MiaResult:
    attacks: tuple[MiaAttack, ...]
    members: int
    nonmembers: int
    reference_models: int
    reference_records: int
    fpr_resolution: float
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "attacks": [a.to_json() for a in self.attacks],
            "members_evaluated": self.members,
            "nonmembers_evaluated": self.nonmembers,
            "reference_models": self.reference_models,
            "reference_training_records": self.reference_records,
            "fpr_resolution": self.fpr_resolution,
            "note": self.note,
        }


def _attack(name: str, member: Vec, nonmember: Vec) -> MiaAttack:
    fpr, tpr, auc = roc_curve(member, nonmember)
    return MiaAttack(name, auc, _tpr_at(fpr, tpr, 1e-3), tuple(map(float, fpr)), tuple(map(float, tpr)))


def membership_inference(replay: JobReplay, *, sizes: EmpiricalSizes | None = None, seed: int = 0) -> MiaResult:
    """Loss-threshold and reference-calibrated attacks on the released model.

    ``seed`` picks which member records are evaluated and which train the reference
    models (evaluation sampling, not privacy noise).
    """
    sizes = sizes or EmpiricalSizes()
    rng = np.random.default_rng([seed, 0x4D1A])
    members, nonmembers = replay.member_records(), replay.nonmember_records()
    if members.size < 2 or nonmembers.size < 1:
        raise EmpiricalError("too few member or non-member records", location="membership inference")
    perm = rng.permutation(members.size)
    n_eval = min(nonmembers.size, members.size // 2)
    ev, ref = perm[:n_eval], perm[n_eval:]
    evaluated = Records(members.x[ev], members.y[ev])
    loss_m, loss_n = replay.released_losses(evaluated), replay.released_losses(nonmembers)
    attacks = [_attack("loss threshold (Yeom et al. 2018)", -loss_m, -loss_n)]
    ref_m = np.zeros_like(loss_m)
    ref_n = np.zeros_like(loss_n)
    for _ in range(sizes.reference_models):
        sub = rng.choice(ref, size=max(1, ref.size // 2), replace=False)
        lm, ln = replay.reference_losses(
            Records(members.x[sub], members.y[sub]), [evaluated, nonmembers],
            epochs=sizes.reference_epochs, seed=int(rng.integers(2**31)),
        )
        ref_m += lm
        ref_n += ln
    if sizes.reference_models:
        ref_m /= sizes.reference_models
        ref_n /= sizes.reference_models
        attacks.append(
            _attack("reference-calibrated loss (Watson et al. 2022)", ref_m - loss_m, ref_n - loss_n)
        )
    resolution = 1.0 / nonmembers.size
    note = (
        f"{n_eval} members vs {nonmembers.size} non-members; the smallest non-zero FPR is 1/{nonmembers.size} = "
        f"{resolution:.3%}"
        + (
            ", coarser than 0.1%: 'TPR at 0.1% FPR' is the TPR at FPR = 0 (no false positive at all)"
            if resolution > 1e-3
            else ""
        )
        + ". With this few records a TPR below ~1/members is indistinguishable from 0."
    )
    return MiaResult(
        tuple(attacks),
        members=int(n_eval),
        nonmembers=int(nonmembers.size),
        reference_models=sizes.reference_models,
        reference_records=int(ref.size // 2) if ref.size else 0,
        fpr_resolution=resolution,
        note=note,
    )


# ============================================================================ inversion


@dataclass(frozen=True)
class InversionResult:
    """Gradient inversion on one record's update: plaintext vs what the server saw."""

    protocol: str
    applicable: bool
    truth: tuple[float, ...]
    image_shape: tuple[int, ...]
    unprotected: tuple[float, ...]
    server_view: tuple[float, ...] | None
    unprotected_quality: dict[str, float]
    server_view_quality: dict[str, float] | None
    server_saw: str
    recovered: bool
    note: str
    label: int = -1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "applicable": self.applicable,
            "label": self.label,
            "server_saw": self.server_saw,
            "unprotected_update_attack": self.unprotected_quality,
            "server_view_attack": self.server_view_quality,
            "recovered_from_server_view": self.recovered,
            "note": self.note,
            **self.extra,
        }


class _MaskedCapture(Interceptor):
    """Protocol interceptor that keeps the masked vector one client uploads (read only)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.vector: npt.NDArray[np.unsignedinteger] | None = None

    def upload(self, sender: int, frame: bytes) -> list[tuple[int, bytes]]:
        from crypto.secagg.messages import MaskedInput
        from crypto.secagg.wire import decode

        if sender == self.target:
            msg = decode(frame, sender=sender)
            if isinstance(msg, MaskedInput):
                self.vector = np.array(msg.vector, copy=True)
        return [(sender, frame)]


def _secagg_server_view(facts: JobFacts, updates: list[Vec], target: int) -> Vec:
    """Run the real SecAgg round on ``updates`` encoded as the configured pipeline does
    and return the target's masked upload, decoded as if it were unmasked."""
    from crypto.fixedpoint import decode, encode, max_scale
    from crypto.secagg import simulate_round
    from privacy.clipping import clip_l2
    from privacy.mechanisms.distributed import DistributedDiscreteGaussian, DistributedSkellam

    bits = int(facts.bits)
    clip = float(facts.clip)
    n = len(updates)
    rng = Csprng.from_entropy()
    dim = updates[0].size
    capture = _MaskedCapture(target)
    if facts.mechanism in ("discrete_gaussian", "skellam"):
        cls = DistributedDiscreteGaussian if facts.mechanism == "discrete_gaussian" else DistributedSkellam
        mech = cls.create(
            dim=dim, clip=clip, bits=bits, noise_multiplier=float(facts.noise_multiplier),
            num_clients=n, threshold=n,
        )
        seed = rng.random_bytes(32)
        inputs = [mech.client_encode(u, round_seed=seed, rng=rng) for u in updates]
        simulate_round(inputs, bits=bits, threshold=n // 2 + 1, interceptor=capture)
        if capture.vector is None:
            raise EmpiricalError("no masked upload captured", location="secagg round")
        out: Vec = mech.server_decode(capture.vector.astype(np.uint64), round_seed=seed).astype(np.float64)
        return out
    scale = max_scale(num_summands=n, max_abs=max(clip, 1.0), bits=bits)
    inputs = [
        encode(np.concatenate([clip_l2(u, max_norm=clip)[0], [1.0]]), scale=scale, bits=bits, rng=rng)
        for u in updates
    ]
    simulate_round(inputs, bits=bits, threshold=n // 2 + 1, interceptor=capture)
    if capture.vector is None:
        raise EmpiricalError("no masked upload captured", location="secagg round")
    decoded: Vec = decode(capture.vector, scale=scale, bits=bits)[:-1]
    return decoded


def gradient_inversion(replay: JobReplay, *, peers: int = 3) -> InversionResult:
    """Invert one single-record client update: in the clear, and as the server saw it.

    The victim holds one training record (the first client's first), takes one SGD
    step from the released model with the configured learning rate, and uploads its
    update. ``plain``: the server received exactly that update. ``secagg``: the server
    received the masked vector of a real round with ``peers`` other clients (their
    updates come from their own first records). ``ckks``: ciphertexts under a key the
    server does not hold; the attack is not run.
    """
    facts = replay.facts
    layout = replay.first_linear_layer()
    shape = tuple(int(s) for s in facts.feature_shape)
    records = replay.first_records(1 + peers)
    if layout is None or not records:
        return InversionResult(
            facts.protocol, False, (), shape, (), None, {}, None, "", False,
            "the analytic attack needs a first fully connected layer with bias (mlp / logreg)",
        )
    h, d_in = layout
    x_true, label = records[0]
    x_true = np.asarray(x_true, dtype=np.float32).reshape(-1)
    update = replay.one_step_update(x_true, label)

    def attack(vec: Vec) -> Vec:
        w = vec[: h * d_in].reshape(h, d_in)
        b = vec[h * d_in : h * d_in + h]
        return invert_linear_update(w, b)

    recovered_plain = attack(update)
    q_plain = image_quality(x_true, recovered_plain)
    server_view: Vec | None = None
    q_view: dict[str, float] | None = None
    if facts.protocol == "plain":
        server_view, q_view = recovered_plain, q_plain
        saw = "the client's update in the clear (float32 bytes)"
        note = "plain protocol: the server holds every individual update, so it recovers the record"
    elif facts.protocol == "secagg":
        others = [replay.one_step_update(np.asarray(x, dtype=np.float32).reshape(-1), y) for x, y in records[1:]]
        view_update = _secagg_server_view(facts, [update, *others], 0)
        server_view = attack(view_update)
        q_view = image_quality(x_true, server_view)
        saw = f"the masked vector y = x + masks mod 2^{facts.bits} of a real SecAgg round ({1 + len(others)} clients)"
        note = "secagg: the masked upload is uniform; decoding it as an update yields noise"
    else:
        saw = "CKKS ciphertexts under a public key; the secret key is held by a separate key holder"
        note = "ckks: no plaintext update reaches the server; the attack needs the key holder's secret key"
    recovered = bool(q_view is not None and q_view["correlation"] > 0.8)
    return InversionResult(
        protocol=facts.protocol,
        applicable=True,
        truth=tuple(map(float, x_true)),
        image_shape=shape,
        unprotected=tuple(map(float, recovered_plain)),
        server_view=None if server_view is None else tuple(map(float, server_view)),
        unprotected_quality=q_plain,
        server_view_quality=q_view,
        server_saw=saw,
        recovered=recovered,
        note=note,
        label=int(label),
    )
