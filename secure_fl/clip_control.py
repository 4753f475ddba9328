"""The clip bound of a run: fixed, or adaptive to a target quantile of update norms.

Adaptive clipping follows Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private
Learning with Adaptive Clipping" (NeurIPS 2021). Each aggregation, every client also
reports the centred indicator ``b_i - 1/2`` with ``b_i = [||Delta_i|| <= C]``; the
server obtains the noised count and moves the clip geometrically toward the target
quantile ``gamma``:

    b_tilde = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2
    C <- C * exp(-eta_C * (b_tilde - gamma))

The count is released *inside the same noised vector* as the updates, so it is
protected by the same secure aggregation and the same (distributed) noise. A client
sends ``v_i = [u_i, kappa (b_i - 1/2)]`` with ``||u_i|| <= C`` and
``kappa = z_Delta C / sigma_b``; the mechanism treats ``v_i`` as one vector of L2 norm at
most ``C' = sqrt(C^2 + kappa^2 / 4)`` and adds noise ``z C'`` per coordinate. Because

    z^-2 = z_Delta^-2 + (2 sigma_b)^-2       (Andrew et al., Theorem 1)

the update coordinates carry noise ``z C' = z_Delta C`` and the count coordinate, divided
by ``kappa``, carries noise ``sigma_b``: exactly the two mechanisms of the paper, and the
release as a whole is the Gaussian (or distributed discrete) mechanism with noise
multiplier ``z`` on sensitivity ``C'``, which is what the DP event records. The default
``sigma_b = m / 20`` is the paper's recommendation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from privacy.clipping import (
    AdaptiveClipState,
    adaptive_clip_step,
    clip_indicator,
    clip_l2,
    update_noise_multiplier,
)
from secure_fl.config import RunConfig
from secure_fl.errors import CheckpointError, ConfigError, PrivacyError

__all__ = ["ClipController"]


class ClipController:
    """Holds the current clip bound and, when adaptive, the quantile-tracking state."""

    def __init__(self, config: RunConfig, *, expected_clients: int) -> None:
        dp = config.dp
        self.adaptive = dp.adaptive_clip
        self.noise_multiplier = dp.noise_multiplier
        self._fixed = dp.clip
        self.state: AdaptiveClipState | None = None
        self.z_delta = dp.noise_multiplier
        if not self.adaptive:
            return
        if dp.mechanism == "none" or dp.noise_multiplier <= 0:
            raise ConfigError(
                "adaptive clipping releases a noised count; it needs a DP mechanism with "
                "dp.noise_multiplier > 0 (or dp.target_epsilon)",
                field="dp.adaptive_clip",
            )
        sigma_b = dp.clip_count_stddev or expected_clients / 20.0
        try:
            self.z_delta = update_noise_multiplier(dp.noise_multiplier, count_noise_std=sigma_b)
        except PrivacyError as err:
            raise ConfigError(
                f"{err}: raise dp.clip_count_stddev above {dp.noise_multiplier / 2:.3g} or use "
                "more clients per aggregation",
                field="dp.clip_count_stddev",
            ) from None
        self.state = AdaptiveClipState(
            clip=dp.clip,
            target_quantile=dp.clip_target_quantile,
            learning_rate=dp.clip_learning_rate,
            count_noise_std=sigma_b,
            expected_clients=expected_clients,
        )

    @property
    def clip(self) -> float:
        """The bound ``C`` on each client's update in the current aggregation."""
        return self.state.clip if self.state is not None else self._fixed

    @property
    def kappa(self) -> float:
        """Scale of the indicator coordinate, ``z_Delta C / sigma_b``."""
        if self.state is None:
            return 0.0
        return self.z_delta * self.state.clip / self.state.count_noise_std

    @property
    def mechanism_clip(self) -> float:
        """L2 bound of what a client sends: ``C`` or ``C' = sqrt(C^2 + kappa^2 / 4)``."""
        return math.sqrt(self.clip**2 + self.kappa**2 / 4.0)

    def client_vector(self, delta: npt.ArrayLike, *, weight: float) -> npt.NDArray[np.float64]:
        """``w * clip(delta, C)``, followed by ``kappa (b - 1/2)`` when adaptive."""
        clipped, norm = clip_l2(delta, max_norm=self.clip)
        u = weight * clipped
        if self.state is None:
            return u
        return np.concatenate([u, [self.kappa * clip_indicator(norm, clip=self.clip)]])

    def split(self, total: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], float | None]:
        """Split a decoded noisy sum into (update sum, noisy indicator sum or None)."""
        if self.state is None:
            return total, None
        return total[:-1], float(total[-1]) / self.kappa

    def observe(self, indicator_sum: float, *, num_clients: int) -> float:
        """Update ``C`` from the noisy indicator sum of ``num_clients`` survivors; return
        the estimated fraction ``b_tilde`` of unclipped updates."""
        if self.state is None:
            raise ConfigError("observe() needs adaptive clipping", field="dp.adaptive_clip")
        fraction = indicator_sum / max(1, num_clients) + 0.5
        self.state = adaptive_clip_step(self.state, fraction=fraction)
        return fraction

    def state_dict(self) -> dict[str, Any]:
        """The clip in force and, when adaptive, the quantile-tracking state. The adaptive
        clip is a function of noised counts only (post-processing of DP releases)."""
        return {
            "adaptive": self.adaptive,
            "clip": self.clip,
            "adaptive_state": asdict(self.state) if self.state is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. Only the current clip moves during a run; every
        other adaptive parameter must equal this controller's (it comes from the
        configuration), else :class:`CheckpointError`."""
        if state.get("adaptive") != self.adaptive:
            raise CheckpointError("checkpoint and run disagree on adaptive clipping", field="dp.adaptive_clip")
        if self.state is None:
            if state.get("clip") != self._fixed:
                raise CheckpointError(f"checkpoint clip {state.get('clip')!r} != {self._fixed!r}", field="dp.clip")
            return
        saved = state.get("adaptive_state")
        if not isinstance(saved, dict):
            raise CheckpointError("checkpoint lacks the adaptive clipping state", field="dp.adaptive_clip")
        mine = asdict(self.state)
        for key, value in mine.items():
            if key != "clip" and saved.get(key) != value:
                raise CheckpointError(
                    f"checkpoint adaptive clipping has {key} = {saved.get(key)!r}, this run {value!r}",
                    field="dp.adaptive_clip",
                )
        clip = saved.get("clip")
        if isinstance(clip, bool) or not isinstance(clip, int | float):
            raise CheckpointError("checkpoint adaptive clip is not a number", field="dp.clip")
        try:
            self.state = replace(self.state, clip=float(clip))
        except PrivacyError as err:
            raise CheckpointError(f"checkpoint adaptive clip: {err}", field="dp.clip") from None
