"""Cohort draws of synchronous rounds: fixed-size or Poisson, as pure functions.

``clients.sampling`` chooses how each synchronous aggregation's cohort is drawn:

* ``"fixed"``: exactly ``clients.per_round`` of the ``clients.num`` clients, uniformly
  without replacement (the simulator's seeded generator, so a run repeats from its
  seed). No amplification by sampling is claimed for it: the released-model epsilon
  composes, for each client, the aggregations its update entered.
* ``"poisson"``: every client joins independently with probability exactly
  ``q = clients.per_round / clients.num`` (an integer draw ``U < per_round`` with ``U``
  uniform on ``{0, ..., num - 1}``), from the CSPRNG. Amplification by sampling needs
  the sample to be hidden from the adversary of the released model, so it must not be
  predictable from the public seed. The cohort size is random (possibly empty).

Asynchronous buffers are not sampled at all (the first K clients to finish), so they
have neither analysis; :func:`cohort_sampling` names them ``"async-buffer"``.

Randomness is passed in, so the engine of either transport can call these.
"""

from __future__ import annotations

import numpy as np

from crypto.prg import Csprng
from secure_fl.config import RunConfig
from secure_fl.errors import ConfigError

__all__ = ["cohort_sampling", "draw_cohort", "fixed_cohort", "poisson_cohort"]


def cohort_sampling(config: RunConfig) -> str:
    """``"poisson"``, ``"fixed"`` or ``"async-buffer"``: how cohorts are formed."""
    if config.aggregation.mode == "async":
        return "async-buffer"
    return config.clients.sampling


def fixed_cohort(num_clients: int, size: int, *, rng: np.random.Generator) -> list[int]:
    """``size`` distinct clients of ``range(num_clients)``, uniformly, sorted."""
    if not 1 <= size <= num_clients:
        raise ConfigError(
            f"a fixed cohort of {size} cannot be drawn from {num_clients} clients",
            field="clients.per_round",
        )
    return sorted(int(i) for i in rng.choice(num_clients, size, replace=False))


def poisson_cohort(num_clients: int, per_round: int, *, rng: Csprng) -> list[int]:
    """Each client of ``range(num_clients)`` independently w.p. ``per_round / num_clients``.

    The inclusion test ``U_i < per_round`` with ``U_i`` exactly uniform on
    ``{0, ..., num_clients - 1}`` (:meth:`Csprng.integers_below`) gives the rate exactly.
    """
    if not 1 <= per_round <= num_clients:
        raise ConfigError(
            f"a Poisson rate {per_round}/{num_clients} is not a probability",
            field="clients.per_round",
        )
    draws = rng.integers_below(num_clients, num_clients)
    return [int(i) for i in np.flatnonzero(draws < per_round)]


def draw_cohort(
    config: RunConfig, *, rng: np.random.Generator, secret_rng: Csprng | None
) -> list[int]:
    """One synchronous cohort as ``config.clients.sampling`` says.

    ``rng`` serves the fixed draw; ``secret_rng`` (a CSPRNG the adversary cannot
    predict) the Poisson draw, which refuses to run without it.
    """
    if config.clients.sampling == "poisson":
        if secret_rng is None:
            raise ConfigError(
                "clients.sampling = 'poisson' needs a secret CSPRNG for the cohort draw",
                field="clients.sampling",
            )
        return poisson_cohort(config.clients.num, config.cohort_size, rng=secret_rng)
    return fixed_cohort(config.clients.num, config.cohort_size, rng=rng)
