"""Record-level DP-SGD adapter: trains, accounts, and draws its randomness from the Csprng."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from crypto.prg import Csprng
from privacy import PrivacyError, compute_epsilon, make_private

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")

SEED = bytes(range(32))
DELTA = 1e-5


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _initial_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    return nn.Linear(4, 2).state_dict()


def _train(
    seed: bytes,
    *,
    torch_seed: int,
    epochs: int = 2,
    zero_loss: bool = False,
    noise_multiplier: float = 1.0,
) -> tuple[list[torch.Tensor], float, int]:
    model = nn.Linear(4, 2)
    model.load_state_dict(_initial_state())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(_data(), batch_size=16)
    training = make_private(
        model,
        optimizer,
        loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=1.0,
        rng=Csprng(seed),
    )
    module, dp_optimizer, dp_loader = training
    torch.manual_seed(torch_seed)  # must not influence anything privacy-relevant
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for x, y in dp_loader:
            dp_optimizer.zero_grad()
            out = module(x)
            loss = 0.0 * out.sum() if zero_loss else loss_fn(out, y)
            loss.backward()
            dp_optimizer.step()
    params = [p.detach().clone() for p in module.parameters()]
    return params, training.epsilon(DELTA), training.steps


def test_trains_and_reports_finite_positive_epsilon() -> None:
    params, eps, steps = _train(SEED, torch_seed=0)
    assert steps == 8  # 2 epochs x len(loader) = 4 Poisson batches each
    expected = compute_epsilon(
        mechanism="gaussian", noise_multiplier=1.0, sample_rate=0.25, steps=8, delta=DELTA
    )
    assert 0 < eps < math.inf
    assert eps == pytest.approx(expected, rel=1e-12)
    initial = _initial_state()
    assert not torch.equal(params[0], initial["weight"])


def test_same_csprng_seed_gives_identical_runs_whatever_torch_seed() -> None:
    a, _, _ = _train(SEED, torch_seed=0)
    b, _, _ = _train(SEED, torch_seed=987654)
    for pa, pb in zip(a, b, strict=True):
        assert torch.equal(pa, pb)
    c, _, _ = _train(bytes(32), torch_seed=0)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a, c, strict=True))


def test_noise_is_exactly_the_csprng_stream() -> None:
    # With a zero loss every clipped gradient is 0, so one SGD step moves the
    # parameters by -lr * noise / expected_batch_size, noise = std * (g1+g2+g3+g4)/2
    # with g from the first fork of the seed's Csprng (the second fork samples batches).
    z, lr, batch = 3.0, 0.5, 16
    params, _, _ = _train(SEED, torch_seed=0, epochs=1, zero_loss=True, noise_multiplier=z)
    noise_rng = Csprng(SEED).fork()
    initial = _initial_state()
    moved = {"weight": initial["weight"].clone(), "bias": initial["bias"].clone()}
    for _ in range(4):  # 4 steps in one epoch
        for name in ("weight", "bias"):
            n = moved[name].numel()
            g = noise_rng.standard_normal(4 * n).reshape(4, n).sum(axis=0) / 2.0
            noise = torch.from_numpy(np.ascontiguousarray(g * z * 1.0)).float()
            moved[name] = moved[name] - lr * noise.view(moved[name].shape) / batch
    torch.testing.assert_close(params[0], moved["weight"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params[1], moved["bias"], rtol=1e-5, atol=1e-6)


def test_rejects_bad_arguments() -> None:
    model = nn.Linear(4, 2)
    loader = DataLoader(_data(), batch_size=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(PrivacyError, match="Csprng"):
        make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0, rng=None)  # type: ignore[arg-type]
    with pytest.raises(PrivacyError, match="max_grad_norm"):
        make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=0.0, rng=Csprng(SEED))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with pytest.warns(UserWarning, match="Poisson"):
            make_private(
                model,
                opt,
                loader,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                rng=Csprng(SEED),
                poisson_sampling=False,
            )
