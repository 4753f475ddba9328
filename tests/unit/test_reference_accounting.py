"""Project epsilons against independent references (issue 15, acceptance 1).

* Gaussian family: Google's ``dp_accounting`` 0.6.0 (its RDP accountant, and its PLD
  accountant whose optimistic estimate is a lower bound of the tight epsilon).
* Discrete sums: Rényi divergences computed here, numerically, from the exact pmfs
  (the n-fold convolution of discrete Gaussians; the Skellam pmf from Bessel
  functions), at a concrete worst-case shift: a *lower* bound of the mechanism's RDP.

Every project figure must be at or above the reference's lower bound.
"""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import pld, rdp
from dp_accounting.pld import privacy_loss_distribution as pld_dist
from scipy import special

from privacy import compute_epsilon
from privacy.analysis.discrete import ddg_rdp, skellam_rdp
from privacy.analysis.rdp import DEFAULT_ORDERS, rdp_to_epsilon
from privacy.events import DiscreteGaussianSumEvent, GaussianEvent, SkellamSumEvent
from privacy.relations import replace_one_event

GRID = [
    (z, q, steps)
    for z in (0.6, 1.0, 2.0, 5.0)
    for q in (1.0, 0.3, 0.05)
    for steps in (1, 10, 100)
]


@pytest.mark.parametrize(("z", "q", "steps"), GRID)
def test_gaussian_family_at_or_above_dp_accounting(z: float, q: float, steps: int) -> None:
    delta = 1e-5
    ours = compute_epsilon(
        mechanism="gaussian", noise_multiplier=z, sample_rate=q, steps=steps, delta=delta
    )
    event: dpa.DpEvent = dpa.GaussianDpEvent(z)
    if q < 1.0:
        event = dpa.PoissonSampledDpEvent(q, event)
    # Same analysis, independent code, at the integer orders of our grid (dp_accounting's
    # fractional-order series does not converge for every q, z): our grid holds these
    # orders and more, so we are at most the reference, and equal when q = 1.
    ref_rdp = rdp.RdpAccountant(orders=[a for a in DEFAULT_ORDERS if a == int(a)])
    ref_rdp.compose(event, steps)
    assert ours <= ref_rdp.get_epsilon(delta) * (1 + 1e-9)
    if q == 1.0:  # no series to converge: the full grid, equal to rounding
        full = rdp.RdpAccountant(orders=list(DEFAULT_ORDERS))
        full.compose(event, steps)
        assert ours == pytest.approx(full.get_epsilon(delta), rel=1e-9)
    ref_pld = pld.PLDAccountant(
        dpa.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-3
    )
    ref_pld.compose(event, steps)
    lower = _pld_lower(z, q, steps, delta)
    assert ours >= lower - 1e-9
    assert ref_pld.get_epsilon(delta) >= lower - 1e-2  # the reference is self-consistent


def _pld_lower(z: float, q: float, steps: int, delta: float) -> float:
    opt = pld_dist.from_gaussian_mechanism(
        z, pessimistic_estimate=False, value_discretization_interval=1e-3, sampling_prob=q
    )
    return float(opt.self_compose(steps).get_epsilon_for_delta(delta))


def test_replace_one_gaussian_matches_dp_accounting_at_doubled_sensitivity() -> None:
    # dp_accounting states the multiplier relative to the relation's sensitivity: the
    # replace-one sensitivity of a sum of updates of norm <= C is 2C.
    ours = replace_one_event(GaussianEvent(3.0))
    acc = rdp.RdpAccountant(orders=list(DEFAULT_ORDERS))
    acc.compose(dpa.GaussianDpEvent(3.0 / 2.0), 5)
    from privacy import RdpAccountant, SelfComposedEvent

    mine = RdpAccountant()
    mine.compose(SelfComposedEvent(ours, 5))
    assert mine.epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


# ------------------------------------------------------------- exact pmfs, discrete sums


def _discrete_gaussian_pmf(sigma: float, half_width: int) -> np.ndarray:
    k = np.arange(-half_width, half_width + 1, dtype=np.float64)
    logp = -(k**2) / (2 * sigma**2)
    p = np.exp(logp - special.logsumexp(logp))
    return p


def _sum_pmf(sigma: float, n: int) -> np.ndarray:
    half = int(math.ceil(12 * sigma)) + 2
    one = _discrete_gaussian_pmf(sigma, half)
    out = one
    for _ in range(n - 1):
        out = np.convolve(out, one)
    return out / out.sum()


def _renyi_shift(pmf: np.ndarray, shift: int, alpha: float) -> float:
    """D_alpha(P(. - shift) || P) for a pmf on a symmetric integer grid (exact sums)."""
    p = np.concatenate([np.zeros(shift), pmf])  # P shifted right by `shift`
    qd = np.concatenate([pmf, np.zeros(shift)])
    mask = (p > 0) & (qd > 0)
    # Mass of the shifted P where Q vanishes would make the divergence infinite; the
    # grids reach 12 standard deviations, so that mass is below double precision.
    log_terms = alpha * np.log(p[mask]) + (1 - alpha) * np.log(qd[mask])
    return float(special.logsumexp(log_terms)) / (alpha - 1)


@pytest.mark.parametrize(("sigma", "n", "shift"), [(0.6, 3, 1), (1.0, 4, 2), (2.0, 5, 3), (0.8, 8, 4)])
def test_ddg_bound_at_or_above_exact_pmf_divergence(sigma: float, n: int, shift: int) -> None:
    pmf = _sum_pmf(sigma, n)
    for alpha in (2, 3, 5, 8, 16):
        exact = _renyi_shift(pmf, shift, alpha)
        bound = ddg_rdp(order=alpha, sigma=sigma, num_clients=n, dimension=1,
                        l2_sensitivity=shift, l1_sensitivity=shift)
        assert bound >= exact * (1 - 1e-9), (alpha, exact, bound)
    # and the epsilons derived from them
    orders = np.arange(2, 64, dtype=np.float64)
    exact_curve = np.array([_renyi_shift(pmf, shift, a) for a in orders])
    bound_curve = np.array([
        ddg_rdp(order=a, sigma=sigma, num_clients=n, dimension=1, l2_sensitivity=shift,
                l1_sensitivity=shift) for a in orders])
    eps_exact, _ = rdp_to_epsilon(orders=orders, rdp=exact_curve * 10, delta=1e-5)
    eps_bound, _ = rdp_to_epsilon(orders=orders, rdp=bound_curve * 10, delta=1e-5)
    assert eps_bound >= eps_exact


def _skellam_pmf(mu_total: float, half_width: int) -> np.ndarray:
    # Sk(m/2, m/2): P(k) = exp(-m) I_|k|(m), via the exponentially scaled Bessel function.
    k = np.arange(-half_width, half_width + 1)
    p = special.ive(np.abs(k), mu_total)
    return p / p.sum()


@pytest.mark.parametrize(("mu", "n", "shift"), [(1.0, 3, 1), (4.0, 4, 2), (10.0, 5, 5)])
def test_skellam_bound_at_or_above_exact_pmf_divergence(mu: float, n: int, shift: int) -> None:
    total = n * mu
    pmf = _skellam_pmf(total, int(12 * math.sqrt(total)) + 40)
    for alpha in (2, 3, 5, 8, 16):
        exact = _renyi_shift(pmf, shift, alpha)
        bound = skellam_rdp(order=alpha, mu=mu, num_clients=n, l2_sensitivity=shift,
                            l1_sensitivity=shift)
        assert bound >= exact * (1 - 1e-9), (alpha, exact, bound)


def test_replace_one_discrete_events_double_the_sensitivities() -> None:
    e = DiscreteGaussianSumEvent(sigma=2.0, num_clients=5, l2_sensitivity=3.0, l1_sensitivity=4.0,
                                 dimension=8)
    r = replace_one_event(e)
    assert isinstance(r, DiscreteGaussianSumEvent)
    assert (r.l2_sensitivity, r.l1_sensitivity, r.num_clients, r.sigma) == (6.0, 8.0, 5, 2.0)
    s = replace_one_event(SkellamSumEvent(mu=3.0, num_clients=2, l2_sensitivity=1.0, l1_sensitivity=1.5))
    assert isinstance(s, SkellamSumEvent) and (s.l2_sensitivity, s.l1_sensitivity) == (2.0, 3.0)
    # replace-one is the zero-out shift doubled: two vectors of norm <= C differ by <= 2C
    pmf = _sum_pmf(1.0, 4)
    assert ddg_rdp(order=4, sigma=1.0, num_clients=4, dimension=1, l2_sensitivity=2,
                   l1_sensitivity=2) >= _renyi_shift(pmf, 2, 4)
