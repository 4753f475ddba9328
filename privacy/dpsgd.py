"""Record-level (example-level) DP-SGD inside a client, on top of Opacus.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016: each step draws a
Poisson sample of the client's records (each record independently with probability
``q = 1 / len(data_loader)``), clips every per-example gradient to L2 norm
``max_grad_norm``, sums, adds ``N(0, (noise_multiplier * max_grad_norm)^2)`` per
coordinate, and averages. The privacy of ``T`` steps is that of ``T`` compositions
of the Poisson-subsampled Gaussian mechanism, accounted here by
:mod:`privacy.accountants` (the unit of privacy is one *record* of this client; the
user-level guarantee of the federation is accounted separately at aggregation).

Where the randomness comes from (all privacy-relevant randomness from the CSPRNG):

* **Gaussian noise**: :class:`CsprngDPOptimizer` replaces Opacus's
  ``DPOptimizer.add_noise`` (which calls ``torch.normal`` on a ``torch.Generator``, by
  default the global Mersenne Twister) with standard normals from
  :meth:`crypto.prg.Csprng.standard_normal` (AES-256-CTR keystream, Box-Muller in
  float64). With ``hardened_noise=True`` (default) each coordinate is
  ``(g1 + g2 + g3 + g4) / 2`` of four independent draws, the same mitigation Opacus's
  ``secure_mode`` applies (Holohan & Braghin, arXiv:2107.10138, Sec. 5.1) against the
  floating-point attack on Gaussian noise of Jin et al. (arXiv:2112.05307).
* **Poisson sampling of batches**: Opacus's ``UniformWithReplacementSampler`` draws
  ``torch.rand(num_samples, generator=...)`` from a ``torch.Generator`` (the global
  one when none is given). It is replaced by :class:`CsprngPoissonSampler`, which
  includes record ``i`` iff ``u_i < q`` for ``u_i`` from :meth:`Csprng.uniform01`.
* Nothing else in this path draws random numbers. Model initialisation and dropout
  (``torch`` global RNG) are not privacy mechanisms. Opacus's ``rand_on_empty``
  option (random filler batches, ``torch.rand``) is not used.

The noise and sampling streams are two :meth:`Csprng.fork` children of the ``rng``
passed in, so a fixed seed reproduces a run bit for bit.

This adapter overrides two protected hooks of ``opacus.PrivacyEngine``
(``_prepare_optimizer``, ``_prepare_data_loader``); they are stable across the
supported Opacus range (``>=1.5,<1.7``). Only flat clipping, non-distributed training
and the ``"hooks"`` / ``"functorch"`` / ``"ew"`` per-sample-gradient modes are
supported (ghost clipping and DDP use other optimizer classes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.optimizers.optimizer import DPOptimizer, _check_processed_flag, _mark_as_processed
from torch import nn
from torch.utils.data import DataLoader, Sampler

from crypto.prg import Csprng
from privacy.accountants.base import check_delta
from privacy.accountants.registry import create_accountant
from privacy.errors import PrivacyError
from privacy.events import (
    ComposedEvent,
    DPEvent,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)

__all__ = ["CsprngDPOptimizer", "CsprngPoissonSampler", "PrivateTraining", "make_private"]

_SUPPORTED_GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")


def csprng_gaussian_like(
    reference: torch.Tensor, *, std: float, rng: Csprng, hardened: bool = True
) -> torch.Tensor:
    """A tensor shaped like ``reference`` of i.i.d. ``N(0, std^2)`` drawn from ``rng``."""
    n = reference.numel()
    if std == 0.0 or n == 0:
        return torch.zeros_like(reference)
    if hardened:
        draws = rng.standard_normal(4 * n).reshape(4, n).sum(axis=0) / 2.0
    else:
        draws = rng.standard_normal(n)
    noise = torch.from_numpy(np.ascontiguousarray(draws * std))
    return noise.to(dtype=reference.dtype, device=reference.device).view(reference.shape)


class CsprngDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """Opacus ``DPOptimizer`` whose Gaussian noise comes from a :class:`Csprng`."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        rng: Csprng,
        hardened_noise: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self._noise_rng = rng
        self._hardened_noise = hardened_noise

    def add_noise(self) -> None:
        """Add ``N(0, (noise_multiplier * max_grad_norm)^2)`` to each clipped gradient sum."""
        std = float(self.noise_multiplier) * float(self.max_grad_norm)
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = csprng_gaussian_like(
                p.summed_grad, std=std, rng=self._noise_rng, hardened=self._hardened_noise
            )
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


class CsprngPoissonSampler(Sampler[list[int]]):
    """Poisson batch sampler: each index joins each batch independently w.p. ``sample_rate``.

    Drop-in for Opacus's ``UniformWithReplacementSampler`` with CSPRNG uniforms.
    """

    def __init__(self, *, num_samples: int, sample_rate: float, rng: Csprng, steps: int) -> None:
        if num_samples < 1:
            raise PrivacyError(f"num_samples must be >= 1, got {num_samples}")
        if not 0.0 < sample_rate <= 1.0:
            raise PrivacyError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.steps = steps
        self._rng = rng

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = self._rng.uniform01(self.num_samples) < self.sample_rate
            yield [int(i) for i in np.flatnonzero(mask)]


class _CsprngPrivacyEngine(PrivacyEngine):  # type: ignore[misc]
    def __init__(self, *, noise_rng: Csprng, sampling_rng: Csprng, hardened_noise: bool) -> None:
        with warnings.catch_warnings():
            # Opacus warns that its torchcsprng-based secure_mode is off: our noise and
            # sampling come from crypto.prg.Csprng instead.
            warnings.simplefilter("ignore")
            super().__init__(accountant="rdp", secure_mode=False)
        self._noise_rng = noise_rng
        self._sampling_rng = sampling_rng
        self._hardened_noise = hardened_noise

    def _prepare_optimizer(
        self,
        *,
        optimizer: torch.optim.Optimizer,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        loss_reduction: str = "mean",
        distributed: bool = False,
        clipping: str = "flat",
        noise_generator: object = None,
        grad_sample_mode: str = "hooks",
        **kwargs: Any,
    ) -> DPOptimizer:
        if (
            distributed
            or clipping != "flat"
            or grad_sample_mode not in _SUPPORTED_GRAD_SAMPLE_MODES
        ):
            raise PrivacyError(
                "the CSPRNG DP-SGD adapter supports flat clipping, non-distributed training "
                f"and grad_sample_mode in {_SUPPORTED_GRAD_SAMPLE_MODES}"
            )
        if isinstance(optimizer, DPOptimizer):
            optimizer = optimizer.original_optimizer
        return CsprngDPOptimizer(
            optimizer,
            rng=self._noise_rng,
            hardened_noise=self._hardened_noise,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction=loss_reduction,
            **kwargs,
        )

    def _prepare_data_loader(
        self,
        data_loader: DataLoader[Any],
        *,
        poisson_sampling: bool,
        distributed: bool,
        batch_first: bool = True,
        rand_on_empty: bool = False,
    ) -> DataLoader[Any]:
        if not poisson_sampling:
            return data_loader
        if distributed or rand_on_empty:
            raise PrivacyError("distributed sampling and rand_on_empty are not supported")
        # Opacus's DPDataLoader supplies the collate function that handles empty
        # batches; only its torch-RNG batch sampler is replaced.
        opacus_loader = super()._prepare_data_loader(
            data_loader, poisson_sampling=True, distributed=False, batch_first=batch_first
        )
        sampler = CsprngPoissonSampler(
            num_samples=len(data_loader.dataset),  # type: ignore[arg-type]
            sample_rate=float(opacus_loader.sample_rate),
            rng=self._sampling_rng,
            steps=len(data_loader),
        )
        return DataLoader(
            data_loader.dataset,
            batch_sampler=sampler,
            collate_fn=opacus_loader.collate_fn,
            num_workers=data_loader.num_workers,
            pin_memory=data_loader.pin_memory,
        )


@dataclass
class PrivateTraining:
    """The private module, optimizer and data loader, plus record-level accounting.

    Unpacks like Opacus's return value: ``module, optimizer, loader = training``.
    """

    module: nn.Module
    optimizer: DPOptimizer
    data_loader: DataLoader[Any]
    engine: PrivacyEngine
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    poisson_sampling: bool

    def __iter__(self) -> Iterator[Any]:
        return iter((self.module, self.optimizer, self.data_loader))

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far."""
        return sum(int(s) for _, _, s in self.engine.accountant.history)

    def event(self) -> DPEvent:
        """The record-level DP event of the steps taken so far."""
        return ComposedEvent(
            tuple(
                SelfComposedEvent(PoissonSampledEvent(float(q), GaussianEvent(float(z))), int(s))
                for z, q, s in self.engine.accountant.history
            )
        )

    def epsilon(self, delta: float, *, accountant: str = "rdp") -> float:
        """Record-level epsilon at ``delta`` so far (Poisson-subsampled Gaussian).

        Without Poisson sampling (``poisson_sampling=False``) this is the usual
        approximation, not a proven guarantee.
        """
        acc = create_accountant(accountant)
        acc.compose(self.event())
        return acc.epsilon(check_delta(delta))


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader[Any],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    poisson_sampling: bool = True,
    rng: Csprng,
    hardened_noise: bool = True,
    grad_sample_mode: str = "hooks",
) -> PrivateTraining:
    """Wrap ``model``, ``optimizer`` and ``data_loader`` for DP-SGD with CSPRNG randomness.

    ``noise_multiplier`` is the ratio of the noise std to ``max_grad_norm`` (the
    per-example clipping norm); the sample rate is ``1 / len(data_loader)`` as in
    Opacus (expected batch size = the loader's batch size).
    """
    if not isinstance(rng, Csprng):
        raise PrivacyError("rng must be a crypto.prg.Csprng")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise PrivacyError(f"max_grad_norm must be finite and > 0, got {max_grad_norm}")
    if not poisson_sampling:
        warnings.warn(
            "DP-SGD without Poisson sampling: the reported epsilon assumes Poisson "
            "sampling and is an approximation, not a guarantee",
            stacklevel=2,
        )
    noise_rng = rng.fork()
    sampling_rng = rng.fork()
    engine = _CsprngPrivacyEngine(
        noise_rng=noise_rng, sampling_rng=sampling_rng, hardened_noise=hardened_noise
    )
    try:
        module, dp_optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            poisson_sampling=poisson_sampling,
            grad_sample_mode=grad_sample_mode,
        )
    except (ValueError, NotImplementedError) as exc:
        raise PrivacyError(f"Opacus refused the model/optimizer/data loader: {exc}") from exc
    return PrivateTraining(
        module=module,
        optimizer=dp_optimizer,
        data_loader=loader,
        engine=engine,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        sample_rate=1.0 / len(data_loader),
        poisson_sampling=poisson_sampling,
    )
