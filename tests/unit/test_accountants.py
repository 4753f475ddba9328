"""Accountants against independent computations written here, and refusal semantics.

Independent references (none of them calls privacy.analysis or Opacus):
* RDP of the Poisson-subsampled Gaussian by direct numerical integration of
  A_alpha = E_{x~N(0,s^2)}[(1 - q + q exp((2x - 1)/(2 s^2)))^alpha] (Mironov, Talwar,
  Zhang 2019, Sec. 3.3) at integer orders with scipy.integrate.quad;
* the exact (epsilon, delta) curve of the Gaussian mechanism (Balle & Wang, ICML 2018,
  Thm 8): delta(eps) = Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z);
* the RDP -> (epsilon, delta) conversion (Balle et al. 2020, Thm 21), re-typed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from scipy import integrate, optimize, stats

from privacy import (
    AccountingError,
    ComposedEvent,
    DiscreteGaussianSumEvent,
    GaussianEvent,
    NonPrivateEvent,
    NoOpEvent,
    PoissonSampledEvent,
    PrvAccountant,
    RdpAccountant,
    SelfComposedEvent,
    SkellamSumEvent,
    compute_epsilon,
    create_accountant,
)

DELTA = 1e-5


# -- independent references ------------------------------------------------------------
def _log_a_by_quadrature(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha by adaptive quadrature of the integrand in log space."""
    log_norm = -0.5 * math.log(2 * math.pi * sigma**2)

    def log_integrand(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        ratio_term = np.logaddexp(math.log1p(-q), math.log(q) + (2 * x - 1) / (2 * sigma**2))
        out: npt.NDArray[np.float64] = log_norm - x**2 / (2 * sigma**2) + alpha * ratio_term
        return out

    # the integrand peaks near x = 0 or x = alpha * sigma^2; divide by its maximum on
    # a grid so that quad integrates O(1) values
    hi = alpha * sigma**2 + 40 * sigma
    peak = float(np.max(log_integrand(np.linspace(-40 * sigma, hi, 20001))))
    value, _ = integrate.quad(
        lambda x: math.exp(float(log_integrand(np.asarray(x))) - peak),
        -40 * sigma,
        hi,
        points=[0.0, 0.5, alpha * sigma**2 / 2, alpha * sigma**2],
        limit=500,
        epsabs=0.0,
        epsrel=1e-10,
    )
    return math.log(value) + peak


def _balle_conversion(orders: list[int], rdp: list[float], delta: float) -> float:
    return min(
        r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        for a, r in zip(orders, rdp, strict=True)
    )


def _quadrature_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    orders = list(range(2, 41))
    rdp = [steps * _log_a_by_quadrature(q, sigma, a) / (a - 1) for a in orders]
    return _balle_conversion(orders, rdp, delta)


def _exact_gaussian_epsilon(z: float, delta: float) -> float:
    """Balle & Wang (2018): the smallest eps with delta(eps) <= delta, sensitivity 1."""

    def delta_of(eps: float) -> float:
        return float(
            stats.norm.cdf(1 / (2 * z) - eps * z)
            - math.exp(eps) * stats.norm.cdf(-1 / (2 * z) - eps * z)
        )

    return float(optimize.brentq(lambda e: delta_of(e) - delta, 0.0, 100.0, xtol=1e-12))


# -- Gaussian family ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("q", "sigma", "steps"),
    [(0.01, 1.0, 1000), (0.05, 1.5, 200), (0.2, 3.0, 50)],
)
def test_sampled_gaussian_matches_numerical_integration(q: float, sigma: float, steps: int) -> None:
    reference = _quadrature_epsilon(q, sigma, steps, DELTA)
    eps = compute_epsilon(
        mechanism="gaussian", noise_multiplier=sigma, sample_rate=q, steps=steps, delta=DELTA
    )
    # our grid adds fractional orders, so it can only be (slightly) tighter
    assert eps <= reference * (1 + 1e-6)
    assert eps == pytest.approx(reference, rel=0.01)


def test_sampled_gaussian_rdp_curve_matches_quadrature_at_integer_orders() -> None:
    q, sigma = 0.01, 1.0
    acc = RdpAccountant()
    acc.compose(PoissonSampledEvent(q, GaussianEvent(sigma)))
    curve = dict(zip(acc.orders, acc.rdp, strict=True))
    for alpha in (2, 3, 5, 8, 13, 21, 32):
        reference = _log_a_by_quadrature(q, sigma, alpha) / (alpha - 1)
        assert curve[float(alpha)] == pytest.approx(reference, rel=1e-6)


def test_published_value_q001_sigma1_1000_steps() -> None:
    # Opacus 1.6 RDPAccountant gives 2.1014 for this setting (Abadi et al. style run).
    eps = compute_epsilon(
        mechanism="gaussian", noise_multiplier=1.0, sample_rate=0.01, steps=1000, delta=DELTA
    )
    assert eps == pytest.approx(2.1014, rel=0.01)


def test_prv_is_below_rdp_and_close() -> None:
    kwargs = {"mechanism": "gaussian", "noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 1000}
    rdp = compute_epsilon(**kwargs, delta=DELTA, accountant="rdp")  # type: ignore[arg-type]
    prv = compute_epsilon(**kwargs, delta=DELTA, accountant="prv")  # type: ignore[arg-type]
    assert prv <= rdp
    assert prv >= 0.8 * rdp  # 1.84 vs 2.10


@pytest.mark.parametrize(("z", "steps"), [(1.0, 1), (2.0, 10), (5.0, 4)])
def test_unsampled_gaussian_vs_exact_analytic(z: float, steps: int) -> None:
    # k Gaussian releases with multiplier z are exactly one with multiplier z / sqrt(k)
    exact = _exact_gaussian_epsilon(z / math.sqrt(steps), DELTA)
    rdp = compute_epsilon(
        mechanism="gaussian", noise_multiplier=z, sample_rate=1.0, steps=steps, delta=DELTA
    )
    prv = compute_epsilon(
        mechanism="gaussian",
        noise_multiplier=z,
        sample_rate=1.0,
        steps=steps,
        delta=DELTA,
        accountant="prv",
    )
    assert rdp >= exact
    assert rdp <= 1.3 * exact  # RDP is an upper bound, but not a loose one here
    assert prv >= exact - 1e-9  # PRV reports an upper bound too
    assert prv == pytest.approx(exact, abs=0.02, rel=0.01)


def test_composition_forms_agree() -> None:
    step = PoissonSampledEvent(0.02, GaussianEvent(1.2))
    a, b, c = RdpAccountant(), RdpAccountant(), RdpAccountant()
    for _ in range(3):
        a.compose(step)
    b.compose(SelfComposedEvent(step, 3))
    c.compose(ComposedEvent((step, NoOpEvent(), step, step)))
    assert a.epsilon(DELTA) == pytest.approx(b.epsilon(DELTA), rel=1e-12)
    assert b.epsilon(DELTA) == pytest.approx(c.epsilon(DELTA), rel=1e-12)


def test_general_subsampling_bound_between_exact_and_unsampled() -> None:
    # SelfComposedEvent(..., 1) forces the generic Zhu-Wang bound on a Gaussian curve.
    q, z = 0.05, 1.0
    exact, generic, unsampled = RdpAccountant(), RdpAccountant(), RdpAccountant()
    exact.compose(SelfComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), 100))
    generic.compose(
        SelfComposedEvent(PoissonSampledEvent(q, SelfComposedEvent(GaussianEvent(z), 1)), 100)
    )
    unsampled.compose(SelfComposedEvent(GaussianEvent(z), 100))
    e_exact, e_generic, e_unsampled = (x.epsilon(DELTA) for x in (exact, generic, unsampled))
    assert e_exact <= e_generic < e_unsampled
    assert e_generic <= 1.5 * e_exact


# -- discrete mechanisms ---------------------------------------------------------------------
def _gaussian_eps(z: float, steps: int) -> float:
    return compute_epsilon(
        mechanism="gaussian", noise_multiplier=z, sample_rate=1.0, steps=steps, delta=DELTA
    )


def test_ddg_approaches_gaussian_as_sigma_grows() -> None:
    n, d, z, steps = 10, 1000, 2.0, 5
    target = _gaussian_eps(z, steps)
    gaps = []
    for sigma in (0.6, 0.8, 1.0, 2.0, 8.0):
        l2 = math.sqrt(n) * sigma / z  # same total std / sensitivity as the Gaussian
        event = DiscreteGaussianSumEvent(
            sigma=sigma,
            num_clients=n,
            l2_sensitivity=l2,
            l1_sensitivity=l2 * math.sqrt(d),
            dimension=d,
        )
        acc = RdpAccountant()
        acc.compose(SelfComposedEvent(event, steps))
        eps = acc.epsilon(DELTA)
        assert eps >= target * (1 - 1e-9)
        gaps.append(eps / target - 1)
    assert all(a >= b - 1e-12 for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[0] > 0.05  # visibly worse when the shares are narrow
    assert gaps[-1] < 0.01 and gaps[-2] < 0.01


def test_ddg_single_client_is_the_discrete_gaussian() -> None:
    acc = RdpAccountant()
    acc.compose(
        DiscreteGaussianSumEvent(
            sigma=3.0, num_clients=1, l2_sensitivity=1.5, l1_sensitivity=1e6, dimension=10**6
        )
    )
    assert acc.epsilon(DELTA) == pytest.approx(_gaussian_eps(2.0, 1), rel=0.01)


def test_skellam_approaches_gaussian_as_variance_grows() -> None:
    n, d, z, steps = 10, 1000, 2.0, 5
    target = _gaussian_eps(z, steps)
    gaps = []
    for total_var in (10.0, 100.0, 1e4, 1e6):
        l2 = math.sqrt(total_var) / z
        event = SkellamSumEvent(
            mu=total_var / n, num_clients=n, l2_sensitivity=l2, l1_sensitivity=l2 * math.sqrt(d)
        )
        acc = RdpAccountant()
        acc.compose(SelfComposedEvent(event, steps))
        eps = acc.epsilon(DELTA)
        assert eps >= target * (1 - 1e-9)
        gaps.append(eps / target - 1)
    assert all(a >= b - 1e-12 for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[0] > 0.05
    assert gaps[-1] < 0.01 and gaps[-2] < 0.01


def test_sampled_discrete_event_is_amplified() -> None:
    event = SkellamSumEvent(mu=400.0, num_clients=10, l2_sensitivity=30.0, l1_sensitivity=900.0)
    full, sampled = RdpAccountant(), RdpAccountant()
    full.compose(SelfComposedEvent(event, 20))
    sampled.compose(SelfComposedEvent(PoissonSampledEvent(0.1, event), 20))
    assert 0 < sampled.epsilon(DELTA) < full.epsilon(DELTA)


# -- special events ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_noop_and_nonprivate(name: str) -> None:
    acc = create_accountant(name)
    acc.compose(NoOpEvent())
    assert acc.epsilon(DELTA) == 0.0
    acc.compose(GaussianEvent(2.0))
    assert 0 < acc.epsilon(DELTA) < math.inf
    acc.compose(NonPrivateEvent())
    assert acc.epsilon(DELTA) == math.inf


# -- refusals ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LaplaceEvent:  # an event type no accountant knows
    scale: float


_DDG = DiscreteGaussianSumEvent(
    sigma=2.0, num_clients=5, l2_sensitivity=10.0, l1_sensitivity=100.0, dimension=100
)


@pytest.mark.parametrize(
    ("name", "event", "names"),
    [
        ("prv", _DDG, "DiscreteGaussianSumEvent"),
        ("prv", SkellamSumEvent(10.0, 5, 3.0, 9.0), "SkellamSumEvent"),
        ("prv", ComposedEvent((GaussianEvent(1.0), _DDG)), "events[1]"),
        ("prv", PoissonSampledEvent(0.1, SelfComposedEvent(GaussianEvent(1.0), 2)), "event"),
        ("prv", _LaplaceEvent(1.0), "_LaplaceEvent"),
        ("rdp", _LaplaceEvent(1.0), "_LaplaceEvent"),
        ("rdp", ComposedEvent((GaussianEvent(1.0), _LaplaceEvent(1.0))), "events[1]"),  # type: ignore[arg-type]
        ("rdp", DiscreteGaussianSumEvent(2.0, 5, 10.0, 100.0), "dimension"),
        ("rdp", DiscreteGaussianSumEvent(0.3, 5, 10.0, 100.0, 10), "sigma"),
        ("rdp", PoissonSampledEvent(1.5, GaussianEvent(1.0)), "sample_rate"),
        ("rdp", SelfComposedEvent(GaussianEvent(1.0), -1), "count"),
        ("rdp", GaussianEvent(float("nan")), "noise_multiplier"),
    ],
)
def test_refusal_names_the_part_and_leaves_state_unchanged(
    name: str, event: object, names: str
) -> None:
    acc = create_accountant(name)
    acc.compose(SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 100))
    before = acc.epsilon(DELTA)
    snapshot = acc.copy()
    assert not acc.supports(event)  # type: ignore[arg-type]
    reason = acc.unsupported_reason(event)  # type: ignore[arg-type]
    assert reason is not None and names in reason
    with pytest.raises(AccountingError, match=names.replace("[", r"\[").replace("]", r"\]")):
        acc.compose(event)  # type: ignore[arg-type]
    assert acc.epsilon(DELTA) == before
    if isinstance(acc, RdpAccountant) and isinstance(snapshot, RdpAccountant):
        np.testing.assert_array_equal(acc.rdp, snapshot.rdp)
    if isinstance(acc, PrvAccountant) and isinstance(snapshot, PrvAccountant):
        assert acc.history == snapshot.history


def test_compute_epsilon_rejects_unsupported_combinations() -> None:
    common = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10, "delta": DELTA}
    with pytest.raises(AccountingError, match="mechanism"):
        compute_epsilon(mechanism="skellam", **common)  # type: ignore[arg-type]
    with pytest.raises(AccountingError, match="accountant"):
        compute_epsilon(mechanism="gaussian", accountant="moments", **common)  # type: ignore[arg-type]
    with pytest.raises(AccountingError, match="sample_rate"):
        compute_epsilon(
            mechanism="gaussian", noise_multiplier=1.0, sample_rate=2.0, steps=1, delta=DELTA
        )
    assert (
        compute_epsilon(
            mechanism="gaussian", noise_multiplier=0.0, sample_rate=0.1, steps=1, delta=DELTA
        )
        == math.inf
    )
