"""transcript.json: round trip, strict loading, digest, top-bit histograms, uniformity test."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audits.errors import TranscriptError
from audits.transcript import (
    HISTOGRAM_BINS,
    TRANSCRIPT_FILENAME,
    TranscriptWriter,
    load_transcript,
    top_bits_histogram,
    transcript_digest,
    uniformity_test,
)

BITS = 16


@dataclass(frozen=True)
class Message:  # the shape of secure_fl.aggregation.MessageRecord
    sender: int
    stage: str
    size: int
    sha256: str


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def build(tmp_path: Path) -> tuple[TranscriptWriter, Path, str, list[np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(1234)
    writer = TranscriptWriter("secagg")
    uploads = []
    for version in range(2):
        msgs = [Message(s, "masked_input", 2 * 500, digest(bytes([s, version]))) for s in (1, 2, 3)]
        writer.add_messages(msgs, version=version)
        for sender in (1, 2, 3):
            masked = rng.integers(0, 2**BITS, size=500, dtype=np.uint64)
            uploads.append(masked)
            writer.observe_masked_upload(version=version, sender=sender, masked=masked, bits=BITS)
        writer.add_statistic(version=version, name="max_abs_corr", value=0.05 + version / 100)
    writer.add_message(version=2, sender=4, stage="advertise", size=64, sha256=digest(b"k"))
    path = tmp_path / TRANSCRIPT_FILENAME
    written_digest = writer.write(path)
    return writer, path, written_digest, uploads


def test_round_trip_and_digest(tmp_path: Path) -> None:
    writer, path, written_digest, uploads = build(tmp_path)
    loaded = load_transcript(path)
    assert loaded == writer.transcript()
    assert loaded.protocol == "secagg" and len(loaded.records) == 7
    assert [a.version for a in loaded.aggregations] == [0, 1]
    agg = loaded.aggregations[0]
    assert agg.field_bits == BITS and agg.coordinates == 1500
    assert agg.statistics == {"max_abs_corr": 0.05}
    assert agg.top4_histogram == tuple(
        sum(u.top4_histogram[i] for u in agg.uploads) for i in range(16)
    )
    assert (
        transcript_digest(path) == written_digest == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    # Writing again is deterministic, so the anchored digest is reproducible.
    assert writer.write(tmp_path / "again.json") == written_digest

    # No vector is stored: apart from the record list, no list is longer than 16 bins.
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            assert len(node) <= HISTOGRAM_BINS
            for value in node:
                walk(value)

    doc = json.loads(path.read_text())
    assert len(doc.pop("records")) == 7
    walk(doc)
    assert len(uploads) == 6 and uploads[0].size == 500


def test_digest_changes_with_content(tmp_path: Path) -> None:
    _, path, written_digest, _ = build(tmp_path)
    doc = json.loads(path.read_text())
    doc["records"][0]["size"] += 1
    path.write_text(json.dumps(doc))
    assert transcript_digest(path) != written_digest


Mutation = Callable[[dict[str, Any]], None]


def _set(path: list[Any], value: Any) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


def _delete(path: list[Any]) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return apply


@pytest.mark.parametrize(
    ("mutate", "location"),
    [
        (_set(["format"], "other"), "$.format"),
        (_set(["format_version"], 2), "$.format_version"),
        (_delete(["protocol"]), "$"),
        (_set(["surprise"], 1), "$"),
        (_set(["records", 1, "sha256"], "XYZ"), "$.records[1].sha256"),
        (_set(["records", 2, "size"], -1), "$.records[2].size"),
        (_set(["records", 2, "size"], True), "$.records[2].size"),
        (_set(["records", 0, "stage"], ""), "$.records[0].stage"),
        (_delete(["records", 0, "version"]), "$.records[0]"),
        (
            _set(["aggregations", 0, "uploads", 1, "top4_histogram"], [1] * 15),
            "$.aggregations[0].uploads[1].top4_histogram",
        ),
        (
            _set(["aggregations", 0, "uploads", 1, "coordinates"], 499),
            "$.aggregations[0].uploads[1].top4_histogram",
        ),
        (_set(["aggregations", 1, "coordinates"], 1), "$.aggregations[1].coordinates"),
        (_set(["aggregations", 1, "version"], 0), "$.aggregations[1].version"),
        (_set(["aggregations", 0, "field_bits"], 2), "$.aggregations[0].field_bits"),
        (_set(["aggregations", 0, "statistics", "x"], "high"), "$.aggregations[0].statistics.x"),
    ],
)
def test_malformed_transcript_rejected_with_location(
    tmp_path: Path, mutate: Mutation, location: str
) -> None:
    _, path, _, _ = build(tmp_path)
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(TranscriptError) as info:
        load_transcript(path)
    assert info.value.location == location


def test_aggregate_histogram_must_be_sum_of_uploads(tmp_path: Path) -> None:
    _, path, _, _ = build(tmp_path)
    doc = json.loads(path.read_text())
    hist = doc["aggregations"][0]["top4_histogram"]
    hist[0], hist[1] = hist[0] + 1, hist[1] - 1  # same total, different shape
    path.write_text(json.dumps(doc))
    with pytest.raises(TranscriptError, match="sum of the uploads"):
        load_transcript(path)


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"\xff\xfe", b"[]", b'{"a": NaN}', b'{"format": 1, "format": 2}'],
)
def test_invalid_documents_rejected(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / TRANSCRIPT_FILENAME
    path.write_bytes(raw)
    with pytest.raises(TranscriptError):
        load_transcript(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TranscriptError):
        load_transcript(tmp_path / "none.json")
    with pytest.raises(TranscriptError):
        transcript_digest(tmp_path / "none.json")


def test_writer_validates_inputs() -> None:
    writer = TranscriptWriter("secagg")
    with pytest.raises(TranscriptError):
        writer.add_message(version=0, sender=1, stage="x", size=1, sha256="00")
    with pytest.raises(TranscriptError):
        writer.add_message(version=-1, sender=1, stage="x", size=1, sha256="0" * 64)
    with pytest.raises(TranscriptError):
        writer.add_statistic(version=0, name="c", value=float("nan"))
    writer.observe_masked_upload(version=0, sender=1, masked=np.zeros(4, dtype=np.uint16), bits=16)
    with pytest.raises(TranscriptError, match="16 bits"):
        writer.observe_masked_upload(
            version=0, sender=2, masked=np.zeros(4, dtype=np.uint32), bits=32
        )
    with pytest.raises(TranscriptError):
        TranscriptWriter("")


# --------------------------------------------------------------------------- statistics


def test_top_bits_histogram() -> None:
    expected = [0] * 16
    expected[0], expected[8], expected[15] = 2, 1, 1
    assert top_bits_histogram([0, 0xFFFF, 0x8000, 0x0FFF], bits=16).tolist() == expected
    top = np.array([2**64 - 1, 0], dtype=np.uint64)
    assert top_bits_histogram(top, bits=64).tolist() == [1] + [0] * 14 + [1]
    assert top_bits_histogram(np.array([], dtype=np.int64), bits=8).sum() == 0
    with pytest.raises(TranscriptError):
        top_bits_histogram([2**16], bits=16)
    with pytest.raises(TranscriptError):
        top_bits_histogram([-1], bits=16)
    with pytest.raises(TranscriptError):
        top_bits_histogram(np.array([0.5]), bits=16)
    with pytest.raises(TranscriptError):
        top_bits_histogram([0], bits=3)


def test_uniformity_accepts_uniform_random_bytes() -> None:
    rng = np.random.default_rng(2024)
    masked = rng.integers(0, 256, size=100_000, dtype=np.uint8)
    hist = top_bits_histogram(masked, bits=8)
    assert hist.shape == (HISTOGRAM_BINS,) and hist.sum() == 100_000
    statistic, p_value = uniformity_test(hist)
    assert p_value > 1e-3
    assert 0 <= statistic < 50  # chi2 with 15 dof: mean 15


def test_uniformity_rejects_an_unmasked_upload() -> None:
    # A plaintext update quantized into Z_2^16 around zero sits in the top and bottom bins.
    rng = np.random.default_rng(7)
    plaintext = np.round(rng.normal(0, 50, size=10_000)).astype(np.int64) % 2**16
    _, p_value = uniformity_test(top_bits_histogram(plaintext, bits=16))
    assert p_value < 1e-12


def test_uniformity_rejects_a_skewed_histogram() -> None:
    statistic, p_value = uniformity_test([100] * 15 + [300])
    assert p_value < 1e-12 and statistic > 100


def test_uniformity_refuses_too_little_data() -> None:
    with pytest.raises(TranscriptError):
        uniformity_test([1] * 16)
    with pytest.raises(TranscriptError):
        uniformity_test([10])
    with pytest.raises(TranscriptError):
        uniformity_test([10, -1, 10])
    with pytest.raises(TranscriptError):
        uniformity_test([10.5, 10.0])  # type: ignore[list-item]
