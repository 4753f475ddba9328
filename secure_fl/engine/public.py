"""What both engines derive from the public set-up: mechanisms, planned events, seeds.

The server announces an aggregation's public set-up (protocol, cohort size ``n``, the
noise provisioning ``P``, the clip ``C`` and indicator scale ``kappa``, the vector
length, the round seed); every client re-derives the same DP mechanism from it and
checks the planned event against its own budget, so the server never decides alone how
much noise a client adds. The functions here are pure: one copy, used by
:mod:`secure_fl.engine.server` and :mod:`secure_fl.engine.client`.

Randomness (docs/architecture.md): every privacy-relevant client-side random choice
(DP-SGD noise and batches, noise share, rounding, SecAgg client seed) comes from
:func:`client_rng`, and public set-up randomness (session id, round seed, graph seed)
from :func:`public_seed`. Both are fresh OS entropy unless
``simulation.reproducible_noise`` derives them from the public seed, the aggregation
number and the client's *name* (never a transport's address), so two transports given
the same scenario draw the same values. Research only: the noise is then predictable
by anyone who knows the configuration. The batch order of non-DP local training
(:func:`train_seed`) protects nothing and always derives from the public seed, so a
run without DP repeats from its seed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from crypto.prg import Csprng
from privacy.events import DPEvent, NonPrivateEvent
from privacy.mechanisms.distributed import DistributedDiscreteGaussian, DistributedSkellam
from privacy.mechanisms.gaussian import CentralGaussian, GaussianShare
from secure_fl.config import RunConfig
from secure_fl.errors import ConfigError

__all__ = [
    "check_colluder_provisioning",
    "check_run_config",
    "client_rng",
    "client_seed",
    "expected_cohort",
    "honest_provisioned_shares",
    "honest_shares",
    "mechanism_for",
    "planned_event",
    "provisioned_survivors",
    "public_seed",
    "train_seed",
]

Mechanism = DistributedDiscreteGaussian | DistributedSkellam | GaussianShare | CentralGaussian


def _derive(config: RunConfig, label: str) -> bytes:
    return hashlib.sha256(f"secure-fl/reproducible-noise/{config.seed}/{label}".encode()).digest()


def public_seed(config: RunConfig, label: str) -> bytes:
    """32 bytes of public set-up randomness (session id, round and graph seeds):
    OS entropy, or derived from ``seed`` and ``label`` under reproducible noise."""
    if config.simulation.reproducible_noise:
        return _derive(config, f"public/{label}")
    return Csprng.from_entropy().random_bytes(32)


def client_seed(config: RunConfig, *, version: int, name: str, purpose: str) -> bytes:
    """A client's 32-byte secret seed for ``purpose`` in aggregation ``version``."""
    if config.simulation.reproducible_noise:
        return _derive(config, f"client/{version}/{purpose}/{name}")
    return Csprng.from_entropy().random_bytes(32)


def train_seed(config: RunConfig, *, version: int, name: str) -> int:
    """The batch-order seed of a client's (non-DP) local training: simulation randomness,
    always derived from the public seed, the aggregation and the client's name (it
    protects nothing; DP-SGD batches are Poisson draws from :func:`client_rng`)."""
    digest = hashlib.sha256(f"secure-fl/train-seed/{config.seed}/{version}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def client_rng(config: RunConfig, *, version: int, name: str, purpose: str) -> Csprng:
    """The client's CSPRNG for ``purpose`` (see :func:`client_seed`)."""
    return Csprng(client_seed(config, version=version, name=name, purpose=purpose))


def expected_cohort(config: RunConfig) -> int:
    """Planned clients per aggregation: the buffer size (async) or the cohort size."""
    return config.buffer_size if config.aggregation.mode == "async" else config.cohort_size


def provisioned_survivors(config: RunConfig, n: int) -> int:
    """How many surviving noise shares must carry the full noise (at most ``n``).

    ``dp.provisioned_survivors`` when set; otherwise the expected number of survivors
    under the configured dropout rate, ``ceil((1 - simulation.dropout) * n)``. When fewer
    clients survive, less noise is present: the event records it and epsilon rises.
    """
    wanted = config.dp.provisioned_survivors or math.ceil((1.0 - config.simulation.dropout) * n)
    return max(1, min(n, wanted))


def honest_provisioned_shares(config: RunConfig, n: int) -> int:
    """``P = provisioned_survivors(n) - c`` (at least 1): each share is sized so that ``P``
    honest shares alone carry the target variance ``(z C)^2``, ``c = threat.max_colluders``."""
    return max(1, provisioned_survivors(config, n) - config.threat.max_colluders)


def honest_shares(config: RunConfig, survivors: int) -> int:
    """Shares assumed honest in an aggregation with ``survivors`` shares: ``survivors - c``."""
    return max(0, survivors - config.threat.max_colluders)


def mechanism_for(
    config: RunConfig, *, protocol: str, dim: int, n: int, provisioned: int, clip: float
) -> Mechanism | None:
    """The DP mechanism of one aggregation from public settings (``None`` without DP).

    ``dim`` is the encoded vector length (support size, +1 for the adaptive-clip
    indicator), ``clip`` the bound ``C'`` of what a client sends.
    """
    dp = config.dp
    if dp.mechanism == "none":
        return None
    if protocol == "plain":
        return CentralGaussian(clip=clip, noise_multiplier=dp.noise_multiplier)
    if protocol == "ckks":
        return GaussianShare(clip=clip, noise_multiplier=dp.noise_multiplier, threshold=provisioned)
    if dp.mechanism not in ("discrete_gaussian", "skellam"):
        raise ConfigError(
            f"{dp.mechanism!r} cannot be summed exactly in Z_2^b; use discrete_gaussian or skellam",
            field="dp.mechanism",
        )
    cls = DistributedDiscreteGaussian if dp.mechanism == "discrete_gaussian" else DistributedSkellam
    key = (cls.__name__, dim, clip, config.secagg.bits, dp.noise_multiplier, n, provisioned)
    cached = _MECHANISMS.get(key)
    if cached is None:  # the gamma search is a bisection: do it once per parameter set
        if len(_MECHANISMS) > 64:
            _MECHANISMS.clear()
        cached = _MECHANISMS[key] = cls.create(
            dim=dim,
            clip=clip,
            bits=config.secagg.bits,
            noise_multiplier=dp.noise_multiplier,
            num_clients=n,
            threshold=provisioned,
        )
    return cached


_MECHANISMS: dict[tuple[Any, ...], DistributedDiscreteGaussian | DistributedSkellam] = {}


def planned_event(mech: Any) -> DPEvent:
    """The event when exactly the provisioned honest shares survive: what a site checks
    against its cap before joining (central noise: the one event it adds)."""
    if mech is None:
        return NonPrivateEvent()
    event: DPEvent = mech.event() if isinstance(mech, CentralGaussian) else mech.event(num_survivors=mech.threshold)
    return event


def check_colluder_provisioning(config: RunConfig) -> None:
    """Raise :class:`ConfigError` when the planned cohort has no honest noise share."""
    if config.dp.mechanism == "none" or config.protocol == "plain":
        return
    c = config.threat.max_colluders
    n = expected_cohort(config)
    provisioned = provisioned_survivors(config, n)
    if provisioned - c < 1:
        raise ConfigError(
            f"threat.max_colluders = {c} leaves no honest noise share among the {provisioned} "
            f"provisioned survivors of a cohort of {n} (clients.per_round, "
            "aggregation.buffer_size, dp.provisioned_survivors): lower threat.max_colluders "
            "or enlarge the cohort",
            field="threat.max_colluders",
        )


def check_run_config(config: RunConfig) -> None:
    """Refuse protocol/mechanism combinations that cannot be private or exact, with the
    same message on every transport."""
    dp = config.dp
    check_colluder_provisioning(config)
    if config.protocol == "plain" and dp.mechanism not in ("none", "gaussian"):
        raise ConfigError(
            f"{dp.mechanism!r} is a distributed integer mechanism and needs protocol = 'secagg'",
            field="dp.mechanism",
        )
    if config.protocol == "ckks" and dp.mechanism not in ("none", "gaussian"):
        raise ConfigError(
            f"{dp.mechanism!r} noise is integer-valued and needs protocol = 'secagg'; "
            "CKKS uses the continuous 'gaussian' mechanism",
            field="dp.mechanism",
        )
    if config.protocol == "secagg" and dp.mechanism == "gaussian":
        raise ConfigError(
            "secagg sums integers: use the exact integer mechanisms 'discrete_gaussian' or "
            "'skellam' (continuous Gaussian noise cannot be summed exactly in Z_2^b)",
            field="dp.mechanism",
        )
