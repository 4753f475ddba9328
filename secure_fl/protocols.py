"""One-call, in-memory aggregators (``secagg``, ``ckks``) behind the
:class:`~secure_fl.aggregation.Aggregator` interface.

Runs do not use these: ``secure-fl run`` and the Flower apps run the federated engine
(:mod:`secure_fl.engine`, message by message). These objects compute the same quantity
in one call over a list of updates, with :func:`crypto.secagg.simulate_round` /
:func:`crypto.ckks.simulate_ckks_round`; they serve the audit's re-run
(:mod:`secure_fl.audit_rerun`), the sweep's up-front validation and the benchmarks.
The noise provisioning they use is the engine's (:mod:`secure_fl.engine.public`).

Client side, for each cohort member i (all in the member's own process in a deployment;
in-process here):

    u_i = w_i * clip_l2(delta_i, C)                          (w_i <= 1: FedAvg x staleness)
    [adaptive clipping: u_i gets one more coordinate, the scaled clip indicator]
    secagg, no DP:   encode [u_i, w_i] into Z_2^b            (weight secure-summed too)
    secagg, DDG/Sk:  rotate, scale, round, + integer noise share, mod 2^b   (privacy/)
    ckks,   no DP:   encrypt [u_i, w_i]
    ckks,   Gaussian: encrypt u_i + N(0, (z C)^2 / h)

Noise provisioning against colluders: ``h = provisioned survivors - c`` with
``c = threat.max_colluders`` (clients assumed to collude with the server and subtract
their own shares). Each share is sized so that ``h`` honest shares alone carry the
target variance ``(z C)^2``. An aggregation with ``s`` survivors emits two events: the
one against the server counts ``s - c`` shares (``NonPrivateEvent`` when none is
left); the one for the released model counts all ``s``. Neighbouring relation:
zero-out (the target's vector is replaced by zero, its noise share stays).

Server side: a secure sum of those vectors (masked sum mod 2^b, or ciphertext sum
decrypted only as an aggregate by the key holder), divided by the sum of weights (secret
weights travel as the last coordinate; under DP the weights are public staleness
weights and the denominator is their public sum). The server never holds an individual
update: it receives masked vectors or ciphertexts only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from crypto.ckks import CkksParams, KeyHolder, simulate_ckks_round
from crypto.errors import LocalProtocolError, ProtocolError
from crypto.fixedpoint import decode, encode, max_scale
from crypto.prg import Csprng
from crypto.secagg import simulate_round
from crypto.secagg.graph import effective_degree
from crypto.secagg.parameters import secagg_parameters
from crypto.signatures import generate_identity
from privacy.events import DPEvent, NonPrivateEvent
from privacy.mechanisms.distributed import DistributedDiscreteGaussian, DistributedSkellam
from privacy.mechanisms.gaussian import GaussianShare
from secure_fl.aggregation import AggregateOutcome, ClientUpdate, MessageRecord
from secure_fl.client_encode import EncodeJob
from secure_fl.clip_control import ClipController
from secure_fl.config import RunConfig
from secure_fl.engine.public import (
    check_colluder_provisioning,
    honest_provisioned_shares,
    honest_shares,
    provisioned_survivors,
)
from secure_fl.identities import ClientIdentities

__all__ = [
    "CkksAggregator",
    "SecAggAggregator",
    "check_colluder_provisioning",
    "honest_provisioned_shares",
    "honest_shares",
    "provisioned_survivors",
]

Vec = npt.NDArray[np.float64]


def _aborted(
    updates: Sequence[ClientUpdate], reason: str, dropped: dict[str, list[int]]
) -> AggregateOutcome:
    return AggregateOutcome(
        mean=None,
        cohort=tuple(u.client_id for u in updates),
        survivors=(),
        dropped=dropped,
        excluded={},
        upload_bytes={},
        download_bytes={},
        dp_event=NonPrivateEvent(),
        aborted=reason,
    )


class CkksAggregator:
    """Additively homomorphic aggregation under CKKS (TenSEAL via :mod:`crypto.ckks`).

    A fresh key pair per aggregation: the key holder generates it and publishes the
    public context signed with its identity (which the clients pin); clients encrypt and
    sign a receipt (session, round, key id, SHA-256 of the upload) with their identity
    keys; the server adds ciphertexts with the public context only and forwards the
    aggregate with the receipts; the key holder counts the distinct roster members'
    receipts itself and decrypts the aggregate alone, once (:mod:`crypto.ckks`).
    Dropouts before upload cost nothing: the sum simply has fewer summands.
    """

    name = "ckks"
    stages: tuple[str, ...] = ("upload",)

    def __init__(
        self, config: RunConfig, *, dim: int, rng: Csprng, identities: ClientIdentities | None = None
    ) -> None:
        self.config = config
        self.dim = dim
        self.rng = rng
        self.params = CkksParams(poly_modulus_degree=config.ckks.poly_modulus_degree)
        #: The clients' identity keys (their receipts are what the key holder counts) and
        #: the key holder's own identity, which every client pins.
        self.identities = identities or ClientIdentities.generate(range(config.clients.num))
        self._holder_identity = generate_identity(Csprng.from_entropy())
        self.clipper = ClipController(config, expected_clients=config.cohort_size)
        self.dp = config.dp.mechanism == "gaussian"
        self.threshold = (
            honest_provisioned_shares(config, config.cohort_size) if self.dp else 1
        )

    @property
    def mechanism(self) -> GaussianShare | None:
        """This aggregation's noise shares (the clip may adapt between aggregations)."""
        if not self.dp:
            return None
        return GaussianShare(
            clip=self.clipper.mechanism_clip,
            noise_multiplier=self.config.dp.noise_multiplier,
            threshold=self.threshold,
        )

    def planned_event(self, *, num_clients: int | None = None, dim: int | None = None) -> DPEvent:
        """The event against the server when exactly the provisioned honest shares
        remain (the clip is this aggregation's: it adapts between aggregations)."""
        mech = self.mechanism
        if mech is None:
            return NonPrivateEvent()
        return mech.event(num_survivors=mech.threshold)

    def _events(self, mech: GaussianShare, survivors: int) -> tuple[DPEvent, DPEvent]:
        """(against the server: honest shares only; released model: every share)."""
        honest = honest_shares(self.config, survivors)
        against = mech.event(num_survivors=honest) if honest >= 1 else NonPrivateEvent()
        return against, mech.event(num_survivors=survivors)

    def _encode(self, update: ClientUpdate, mech: GaussianShare | None) -> Vec:
        v = self.clipper.client_vector(update.delta, weight=update.weight)
        if mech is not None:
            return mech.client_encode(v, rng=self.rng)
        return np.concatenate([v, [update.weight]])

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateOutcome:
        dropped = {"upload": sorted(u.client_id for u in updates if u.drop_stage is not None)}
        mech = self.mechanism
        clip_used = self.clipper.clip
        inputs = [self._encode(u, mech) for u in updates]
        drop = [i for i, u in enumerate(updates) if u.drop_stage is not None]
        # Encoded values are bounded by max(C', 1) (|w u_j| <= C', weight w <= 1); noise
        # can push a coordinate further, so the encoding bound leaves room for it.
        bound = max(self.clipper.mechanism_clip, 1.0)
        if mech is not None:
            bound += 8.0 * mech.local_std
        try:
            res = simulate_ckks_round(
                inputs,
                params=self.params,
                bound=bound,
                drop=drop,
                key_holder=KeyHolder.generate(
                    self.params,
                    members=list(self.identities.public_keys().values()),
                    identity_key=self._holder_identity,
                ),
                client_keys=[self.identities.key(u.client_id) for u in updates],
                round=round_index,
            )
        except ProtocolError as err:
            return _aborted(updates, f"{type(err).__name__}: {err}", dropped)
        ids = [u.client_id for u in updates]
        survivors = tuple(sorted(ids[i] for i in res.survivors))
        total = np.asarray(res.total, dtype=np.float64)
        event: DPEvent
        released: DPEvent
        measurements: dict[str, Any] = {"aggregate_bytes": res.aggregate_bytes, "clip": clip_used}
        if mech is not None:
            weight_sum = sum(updates[i].weight for i in res.survivors)  # public staleness weights
            upd, indicator_sum = self.clipper.split(total)
            mean = upd / weight_sum
            event, released = self._events(mech, len(res.survivors))
            if indicator_sum is not None:
                measurements["unclipped_fraction"] = self.clipper.observe(
                    indicator_sum, num_clients=len(res.survivors)
                )
        else:
            weight_sum = float(total[-1])
            mean = total[:-1] / weight_sum
            event = released = NonPrivateEvent()
        return AggregateOutcome(
            mean=mean,
            cohort=tuple(ids),
            survivors=survivors,
            dropped=dropped,
            excluded={ids[i]: reason for i, reason in res.excluded.items()},
            upload_bytes={ids[i]: n for i, n in res.upload_bytes.items()},
            download_bytes={c: res.public_context_bytes for c in ids},
            dp_event=event,
            dp_event_released=released,
            transcript=[
                MessageRecord(ids[i], "upload", n, res.upload_sha256[i])
                for i, n in sorted(res.upload_bytes.items())
            ],
            measurements=measurements,
        )


class SecAggAggregator:
    """Pairwise-masking secure aggregation (SecAgg / SecAgg+, :mod:`crypto.secagg`).

    Without DP, each client encodes ``[w u, w]`` into Z_2^b at the largest scale whose
    sum cannot wrap (:func:`crypto.fixedpoint.max_scale` with ``max_abs = max(C, 1)``).
    With ``discrete_gaussian`` / ``skellam``, each client runs the distributed mechanism
    of :mod:`privacy.mechanisms.distributed` (rotation with the public round seed,
    scaling, conditional rounding, integer noise share, mod 2^b). Either way the server
    only ever holds masked vectors and their running sum.
    """

    name = "secagg"
    stages: tuple[str, ...] = ("advertise", "share_keys", "masked_input", "unmask")

    def __init__(self, config: RunConfig, *, dim: int, rng: Csprng) -> None:
        self.config = config
        self.dim = dim
        self.rng = rng
        self.bits = config.secagg.bits
        n_expected = (
            config.buffer_size if config.aggregation.mode == "async" else config.cohort_size
        )
        self.clipper = ClipController(config, expected_clients=n_expected)
        self._mechanisms: dict[
            tuple[int, int, float], DistributedDiscreteGaussian | DistributedSkellam
        ] = {}
        #: Called with (client id, masked vector, bits) for every masked upload the server
        #: decodes: the server's own view, recorded (as histograms) for the audit.
        self.on_masked_upload: (
            Callable[[int, npt.NDArray[np.unsignedinteger], int], None] | None
        ) = None
        #: Runs clients' DP encodings (set by the runner to its worker pool's map).
        self.client_map: Callable[[list[EncodeJob]], list[npt.NDArray[np.uint32]]] | None = None

    # -- parameters of one cohort ------------------------------------------------------
    def _graph(self, n: int) -> tuple[int | None, int]:
        """(neighbors argument, threshold t) for a cohort of ``n`` clients and
        ``c = threat.max_colluders``: :func:`crypto.secagg.parameters.secagg_parameters`
        (raises :class:`~crypto.errors.LocalProtocolError` if no admissible t exists)."""
        k = self.config.secagg.neighbors
        t = self.config.secagg.threshold
        if t is not None:  # a cohort smaller than configured (async buffer): cap t at k + 1
            t = min(t, effective_degree(n, None if k is None or k >= n - 1 else k) + 1)
        params = secagg_parameters(n, max_colluders=self.config.threat.max_colluders, threshold=t, neighbors=k)
        return params.neighbors, params.threshold

    def _mechanism(
        self, *, dim: int, n: int
    ) -> DistributedDiscreteGaussian | DistributedSkellam | None:
        dp = self.config.dp
        if dp.mechanism not in ("discrete_gaussian", "skellam"):
            return None
        cls = (
            DistributedDiscreteGaussian
            if dp.mechanism == "discrete_gaussian"
            else DistributedSkellam
        )
        provisioned = honest_provisioned_shares(self.config, n)
        clip = self.clipper.mechanism_clip
        key = (dim, n, clip)
        cached = self._mechanisms.get(key)
        if cached is not None:
            return cached
        mech = cls.create(
            dim=dim,
            clip=clip,
            bits=self.bits,
            noise_multiplier=dp.noise_multiplier,
            num_clients=n,
            threshold=provisioned,
        )
        if len(self._mechanisms) > 64:
            self._mechanisms.clear()
        self._mechanisms[key] = mech
        return mech

    def planned_event(self, *, num_clients: int | None = None, dim: int | None = None) -> DPEvent:
        """The event against the server of *this* aggregation when exactly the
        provisioned honest shares remain: its cohort size ``num_clients``, its update
        dimension ``dim`` (the public support) and the clip bound now in force (never
        the previous aggregation's mechanism)."""
        n = max(2, num_clients or (
            self.config.buffer_size if self.config.aggregation.mode == "async" else self.config.cohort_size
        ))
        mech = self._mechanism(dim=(dim or self.dim) + (1 if self.clipper.adaptive else 0), n=n)
        if mech is None:
            return NonPrivateEvent()
        return mech.event(num_survivors=mech.threshold)

    def _events(
        self, mech: DistributedDiscreteGaussian | DistributedSkellam, survivors: int
    ) -> tuple[DPEvent, DPEvent]:
        """(against the server: honest shares only; released model: every share)."""
        honest = honest_shares(self.config, survivors)
        against = mech.event(num_survivors=honest) if honest >= 1 else NonPrivateEvent()
        return against, mech.event(num_survivors=survivors)

    def _encode_clients(
        self,
        mech: DistributedDiscreteGaussian | DistributedSkellam,
        updates: Sequence[ClientUpdate],
        round_seed: bytes,
    ) -> list[npt.NDArray[np.uint32]]:
        """Each client's DP encoding; through :attr:`client_map` (a worker pool) when set,
        each client then using its own CSPRNG keyed from :attr:`rng` in cohort order."""
        vectors = [self.clipper.client_vector(u.delta, weight=u.weight) for u in updates]
        if self.client_map is None:
            return [mech.client_encode(v, round_seed=round_seed, rng=self.rng) for v in vectors]
        jobs = [EncodeJob(mech, v, round_seed, self.rng.random_bytes(32)) for v in vectors]
        return self.client_map(jobs)

    # -- one aggregation ---------------------------------------------------------------
    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateOutcome:
        ids = [u.client_id for u in updates]
        n = len(updates)
        if n < 2:
            return _aborted(updates, "secure aggregation needs at least 2 clients", {})
        dim = int(updates[0].delta.size) + (1 if self.clipper.adaptive else 0)
        try:
            neighbors, t = self._graph(n)
        except LocalProtocolError as err:
            return _aborted(updates, f"secure aggregation parameters: {err}", {})
        mech = self._mechanism(dim=dim, n=n)
        clip_used = self.clipper.clip
        round_seed = self.rng.random_bytes(32)  # public: announced in the cohort set-up
        scale = 0.0
        if mech is None:
            scale = max_scale(num_summands=n, max_abs=max(self.clipper.clip, 1.0), bits=self.bits)
            inputs = [
                encode(
                    np.concatenate(
                        [self.clipper.client_vector(u.delta, weight=u.weight), [u.weight]]
                    ),
                    scale=scale,
                    bits=self.bits,
                    rng=self.rng,
                )
                for u in updates
            ]
        else:
            inputs = self._encode_clients(mech, updates, round_seed)
        drop = {i: u.drop_stage for i, u in enumerate(updates) if u.drop_stage is not None}
        correlations: list[float] = []

        def observe(i: int, masked: npt.NDArray[np.unsignedinteger]) -> None:
            if self.on_masked_upload is not None:
                self.on_masked_upload(ids[i], masked, self.bits)
            # Simulation-only check (the simulator knows the true encoded input): the
            # masked vector must be uncorrelated with it. Only the scalar is recorded.
            a, b = masked.astype(np.float64), np.asarray(inputs[i], dtype=np.float64)
            if a.std() > 0 and b.std() > 0:
                correlations.append(abs(float(np.corrcoef(a, b)[0, 1])))

        try:
            res = simulate_round(
                inputs,
                bits=self.bits,
                threshold=t,
                neighbors=neighbors,
                drop=drop,
                seed=self.rng.random_bytes(32),
                observer=observe,
                max_colluders=self.config.threat.max_colluders,
            )
        except ProtocolError as err:
            dropped = {
                stage: sorted(ids[i] for i, s in drop.items() if s == stage)
                for stage in self.stages
            }
            return _aborted(updates, f"{type(err).__name__}: {err}", dropped)
        survivors = [ids[i] for i in res.survivors]
        unclipped: float | None = None
        event: DPEvent
        released: DPEvent
        if mech is None:
            total = decode(res.total, scale=scale, bits=self.bits)
            mean = total[:-1] / total[-1]
            event = released = NonPrivateEvent()
        else:
            decoded = mech.server_decode(res.total, round_seed=round_seed)
            weight_sum = sum(updates[i].weight for i in res.survivors)  # public staleness weights
            upd, indicator_sum = self.clipper.split(decoded)
            mean = upd / weight_sum
            event, released = self._events(mech, len(res.survivors))
            if indicator_sum is not None:
                unclipped = self.clipper.observe(indicator_sum, num_clients=len(res.survivors))
        return AggregateOutcome(
            mean=mean,
            cohort=tuple(ids),
            survivors=tuple(sorted(survivors)),
            dropped={stage: sorted(ids[i] for i in idx) for stage, idx in res.dropped.items()},
            excluded={
                ids[i]: reason for i, reason in {**res.excluded, **res.client_errors}.items()
            },
            upload_bytes={ids[i]: b for i, b in res.upload_bytes.items()},
            download_bytes={ids[i]: b for i, b in res.download_bytes.items()},
            dp_event=event,
            dp_event_released=released,
            transcript=[
                MessageRecord(ids[r.sender], r.stage, r.size, r.sha256) for r in res.transcript
            ],
            measurements={
                "threshold": t,
                "neighbors": neighbors,
                "bits": self.bits,
                "wrap_probability": mech.wrap_probability if mech is not None else 0.0,
                "round_seed": round_seed.hex(),
                "clip": clip_used,
                "unclipped_fraction": unclipped,
                "max_abs_corr_masked_vs_true": max(correlations, default=0.0),
            },
        )
