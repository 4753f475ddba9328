"""Math of the empirical audit: epsilon of two Gaussians (Andrew et al. 2024), ROC and
AUC, the analytic gradient inversion, image-quality scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from audits.empirical import (
    epsilon_two_gaussians,
    hockey_stick_two_gaussians,
    image_quality,
    invert_linear_update,
    one_shot_epsilon,
    roc_curve,
)

DELTA = 1e-5


def _gaussian_mechanism_delta(mu: float, eps: float) -> float:
    """Balle & Wang (ICML 2018), Thm. 8: delta(eps) of the Gaussian mechanism with mu = Delta/sigma."""
    return float(stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2))


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0, 4.0])
def test_equal_variance_is_the_gaussian_mechanism(mu: float) -> None:
    eps = epsilon_two_gaussians(0.0, 0.3, mu * 0.3, 0.3, delta=DELTA)
    assert _gaussian_mechanism_delta(mu, eps) == pytest.approx(DELTA, rel=1e-3)


def test_epsilon_is_symmetric_and_monotone() -> None:
    a = epsilon_two_gaussians(0.0, 1.0, 1.5, 1.2, delta=DELTA)
    b = epsilon_two_gaussians(1.5, 1.2, 0.0, 1.0, delta=DELTA)
    assert a == pytest.approx(b, rel=1e-6)
    assert epsilon_two_gaussians(0.0, 1.0, 2.0, 1.0, delta=DELTA) > epsilon_two_gaussians(0.0, 1.0, 1.0, 1.0, delta=DELTA)
    assert epsilon_two_gaussians(0.0, 1.0, 0.0, 1.0, delta=DELTA) == 0.0
    # A variance mismatch alone leaks at small delta (the reason for the pooled fit).
    assert epsilon_two_gaussians(0.0, 1.0, 0.0, 1.2, delta=DELTA) > 0.5


def test_hockey_stick_is_a_divergence() -> None:
    assert hockey_stick_two_gaussians(0.0, 1.0, 0.0, 1.0, 0.0) == pytest.approx(0.0, abs=1e-12)
    # H_0 is the total variation distance: 2 Phi(mu/2) - 1 for unit variances.
    assert hockey_stick_two_gaussians(1.0, 1.0, 0.0, 1.0, 0.0) == pytest.approx(2 * stats.norm.cdf(0.5) - 1, rel=1e-9)


def test_one_shot_estimate_recovers_a_known_mechanism() -> None:
    rng = np.random.default_rng(0)
    unseen = rng.normal(0.0, 0.01, 5000)
    seen = rng.normal(0.015, 0.01, 5000)  # mu = 1.5
    truth = epsilon_two_gaussians(0.0, 1.0, 1.5, 1.0, delta=DELTA)
    assert one_shot_epsilon(seen, unseen, delta=DELTA) == pytest.approx(truth, rel=0.05)
    assert one_shot_epsilon(seen, unseen, delta=DELTA, equal_variance=False) == pytest.approx(truth, rel=0.25)


def test_roc_and_auc_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(0.3, 1, 300), rng.normal(0, 1, 400)
    fpr, tpr, auc = roc_curve(members, nonmembers)
    labels = np.r_[np.ones(300), np.zeros(400)]
    assert auc == pytest.approx(roc_auc_score(labels, np.r_[members, nonmembers]), abs=1e-12)
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_analytic_inversion_is_exact_for_one_record() -> None:
    torch.manual_seed(0)
    first = torch.nn.Linear(64, 16)
    layer = torch.nn.Sequential(first, torch.nn.ReLU(), torch.nn.Linear(16, 10))
    x = torch.randn(1, 64)
    loss = torch.nn.functional.cross_entropy(layer(x), torch.tensor([3]))
    gw, gb = torch.autograd.grad(loss, [first.weight, first.bias])
    recovered = invert_linear_update(-0.1 * gw.double().numpy(), -0.1 * gb.double().numpy())
    assert np.allclose(recovered, x.double().numpy()[0], atol=1e-5)
    assert image_quality(x.numpy()[0], recovered)["correlation"] > 0.9999


def test_image_quality_of_noise_is_low() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=64)
    same = image_quality(x, x)
    assert same["correlation"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0) and same["mse"] == 0.0
    noise = image_quality(x, rng.normal(size=64))
    assert abs(noise["correlation"]) < 0.5 and noise["ssim"] < 0.5
