"""Issue 16 section 7: the Python API for people who bring their own data, loss and model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import secure_fl


def _sites(n_sites: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_sites):
        x = rng.normal(size=(60, 5)).astype(np.float32)
        out.append((x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)))
    return out


def test_run_with_own_arrays_datasets_loss_and_model() -> None:
    sites: list[object] = list(_sites(2))
    x3 = torch.randn(50, 5)
    sites.append(torch.utils.data.TensorDataset(x3, (x3[:, 0] > 0).long()))
    calls = {"n": 0}
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return ce(logits, target)

    config = secure_fl.load_config(
        None, ["clients.num=3", "rounds=2", "train.local_epochs=1", "secagg.bits=24"]
    )
    result = secure_fl.run(
        config,
        sites=sites,
        loss_fn=loss_fn,
        model_fn=lambda shape, k: nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), k)),
        write=False,
        progress=False,
    )
    assert calls["n"] > 0
    assert result.summary["num_parameters"] == 5 * 2 + 2
    assert result.summary["data_source"] == "python (3 sites)"
    assert result.summary["protocol"] == "secagg" and result.summary["epsilon"] is not None


def test_run_rejects_a_site_count_that_does_not_match() -> None:
    config = secure_fl.load_config(None, ["clients.num=4", "rounds=1"])
    with pytest.raises(secure_fl.ConfigError, match="set clients.num = 3"):
        secure_fl.run(config, sites=_sites(3), write=False, progress=False)


def test_derive_a_config_with_validation() -> None:
    config = secure_fl.load_config()
    with pytest.raises(secure_fl.ConfigError, match="rounds"):
        config.model_copy(update={"rounds": 0})
    assert config.with_overrides(["rounds=2"]).rounds == 2


def test_runs_use_one_torch_thread_and_restore_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many small models on busy cores: OpenMP's spinning threads made the finance example
    # 13x more CPU-hungry (129 s against 9 s); a run trains single-threaded unless the
    # user's OMP_NUM_THREADS says otherwise.
    import secure_fl.runner as runner_mod

    seen: list[int] = []

    def fake_run(config: object, **kwargs: object) -> None:
        seen.append(torch.get_num_threads())

    monkeypatch.setattr(runner_mod, "_run", fake_run)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        runner_mod.run(secure_fl.load_config())
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        runner_mod.run(secure_fl.load_config())
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
