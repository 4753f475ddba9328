"""RDP bounds of the integer-domain distributed mechanisms (paper bounds, pure math).

All quantities live in the integer domain in which the noise is added: ``sigma`` and
``mu`` are *per-client* noise parameters, and ``l2_sensitivity`` / ``l1_sensitivity``
bound the change of the integer sum (after scaling, rotation and randomized rounding)
when one client's vector is replaced by zero and its noise share stays (zero-out,
:mod:`privacy.relations`: the number of shares, hence the noise variance, is the same
in both neighbours, which is what these bounds of a *shift* need).

Distributed discrete Gaussian
-----------------------------
Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", ICML 2021 (arXiv:2102.06387), Theorem 1 and
Proposition 14 / Eq. (17). Let ``Z = X_1 + ... + X_n`` with ``X_i ~ N_Z(0, sigma^2)^d``
independent and ``sigma >= 1/2``. For ``Delta in Z^d`` with ``||Delta||_2 <= Delta_2``
and ``||Delta||_1 <= Delta_1``, write ``s = sqrt(n) * sigma`` (the standard deviation of
the continuous Gaussian with the same total variance), ``l2 = Delta_2 / s``,
``l1 = Delta_1 / s`` and

    ``tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 * k / (k + 1))``.

Then ``D_alpha(Z + Delta || Z) <= eps(alpha)`` with

    ``eps(alpha) = min( alpha/2 * l2^2 + tau * d,
                        alpha/2 * (l2^2 + 2 * l1 * tau + tau^2 * d),
                        alpha/2 * (l2 + sqrt(d) * tau)^2 )``.

(The last two terms have the concentrated-DP form ``alpha * eps_c^2 / 2`` of Theorem 1.) The formula and the ``tau`` sum are those of the authors' reference
accounting code (google-research/federated, ``distributed_dp/accounting_utils.py``,
``compute_rdp_dgaussian`` and ``ddgauss_epsilon``). As ``sigma`` grows, ``tau``
vanishes doubly exponentially and the bound tends to the continuous Gaussian's
``alpha * Delta_2^2 / (2 n sigma^2)``. With ``n = 1`` (``tau = 0``) it is the discrete
Gaussian bound of Canonne, Kamath, Steinke (NeurIPS 2020). The dimension ``d`` enters
through ``tau``: the sum of discrete Gaussians is not a discrete Gaussian, and each
coordinate may contribute a divergence of order ``tau``.

Skellam
-------
Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021 (arXiv:2110.04995), RDP of the multi-dimensional Skellam
mechanism (Section 3), applied to the sum of the clients' shares: if each of ``n`` clients adds ``Sk(mu/2, mu/2)`` (variance ``mu``) to
every coordinate, the sum carries ``Sk(V/2, V/2)`` with ``V = n * mu`` and

    ``eps(alpha) = alpha * Delta_2^2 / (2 V)
                   + min( ((2 alpha - 1) * Delta_2^2 + 6 * Delta_1) / (4 V^2),
                          3 * Delta_1 / (2 V) )``.

This is the expression of the authors' reference code (``_skellam_rdp`` in the same
file, there written for the unscaled sensitivities and the scale ``s``; substituting
``Delta -> s * Delta``, ``V -> s^2 * V`` gives the form above). Its first term is the
Gaussian RDP with the same variance; the second vanishes like ``1/V``.

Both bounds are stated for integer orders in the reference code; the accountants
evaluate them at ``ceil(alpha)``, which is sound because Rényi divergence is
non-decreasing in the order (van Erven & Harremoës, IEEE T-IT 2014, Theorem 3).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ddg_rdp", "ddg_tau", "skellam_rdp"]


def _check_sensitivities(l2_sensitivity: float, l1_sensitivity: float) -> None:
    if not (l2_sensitivity >= 0.0 and math.isfinite(l2_sensitivity)):
        raise ValueError(f"l2_sensitivity must be finite and >= 0, got {l2_sensitivity}")
    if not (l1_sensitivity >= 0.0 and math.isfinite(l1_sensitivity)):
        raise ValueError(f"l1_sensitivity must be finite and >= 0, got {l1_sensitivity}")


def ddg_tau(*, sigma: float, num_clients: int) -> float:
    """``tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1))`` (Kairouz et al., Thm 1)."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not sigma > 0.0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if num_clients == 1:
        return 0.0
    k = np.arange(1, num_clients, dtype=np.float64)
    return 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1.0))))


def ddg_rdp(
    *,
    order: float,
    sigma: float,
    num_clients: int,
    dimension: int,
    l2_sensitivity: float,
    l1_sensitivity: float,
) -> float:
    """RDP at ``order`` of the sum of ``num_clients`` discrete Gaussians N_Z(0, sigma^2)^d.

    Kairouz, Liu, Steinke (ICML 2021), Proposition 14 (see the module docstring).
    Requires ``sigma >= 1/2`` (the hypothesis of their Theorem 1).
    """
    if not order >= 1.0:
        raise ValueError(f"order must be >= 1, got {order}")
    if not sigma >= 0.5:
        raise ValueError(f"the DDG bound requires sigma >= 1/2, got {sigma}")
    if dimension < 1:
        raise ValueError(f"dimension must be >= 1, got {dimension}")
    _check_sensitivities(l2_sensitivity, l1_sensitivity)
    tau = ddg_tau(sigma=sigma, num_clients=num_clients)
    scale = math.sqrt(num_clients) * sigma
    l2 = l2_sensitivity / scale
    l1 = l1_sensitivity / scale
    d = float(dimension)
    term_1 = order / 2.0 * l2**2 + tau * d
    term_2 = order / 2.0 * (l2**2 + 2.0 * l1 * tau + tau**2 * d)
    term_3 = order / 2.0 * (l2 + math.sqrt(d) * tau) ** 2
    return min(term_1, term_2, term_3)


def skellam_rdp(
    *,
    order: float,
    mu: float,
    num_clients: int,
    l2_sensitivity: float,
    l1_sensitivity: float,
) -> float:
    """RDP at ``order`` of the sum of ``num_clients`` Skellam shares of variance ``mu``.

    Agarwal, Kairouz, Liu (NeurIPS 2021), Skellam RDP bound with ``V = n * mu`` (see
    the module docstring).
    """
    if not order >= 1.0:
        raise ValueError(f"order must be >= 1, got {order}")
    if not (mu > 0.0 and math.isfinite(mu)):
        raise ValueError(f"mu must be finite and > 0, got {mu}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    _check_sensitivities(l2_sensitivity, l1_sensitivity)
    var = num_clients * mu
    d2 = l2_sensitivity**2
    gaussian_part = order * d2 / (2.0 * var)
    correction = min(
        ((2.0 * order - 1.0) * d2 + 6.0 * l1_sensitivity) / (4.0 * var**2),
        3.0 * l1_sensitivity / (2.0 * var),
    )
    return gaussian_part + correction
