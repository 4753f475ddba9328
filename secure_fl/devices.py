"""Device profiles for the in-process transport's virtual clock.

A profile gives a client's compute speed (training samples per second), up- and
downlink bandwidth (bytes per second) and memory budget (bytes). Profiles are drawn
once per run from the seed: log-normal spread around a nominal phone-class device, and
a fraction ``simulation.stragglers`` of devices ``straggler_slowdown`` times slower in
compute and bandwidth. Virtual time is computed from these profiles and the *real*
message sizes, never from host wall-clock time, so it is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secure_fl.config import SimulationConfig

__all__ = ["DeviceProfile", "draw_profiles"]

_NOMINAL_SPEED = 2_000.0  # training samples per second
_NOMINAL_UP = 1.25e6  # bytes per second (10 Mbit/s)
_NOMINAL_DOWN = 5e6  # bytes per second (40 Mbit/s)
_NOMINAL_MEMORY = 64 * 2**20  # bytes


@dataclass(frozen=True)
class DeviceProfile:
    samples_per_s: float
    up_bytes_per_s: float
    down_bytes_per_s: float
    memory_bytes: int
    straggler: bool

    def train_seconds(self, samples_processed: int) -> float:
        return samples_processed / self.samples_per_s

    def upload_seconds(self, nbytes: int) -> float:
        return nbytes / self.up_bytes_per_s

    def download_seconds(self, nbytes: int) -> float:
        return nbytes / self.down_bytes_per_s


def draw_profiles(num_clients: int, config: SimulationConfig, *, seed: int) -> list[DeviceProfile]:
    """Deterministic device profiles for ``num_clients`` clients."""
    rng = np.random.default_rng([seed, 0xDE71CE])
    spread = rng.lognormal(mean=0.0, sigma=0.25, size=(num_clients, 3))
    n_slow = int(round(config.stragglers * num_clients))
    slow = np.zeros(num_clients, dtype=bool)
    slow[rng.permutation(num_clients)[:n_slow]] = True
    out = []
    for i in range(num_clients):
        factor = config.straggler_slowdown if slow[i] else 1.0
        out.append(
            DeviceProfile(
                samples_per_s=_NOMINAL_SPEED * spread[i, 0] / factor,
                up_bytes_per_s=_NOMINAL_UP * spread[i, 1] / factor,
                down_bytes_per_s=_NOMINAL_DOWN * spread[i, 2] / factor,
                memory_bytes=int(_NOMINAL_MEMORY * spread[i, 0]),
                straggler=bool(slow[i]),
            )
        )
    return out
