"""The aggregation interface every protocol implements, and the plaintext baseline.

In the style of TensorFlow Federated's aggregators: a factory (:func:`make_aggregator`)
holds validated settings and builds an :class:`Aggregator`; one call to
:meth:`Aggregator.aggregate` runs one aggregation over a cohort and returns an
:class:`AggregateOutcome` (result plus measurements). Every protocol (``plain``,
``secagg``, ``ckks``) computes the same quantity,

    mean = (sum_i w_i * u_i) / (sum_i w_i)      over the clients whose upload arrived,

where ``u_i`` is client i's (clipped) update over the round's public support and
``w_i`` its weight (sample count and/or staleness weight). ``plain`` is the baseline:
the server sees every ``u_i`` in the clear, and says so in the audit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from crypto.prg import Csprng
from privacy.events import DPEvent, NonPrivateEvent
from privacy.mechanisms.gaussian import CentralGaussian
from secure_fl.clip_control import ClipController

__all__ = [
    "AggregateOutcome",
    "Aggregator",
    "ClientUpdate",
    "MessageRecord",
    "PlainAggregator",
]

Vec = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ClientUpdate:
    """What one client contributes to one aggregation (in-process simulation).

    ``drop_stage`` names the protocol stage at which the client goes silent (``None``:
    it completes the protocol). ``weight`` is the FedAvg weight before normalisation.
    """

    client_id: int
    delta: Vec
    weight: float
    drop_stage: str | None = None


@dataclass(frozen=True)
class MessageRecord:
    """Digest of one message the server received: never its content."""

    sender: int
    stage: str
    size: int
    sha256: str


@dataclass(frozen=True)
class AggregateOutcome:
    """Result and measurements of one aggregation.

    ``mean`` is ``None`` when the aggregation was aborted (``aborted`` gives the reason).
    ``dp_event`` is the release as the server sees it (only the noise shares assumed
    honest); ``dp_event_released`` the release of the aggregate to anyone else (every
    noise share present); ``None`` means the same event.
    """

    mean: npt.NDArray[np.float64] | None
    cohort: tuple[int, ...]
    survivors: tuple[int, ...]
    dropped: dict[str, list[int]]
    excluded: dict[int, str]
    upload_bytes: dict[int, int]
    download_bytes: dict[int, int]
    dp_event: DPEvent
    transcript: list[MessageRecord] = field(default_factory=list)
    aborted: str | None = None
    measurements: dict[str, Any] = field(default_factory=dict)
    dp_event_released: DPEvent | None = None


class Aggregator(Protocol):
    """One aggregation protocol. Implementations: plain, secagg, ckks."""

    name: str
    #: Stages at which a simulated client may go silent, in protocol order.
    stages: tuple[str, ...]

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateOutcome:
        """Run one aggregation over ``updates`` (the cohort, including dropouts)."""
        ...

    def planned_event(self, *, num_clients: int | None = None, dim: int | None = None) -> DPEvent:
        """The DP event of *this* aggregation (cohort of ``num_clients``, update
        dimension ``dim``) in which exactly the provisioned number of honest clients
        survive: what a site checks against its budget cap before joining."""
        ...


class PlainAggregator:
    """FedAvg in the clear: the server receives every update as float32 bytes.

    With a ``clipper`` and ``noise_multiplier`` z > 0, the server clips each update
    (fixed or adaptive bound, :class:`secure_fl.clip_control.ClipController`) and adds
    central Gaussian noise ``z C'`` to the weighted sum (the DP-FedAvg baseline of McMahan
    et al. 2018): the *released model* is private, but the server itself saw every update.
    """

    name = "plain"
    stages: tuple[str, ...] = ("upload",)

    def __init__(
        self,
        *,
        clipper: ClipController | None = None,
        noise_multiplier: float = 0.0,
        rng: Csprng | None = None,
    ) -> None:
        if noise_multiplier > 0 and (clipper is None or rng is None):
            raise ValueError("central DP needs a clip bound and a CSPRNG")
        self.clipper = clipper
        self.noise_multiplier = noise_multiplier
        self.rng = rng

    def _mechanism(self) -> CentralGaussian | None:
        if self.clipper is None or self.noise_multiplier <= 0:
            return None
        return CentralGaussian(
            clip=self.clipper.mechanism_clip, noise_multiplier=self.noise_multiplier
        )

    def planned_event(self, *, num_clients: int | None = None, dim: int | None = None) -> DPEvent:
        mech = self._mechanism()
        return mech.event() if mech is not None else NonPrivateEvent()

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateOutcome:
        cohort = tuple(u.client_id for u in updates)
        arrived = [u for u in updates if u.drop_stage is None]
        dropped = {"upload": sorted(u.client_id for u in updates if u.drop_stage is not None)}
        upload: dict[int, int] = {}
        transcript: list[MessageRecord] = []
        total: npt.NDArray[np.float64] | None = None
        weight_sum = 0.0
        for u in arrived:
            payload = np.ascontiguousarray(u.delta, dtype=np.float32).tobytes()
            upload[u.client_id] = len(payload)
            transcript.append(
                MessageRecord(
                    u.client_id, "upload", len(payload), hashlib.sha256(payload).hexdigest()
                )
            )
            if self.clipper is not None:
                contrib = self.clipper.client_vector(u.delta, weight=u.weight)
            else:
                contrib = u.weight * u.delta.astype(np.float64)
            total = contrib if total is None else total + contrib
            weight_sum += u.weight
        if total is None or weight_sum <= 0:
            return AggregateOutcome(
                None,
                cohort,
                (),
                dropped,
                {},
                upload,
                {},
                NonPrivateEvent(),
                transcript,
                aborted="no client update arrived",
            )
        event: DPEvent = NonPrivateEvent()
        mech = self._mechanism()
        measurements: dict[str, Any] = {}
        if mech is not None and self.rng is not None:
            total = mech.add_noise(total, rng=self.rng)
            event = mech.event()
        if self.clipper is not None:
            measurements["clip"] = self.clipper.clip
            total, indicator_sum = self.clipper.split(total)
            if indicator_sum is not None:
                measurements["unclipped_fraction"] = self.clipper.observe(
                    indicator_sum, num_clients=len(arrived)
                )
        return AggregateOutcome(
            mean=total / weight_sum,
            cohort=cohort,
            survivors=tuple(sorted(u.client_id for u in arrived)),
            dropped=dropped,
            excluded={},
            upload_bytes=upload,
            download_bytes={},
            dp_event=event,
            transcript=transcript,
            measurements=measurements,
        )
