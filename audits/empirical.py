"""Empirical privacy tests on a run: canaries, membership inference, gradient inversion.

These are *measurements*, not proofs: an attack that fails says nothing about a better
attack. They catch what an accountant cannot, e.g. noise that the code claims to add
but does not, and they show a reader what "the server saw individual updates" means.

This module drives the secure-fl runner's building blocks (``secure_fl.data``,
``secure_fl.models``, ``secure_fl.training``, ``secure_fl.runner.make_aggregator``,
``secure_fl.server_opt``). ``secure_fl`` depends on ``audits``, so it is imported
lazily inside the functions that re-run a job, never at module import.

1. One-shot canary estimate
---------------------------
Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical Privacy
Estimation for Federated Learning", ICLR 2024 (arXiv:2302.03098). A small version of
the configured job is re-run through the *real* aggregator (real clipping, noise shares,
masking) with ``k`` extra canary clients whose update is always ``C u_c`` for a fixed
random unit direction ``u_c`` in R^d (``C`` the clip bound, i.e. the sensitivity).
Half the canaries are inserted ("seen"), half held out ("unseen"). With ``Delta`` the
final model minus the initial one, the test statistic of canary ``c`` is

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
sit below the accountant's bound; a bootstrap interval accompanies it. The audit fails
when the interval's lower end exceeds the claimed epsilon (or the bound of the re-run
itself): the noise claimed is then not the noise present.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from audits.epsilon_check import rerun_epsilon
from audits.errors import LedgerError
from crypto.secagg.simulate import Interceptor

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CanaryResult",
    "EmpiricalSizes",
    "InversionResult",
    "MiaAttack",
    "MiaResult",
    "canary_estimate",
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
    bootstrap: int = 400
    reference_models: int = 4
    reference_epochs: int = 15

    @classmethod
    def quick(cls) -> EmpiricalSizes:
        return cls(
            canary_rounds=3,
            canary_real_clients=4,
            canaries_seen=24,
            canaries_unseen=500,
            bootstrap=200,
            reference_models=2,
            reference_epochs=10,
        )


# ============================================================================ re-runs


def _load_run_config(run_dir: Path) -> Any:
    from secure_fl.config import load_config

    path = run_dir / "config.toml"
    if not path.is_file():
        raise EmpiricalError("config.toml is missing", location=str(path))
    return load_config(path)


def _initial_model(config: Any, data: Any) -> nn.Module:
    import torch

    from secure_fl.models import build_model

    torch.manual_seed(config.seed)  # the runner's initialisation
    model: nn.Module = build_model(config.model, data.feature_shape, data.num_classes)
    return model


@dataclass(frozen=True)
class CanaryResult:
    """Outcome of the one-shot canary estimate (see the module docstring)."""

    epsilon: float
    interval: tuple[float, float]
    lower: float
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

    def to_json(self) -> dict[str, Any]:
        def f(x: float | None) -> float | str | None:
            return None if x is None else ("inf" if math.isinf(x) else x)

        return {
            "epsilon_estimate": f(self.epsilon),
            "interval_95": [f(self.interval[0]), f(self.interval[1])],
            "lower_99": f(self.lower),
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


def canary_estimate(
    run_dir: str | Path,
    *,
    claimed_epsilon: float | None,
    delta: float | None,
    sizes: EmpiricalSizes | None = None,
    seed: int = 0,
) -> CanaryResult:
    """Re-run a reduced version of the configured job with canary clients; estimate epsilon.

    The re-run keeps the configured model, data, local training, protocol, mechanism,
    clip, noise multiplier, field bits and server optimizer, and reduces the number of
    aggregations and of real clients per aggregation (``sizes``). Each seen canary joins
    an aggregation with the configured participation rate ``clients.per_round /
    clients.num``. Support sparsity, dropouts and the asynchronous mode are not
    reproduced (full support, synchronous rounds, no dropout): the estimate concerns the
    mechanism and the code that applies it.
    """
    from crypto.prg import Csprng
    from secure_fl.aggregation import ClientUpdate
    from secure_fl.data import load_federated_data
    from secure_fl.models import get_flat, set_flat
    from secure_fl.runner import make_aggregator
    from secure_fl.server_opt import ServerOptimizer
    from secure_fl.training import train_local

    sizes = sizes or EmpiricalSizes()
    root = Path(run_dir)
    config = _load_run_config(root)
    if config.sparsity.kind != "none":
        config = config.model_copy(update={"sparsity": config.sparsity.model_copy(update={"kind": "none"})})
    data = load_federated_data(config)
    model = _initial_model(config, data)
    w0 = get_flat(model).astype(np.float64)
    dim = w0.size
    rng = np.random.default_rng([seed, 0xCA9A])
    k_seen, k_unseen = sizes.canaries_seen, sizes.canaries_unseen
    directions = rng.standard_normal((k_seen + k_unseen, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    clip = float(config.dp.clip)
    q = min(1.0, config.cohort_size / config.clients.num)
    rounds = max(1, min(config.rounds, sizes.canary_rounds))
    m_real = max(1, min(config.cohort_size, sizes.canary_real_clients, len(data.clients)))
    privacy_rng = (
        Csprng(bytes(32)) if config.simulation.reproducible_noise else Csprng.from_entropy()
    )
    aggregator = make_aggregator(config, dim=dim, rng=privacy_rng)
    server = ServerOptimizer(config.server)
    weights = w0.copy()
    events: list[Any] = []
    joined = np.zeros(k_seen, dtype=np.int64)
    for version in range(1, rounds + 1):
        cohort = rng.choice(len(data.clients), size=m_real, replace=False)
        updates = []
        for cid in cohort:
            client = data.clients[int(cid)]
            set_flat(model, weights.astype(np.float32))
            train_local(model, client.x_train, client.y_train, config.train, seed=int(rng.integers(2**31)))
            delta_w = get_flat(model).astype(np.float64) - weights
            updates.append(ClientUpdate(int(cid), delta_w.astype(np.float32), 1.0))
        for j in range(k_seen):
            if q >= 1.0 or rng.random() < q:
                joined[j] += 1
                updates.append(
                    ClientUpdate(config.clients.num + j, (clip * directions[j]).astype(np.float32), 1.0)
                )
        order = rng.permutation(len(updates))
        outcome = aggregator.aggregate([updates[i] for i in order], round_index=version)
        if outcome.mean is None:
            continue
        events.append(outcome.dp_event)
        weights = server.step(weights, outcome.mean)
    final_delta = weights - w0
    norm = float(np.linalg.norm(final_delta))
    if norm == 0.0 or not math.isfinite(norm):
        raise EmpiricalError("the re-run did not move the model", location="canary re-run")
    cosines = directions @ final_delta / norm
    seen, unseen = cosines[:k_seen], cosines[k_seen:]
    dlt = delta if delta is not None else 1e-5
    eps_hat = one_shot_epsilon(seen, unseen, delta=dlt)
    boot = []
    for _ in range(sizes.bootstrap):
        bs = rng.choice(seen, size=seen.size, replace=True)
        bu = rng.choice(unseen, size=unseen.size, replace=True)
        boot.append(one_shot_epsilon(bs, bu, delta=dlt))
    lo, hi = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))) if boot else (eps_hat, eps_hat)
    # Flag only on the 99% lower end: a correct run's final-model leakage can sit close
    # to the accountant's bound, and a false FAIL costs a compliance team as much as a miss.
    lower = float(np.quantile(boot, 0.005)) if boot else eps_hat
    eps_separate = one_shot_epsilon(seen, unseen, delta=dlt, equal_variance=False)
    eps_null = epsilon_two_gaussians(0.0, dim**-0.5, float(seen.mean()), max(float(seen.std(ddof=1)), 1e-12), delta=dlt)
    try:
        bound = rerun_epsilon(events, delta=dlt) if events else math.inf
    except LedgerError:
        bound = math.nan
    flagged = False
    reasons = []
    if claimed_epsilon is not None and lower > claimed_epsilon:
        flagged = True
        reasons.append(
            f"the estimate {eps_hat:.3g} (99% lower end {lower:.3g}) exceeds the claimed epsilon {claimed_epsilon:.3g}"
        )
    if math.isfinite(bound) and lower > bound:
        flagged = True
        reasons.append(f"the estimate exceeds the re-run's own epsilon bound {bound:.3g}")
    if flagged:
        verdict = "FAIL: " + "; ".join(reasons) + " (the claimed noise is not the noise present)"
    elif claimed_epsilon is None:
        verdict = f"no epsilon claimed; the released model leaks like epsilon ~ {eps_hat:.3g} at delta={dlt:g}"
    else:
        verdict = f"pass: estimate {eps_hat:.3g} (95% interval {lo:.3g}-{hi:.3g}) is below the claimed {claimed_epsilon:.3g}"
    return CanaryResult(
        epsilon=eps_hat,
        interval=(lo, hi),
        lower=lower,
        delta=dlt,
        claimed_epsilon=claimed_epsilon,
        rerun_bound=bound,
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
            "aggregations": rounds,
            "real_clients_per_aggregation": m_real,
            "canaries_seen": k_seen,
            "canaries_unseen": k_unseen,
            "canary_participation_rate": q,
            "canary_aggregations_joined_mean": float(joined.mean()) if k_seen else 0.0,
            "canary_norm": clip,
            "dimension": dim,
            "protocol": config.protocol,
            "mechanism": config.dp.mechanism,
            "noise_multiplier": config.dp.noise_multiplier,
            "bootstrap_resamples": sizes.bootstrap,
            "configured_aggregations": config.rounds,
            "configured_cohort": config.cohort_size,
            "statistic": "cosine of the canary direction with the final model delta (final model only)",
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


def _losses(model: nn.Module, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> Vec:
    import torch

    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x)))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="none")
    result: Vec = loss.double().numpy()
    return result


def _attack(name: str, member: Vec, nonmember: Vec) -> MiaAttack:
    fpr, tpr, auc = roc_curve(member, nonmember)
    return MiaAttack(name, auc, _tpr_at(fpr, tpr, 1e-3), tuple(map(float, fpr)), tuple(map(float, tpr)))


def membership_inference(
    run_dir: str | Path, *, sizes: EmpiricalSizes | None = None, seed: int = 0
) -> MiaResult:
    """Loss-threshold and reference-calibrated attacks on the released ``model.pt``."""
    import torch

    from secure_fl.data import load_federated_data
    from secure_fl.training import train_local

    sizes = sizes or EmpiricalSizes()
    root = Path(run_dir)
    config = _load_run_config(root)
    data = load_federated_data(config)
    target = _initial_model(config, data)
    try:
        state = torch.load(root / "model.pt", map_location="cpu", weights_only=True)
        target.load_state_dict(state)
    except (OSError, RuntimeError, KeyError) as exc:
        raise EmpiricalError(f"cannot load the released model: {exc}", location=str(root / "model.pt")) from exc
    rng = np.random.default_rng([seed, 0x4D1A])
    xm = np.concatenate([c.x_train for c in data.clients if c.num_train])
    ym = np.concatenate([c.y_train for c in data.clients if c.num_train])
    xn = np.concatenate([data.x_test, *[c.x_test for c in data.clients if c.y_test.size]])
    yn = np.concatenate([data.y_test, *[c.y_test for c in data.clients if c.y_test.size]])
    perm = rng.permutation(ym.size)
    n_eval = min(yn.size, ym.size // 2)
    ev, ref = perm[:n_eval], perm[n_eval:]
    xm_eval, ym_eval = xm[ev], ym[ev]
    loss_m, loss_n = _losses(target, xm_eval, ym_eval), _losses(target, xn, yn)
    attacks = [_attack("loss threshold (Yeom et al. 2018)", -loss_m, -loss_n)]
    ref_m = np.zeros_like(loss_m)
    ref_n = np.zeros_like(loss_n)
    train_cfg = config.train.model_copy(update={"local_epochs": sizes.reference_epochs})
    for r in range(sizes.reference_models):
        torch.manual_seed(int(rng.integers(2**31)))
        from secure_fl.models import build_model

        ref_model = build_model(config.model, data.feature_shape, data.num_classes)
        sub = rng.choice(ref, size=max(1, ref.size // 2), replace=False)
        train_local(ref_model, xm[sub], ym[sub], train_cfg, seed=int(rng.integers(2**31)) + r)
        ref_m += _losses(ref_model, xm_eval, ym_eval)
        ref_n += _losses(ref_model, xn, yn)
    if sizes.reference_models:
        ref_m /= sizes.reference_models
        ref_n /= sizes.reference_models
        attacks.append(
            _attack("reference-calibrated loss (Watson et al. 2022)", ref_m - loss_m, ref_n - loss_n)
        )
    resolution = 1.0 / max(yn.size, 1)
    note = (
        f"{n_eval} members vs {yn.size} non-members; the smallest non-zero FPR is 1/{yn.size} = "
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
        nonmembers=int(yn.size),
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


def _first_linear(model: nn.Module) -> tuple[int, int, int] | None:
    """(offset in the flat vector, out_features, in_features) of the first layer, if linear."""
    from torch import nn as tnn

    params = [p for p in model.parameters() if p.requires_grad]
    first = next((m for m in model.modules() if isinstance(m, tnn.Linear | tnn.Conv2d | tnn.Conv1d)), None)
    if not isinstance(first, tnn.Linear) or first.bias is None or params[0] is not first.weight:
        return None
    return 0, int(first.out_features), int(first.in_features)


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


def _secagg_server_view(
    config: Any, updates: list[Vec], target: int, decode_as: Callable[..., Vec] | None = None
) -> Vec:
    """Run the real SecAgg round on ``updates`` encoded as the configured pipeline does
    and return the target's masked upload, decoded as if it were unmasked."""
    from crypto.fixedpoint import decode, encode, max_scale
    from crypto.prg import Csprng
    from crypto.secagg import simulate_round
    from privacy.clipping import clip_l2
    from privacy.mechanisms.distributed import DistributedDiscreteGaussian, DistributedSkellam

    bits = int(config.secagg.bits)
    clip = float(config.dp.clip)
    n = len(updates)
    rng = Csprng.from_entropy()
    dim = updates[0].size
    capture = _MaskedCapture(target)
    if config.dp.mechanism in ("discrete_gaussian", "skellam"):
        cls = DistributedDiscreteGaussian if config.dp.mechanism == "discrete_gaussian" else DistributedSkellam
        mech = cls.create(
            dim=dim, clip=clip, bits=bits, noise_multiplier=float(config.dp.noise_multiplier),
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


def gradient_inversion(run_dir: str | Path, *, seed: int = 0, peers: int = 3) -> InversionResult:
    """Invert one single-record client update: in the clear, and as the server saw it.

    The victim holds one training record (client 0's first), takes one SGD step from
    the released model with the configured learning rate, and uploads its update.
    ``plain``: the server received exactly that update. ``secagg``: the server received
    the masked vector of a real round with ``peers`` other clients (their updates come
    from their own first records). ``ckks``: ciphertexts under a key the server does not
    hold; the attack is not run.
    """
    import torch

    from secure_fl.data import load_federated_data
    from secure_fl.models import get_flat

    root = Path(run_dir)
    config = _load_run_config(root)
    data = load_federated_data(config)
    model = _initial_model(config, data)
    try:
        model.load_state_dict(torch.load(root / "model.pt", map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, KeyError):
        pass  # the initial model is as good a starting point for the attack
    layout = _first_linear(model)
    shape = tuple(int(s) for s in data.feature_shape)
    records = [c for c in data.clients if c.num_train]
    if layout is None or not records:
        return InversionResult(
            config.protocol, False, (), shape, (), None, {}, None, "", False,
            "the analytic attack needs a first fully connected layer with bias (mlp / logreg)",
        )
    _, h, d_in = layout
    w_global = get_flat(model).astype(np.float64)

    def single_record_update(x: npt.NDArray[np.float32], y: int) -> Vec:
        m = _initial_model(config, data)
        m.load_state_dict(model.state_dict())
        m.train()
        m.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(torch.from_numpy(x[None])), torch.tensor([y]))
        params = [p for p in m.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(config.train.lr * g)
        return get_flat(m).astype(np.float64) - w_global

    victim = records[0]
    x_true = np.asarray(victim.x_train[0], dtype=np.float32).reshape(-1)
    label = int(victim.y_train[0])
    update = single_record_update(x_true, label)

    def attack(vec: Vec) -> Vec:
        w = vec[: h * d_in].reshape(h, d_in)
        b = vec[h * d_in : h * d_in + h]
        return invert_linear_update(w, b)

    recovered_plain = attack(update)
    q_plain = image_quality(x_true, recovered_plain)
    server_view: Vec | None = None
    q_view: dict[str, float] | None = None
    if config.protocol == "plain":
        server_view, q_view = recovered_plain, q_plain
        saw = "the client's update in the clear (float32 bytes)"
        note = "plain protocol: the server holds every individual update, so it recovers the record"
    elif config.protocol == "secagg":
        others = [single_record_update(np.asarray(c.x_train[0], dtype=np.float32).reshape(-1), int(c.y_train[0]))
                  for c in records[1 : 1 + peers]]
        view_update = _secagg_server_view(config, [update, *others], 0)
        server_view = attack(view_update)
        q_view = image_quality(x_true, server_view)
        saw = f"the masked vector y = x + masks mod 2^{config.secagg.bits} of a real SecAgg round ({1 + len(others)} clients)"
        note = "secagg: the masked upload is uniform; decoding it as an update yields noise"
    else:
        saw = "CKKS ciphertexts under a public key; the secret key is held by a separate key holder"
        note = "ckks: no plaintext update reaches the server; the attack needs the key holder's secret key"
    recovered = bool(q_view is not None and q_view["correlation"] > 0.8)
    return InversionResult(
        protocol=config.protocol,
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
        label=label,
    )
