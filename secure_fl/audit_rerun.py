"""The secure-fl side of ``secure-fl audit``: a :class:`audits.replay.JobReplay` for a
run directory written by :func:`secure_fl.run`.

``audits`` checks run directories without importing ``secure_fl`` (docs/architecture.md:
``secure_fl -> audits``, never the reverse). Its empirical tests need to re-run a small
version of the job, evaluate the released model and take one SGD step on one record;
:class:`RunReplay` does that with the runner's own building blocks (the run's
``config.toml``, :func:`~secure_fl.data.load_federated_data`,
:func:`~secure_fl.models.build_model`, :func:`~secure_fl.training.train_local`,
:func:`~secure_fl.runner.make_aggregator`, :class:`~secure_fl.server_opt.ServerOptimizer`)
and :func:`audit_main` passes it to :func:`audits.cli.audit_main`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from audits.cli import audit_main as _audits_main
from audits.empirical import EmpiricalError
from audits.replay import CanaryRerun, JobFacts, Records
from crypto.prg import Csprng
from privacy.events import DPEvent
from secure_fl.aggregation import ClientUpdate
from secure_fl.config import RunConfig, load_config
from secure_fl.data import FederatedData, load_federated_data
from secure_fl.errors import ConfigError
from secure_fl.models import build_model, get_flat, num_parameters, set_flat
from secure_fl.runner import make_aggregator
from secure_fl.server_opt import ServerOptimizer
from secure_fl.training import train_local

__all__ = ["RunReplay", "audit_main"]

Vec = npt.NDArray[np.float64]


class RunReplay:
    """Replays the job of one secure-fl run directory (see :class:`audits.replay.JobReplay`)."""

    def __init__(self, run_dir: Path) -> None:
        self.root = Path(run_dir)
        path = self.root / "config.toml"
        if not path.is_file():
            raise EmpiricalError("config.toml is missing", location=str(path))
        try:
            config = load_config(path)
        except ConfigError as exc:
            raise EmpiricalError(f"config.toml does not load: {exc}", location=str(path)) from exc
        if config.sparsity.kind != "none":  # the canary re-run uses the full support
            config = config.model_copy(update={"sparsity": config.sparsity.model_copy(update={"kind": "none"})})
        self.config: RunConfig = config
        self.data: FederatedData = load_federated_data(config)
        model = self._initial_model()
        self._w0 = get_flat(model).astype(np.float64)
        self._released: nn.Module | None = None
        self._facts = JobFacts(
            protocol=config.protocol,
            mechanism=config.dp.mechanism,
            clip=float(config.dp.clip),
            noise_multiplier=float(config.dp.noise_multiplier),
            bits=int(config.secagg.bits),
            num_clients=config.clients.num,
            cohort_size=config.cohort_size,
            rounds=config.aggregations,
            lr=float(config.train.lr),
            reproducible_noise=bool(config.simulation.reproducible_noise),
            dimension=num_parameters(model),
            feature_shape=tuple(int(s) for s in self.data.feature_shape),
            sparsity=config.sparsity.kind,
            aggregation_mode=config.aggregation.mode,
        )

    @property
    def facts(self) -> JobFacts:
        return self._facts

    # -- models ---------------------------------------------------------------------
    def _fresh_model(self) -> nn.Module:
        model: nn.Module = build_model(self.config.model, self.data.feature_shape, self.data.num_classes)
        return model

    def _initial_model(self) -> nn.Module:
        torch.manual_seed(self.config.seed)  # the runner's initialisation
        return self._fresh_model()

    def _released_model(self) -> nn.Module:
        if self._released is None:
            model = self._initial_model()
            path = self.root / "model.pt"
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except (OSError, RuntimeError, KeyError) as exc:
                raise EmpiricalError(f"cannot load the released model: {exc}", location=str(path)) from exc
            self._released = model
        return self._released

    @staticmethod
    def _losses(model: nn.Module, records: Records) -> Vec:
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(records.x)))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(records.y), reduction="none")
        result: Vec = loss.double().numpy()
        return result

    # -- canary re-run --------------------------------------------------------------
    def canary_rerun(
        self, canaries: Sequence[Sequence[tuple[int, Vec]]], *, real_clients: int, seed: int
    ) -> CanaryRerun:
        config, data = self.config, self.data
        rng = np.random.default_rng([seed, 0xCA9A])  # simulation randomness: cohorts, batch order
        model = self._initial_model()
        privacy_rng = Csprng(bytes(32)) if config.simulation.reproducible_noise else Csprng.from_entropy()
        aggregator = make_aggregator(config, dim=self._w0.size, rng=privacy_rng)
        server = ServerOptimizer(config.server)
        weights = self._w0.copy()
        events: list[DPEvent] = []
        m_real = max(1, min(real_clients, len(data.clients)))
        for version, inserted in enumerate(canaries, start=1):
            cohort = rng.choice(len(data.clients), size=m_real, replace=False)
            updates = []
            for cid in cohort:
                client = data.clients[int(cid)]
                set_flat(model, weights.astype(np.float32))
                train_local(model, client.x_train, client.y_train, config.train, seed=int(rng.integers(2**31)))
                delta_w = get_flat(model).astype(np.float64) - weights
                updates.append(ClientUpdate(int(cid), delta_w.astype(np.float32), 1.0))
            updates += [ClientUpdate(int(cid), np.asarray(u, dtype=np.float32), 1.0) for cid, u in inserted]
            order = rng.permutation(len(updates))
            outcome = aggregator.aggregate([updates[i] for i in order], round_index=version)
            if outcome.mean is None:
                continue
            events.append(outcome.dp_event)
            weights = server.step(weights, outcome.mean)
        return CanaryRerun(self._w0.copy(), weights, tuple(events), len(events))

    # -- membership inference -------------------------------------------------------
    def member_records(self) -> Records:
        clients = [c for c in self.data.clients if c.num_train]
        return Records(np.concatenate([c.x_train for c in clients]), np.concatenate([c.y_train for c in clients]))

    def nonmember_records(self) -> Records:
        data = self.data
        held = [c for c in data.clients if c.y_test.size]
        return Records(
            np.concatenate([data.x_test, *[c.x_test for c in held]]),
            np.concatenate([data.y_test, *[c.y_test for c in held]]),
        )

    def released_losses(self, records: Records) -> Vec:
        return self._losses(self._released_model(), records)

    def reference_losses(
        self, train: Records, evaluate: Sequence[Records], *, epochs: int, seed: int
    ) -> list[Vec]:
        torch.manual_seed(seed)
        model = self._fresh_model()
        train_cfg = self.config.train.model_copy(update={"local_epochs": epochs})
        train_local(model, train.x, train.y, train_cfg, seed=seed + 1)
        return [self._losses(model, r) for r in evaluate]

    # -- gradient inversion ---------------------------------------------------------
    def first_linear_layer(self) -> tuple[int, int] | None:
        model = self._fresh_model()
        params = [p for p in model.parameters() if p.requires_grad]
        first = next((m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv1d)), None)
        if not isinstance(first, nn.Linear) or first.bias is None or params[0] is not first.weight:
            return None
        return int(first.out_features), int(first.in_features)

    def first_records(self, count: int) -> list[tuple[npt.NDArray[np.float32], int]]:
        clients = [c for c in self.data.clients if c.num_train][:count]
        return [(np.asarray(c.x_train[0], dtype=np.float32).reshape(-1), int(c.y_train[0])) for c in clients]

    def one_step_update(self, x: npt.NDArray[np.float32], y: int) -> Vec:
        try:
            start = self._released_model()
        except EmpiricalError:
            start = self._initial_model()  # as good a starting point for the attack
        model = self._fresh_model()
        model.load_state_dict(start.state_dict())
        before = get_flat(model).astype(np.float64)
        model.train()
        shaped = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(1, *self.data.feature_shape))
        loss = torch.nn.functional.cross_entropy(model(shaped), torch.tensor([int(y)]))
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(self.config.train.lr * g)
        result: Vec = get_flat(model).astype(np.float64) - before
        return result


def audit_main(argv: Sequence[str] | None = None) -> int:
    """``secure-fl audit``: :func:`audits.cli.audit_main` with this run's replay."""
    return _audits_main(argv, replay=RunReplay)
