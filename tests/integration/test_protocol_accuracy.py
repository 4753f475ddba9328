"""Secure protocols reach the plaintext baseline's accuracy (same seed, same dropouts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_fl import load_config, run

PLAIN = Path(__file__).resolve().parents[1] / "plain.toml"

COMMON = ["clients.num=20", "rounds=15", "train.lr=0.1", "simulation.dropout=0.1", "dp.clip=100.0"]


@pytest.fixture(scope="module")
def plain_accuracy() -> float:
    res = run(load_config(PLAIN, [*COMMON, "protocol=plain"]), write=False, progress=False)
    return float(res.summary["final_accuracy"])


def test_ckks_matches_plain_with_dropouts(plain_accuracy: float) -> None:
    res = run(load_config(PLAIN, [*COMMON, "protocol=ckks"]), write=False, progress=False)
    assert abs(res.summary["final_accuracy"] - plain_accuracy) <= 0.005
    dropped = [c for m in res.metrics for c in m["dropped"].get("upload", [])]
    assert dropped, "the scenario must include dropouts"
    assert all(m["aborted"] is None for m in res.metrics), "dropouts before upload cost nothing"
    # Bytes are counted from the real serialized ciphertexts: ~29 B per value at N = 4096.
    assert res.metrics[0]["upload_bytes_per_client"] > 20 * res.summary["num_parameters"]


def test_secagg_matches_plain_with_dropouts_at_every_stage(plain_accuracy: float) -> None:
    res = run(load_config(PLAIN, [*COMMON, "protocol=secagg"]), write=False, progress=False)
    assert abs(res.summary["final_accuracy"] - plain_accuracy) <= 0.005
    stages = {stage for m in res.metrics for stage, ids in m["dropped"].items() if ids}
    assert len(stages) >= 2, f"dropouts should hit several protocol stages, saw {stages}"
    assert all(m["aborted"] is None for m in res.metrics)
    # Bit-packed at 32 bits: about 4 bytes per coordinate plus O(n) protocol overhead.
    d = res.summary["num_parameters"] + 1  # + the secret weight coordinate
    assert 4 * d <= res.metrics[0]["upload_bytes_per_client"] <= 4 * d + 4096
