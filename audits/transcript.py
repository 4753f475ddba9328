"""The server's view of a run, as digests and statistics: ``transcript.json``.

What is recorded
----------------
* One record per message the server received: ``version`` (the aggregation / model
  version), ``sender``, ``stage``, ``size`` in bytes and the ``sha256`` of the exact
  bytes. Never the content.
* Per aggregation, summary statistics of what the server saw, chosen so that an auditor
  can test "masked uploads look uniform" without any plaintext:

  - for each masked upload in Z_2^b, a 16-bin histogram of the top 4 bits of its
    coordinates (:func:`top_bits_histogram`) and its coordinate count;
  - named scalar statistics computed by the caller (e.g. the largest absolute Pearson
    correlation between two masked uploads, or between an upload and the previous
    round's), :meth:`TranscriptWriter.add_statistic`.

Why this is safe to store: under SecAgg a masked upload ``y = x + m mod 2^b`` with a
uniform mask ``m`` is itself uniform whatever ``x`` is, so its histogram is independent
of the client's data. If masking failed (a zero mask, an unmasked upload, a PRG bug that
leaves high bits unmasked) the histogram reveals only a 16-bin coarse distribution of
that upload -- the very symptom the audit is meant to catch.

What this does not show: a histogram tests each upload's *marginal* distribution only.
Two uploads masked with the same (reused) mask are each uniform; that needs the caller's
correlation statistics. Message digests let a third party holding the messages check
they are the ones the server received; they say nothing by themselves about content.

File format (format version 1): canonical JSON (sorted keys, no whitespace, UTF-8,
see :func:`audits.ledger.canonical_json`) followed by ``\\n``::

    {"aggregations": [{"coordinates": 2000, "field_bits": 16,
                       "statistics": {"max_abs_corr": 0.03},
                       "top4_histogram": [..16 ints..],
                       "uploads": [{"coordinates": 1000, "sender": 3,
                                    "top4_histogram": [..16 ints..]}, ...],
                       "version": 0}, ...],
     "format": "secure-fl/transcript", "format_version": 1, "protocol": "secagg",
     "records": [{"sender": 3, "sha256": "..", "size": 2048, "stage": "masked_input",
                  "version": 0}, ...]}

The aggregate ``top4_histogram`` and ``coordinates`` are the sums over ``uploads``;
:func:`load_transcript` checks that. :func:`transcript_digest` is the SHA-256 of the
file's exact bytes, for the ledger / ``summary.json`` to anchor.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from audits.errors import LedgerWriteError, TranscriptError
from audits.ledger import canonical_json
from audits.strict_json import loads_strict

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HISTOGRAM_BINS",
    "TRANSCRIPT_FILENAME",
    "AggregationStats",
    "MessageLike",
    "Transcript",
    "TranscriptRecord",
    "TranscriptWriter",
    "UploadStats",
    "load_transcript",
    "top_bits_histogram",
    "transcript_digest",
    "transcript_from_json",
    "uniformity_test",
]

TRANSCRIPT_FILENAME = "transcript.json"
FORMAT = "secure-fl/transcript"
FORMAT_VERSION = 1
TOP_BITS = 4
HISTOGRAM_BINS = 1 << TOP_BITS
#: Smallest expected count per bin for which the chi-square approximation is used.
MIN_EXPECTED_PER_BIN = 5.0

_HEX = frozenset("0123456789abcdef")


class MessageLike(Protocol):
    """Anything shaped like ``secure_fl.aggregation.MessageRecord`` (no import needed)."""

    @property
    def sender(self) -> int: ...
    @property
    def stage(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class TranscriptRecord:
    """Digest of one message the server received."""

    version: int
    sender: int
    stage: str
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadStats:
    """Top-4-bit histogram of one masked upload and its number of coordinates."""

    sender: int
    coordinates: int
    top4_histogram: tuple[int, ...]


@dataclass(frozen=True)
class AggregationStats:
    """Statistics of the server's view of one aggregation (model ``version``)."""

    version: int
    field_bits: int | None
    uploads: tuple[UploadStats, ...] = ()
    statistics: Mapping[str, float] = field(default_factory=dict)

    @property
    def top4_histogram(self) -> tuple[int, ...]:
        """Sum of the uploads' histograms."""
        total = [0] * HISTOGRAM_BINS
        for upload in self.uploads:
            for i, count in enumerate(upload.top4_histogram):
                total[i] += count
        return tuple(total)

    @property
    def coordinates(self) -> int:
        return sum(u.coordinates for u in self.uploads)


@dataclass(frozen=True)
class Transcript:
    """A loaded (validated) transcript."""

    protocol: str
    records: tuple[TranscriptRecord, ...]
    aggregations: tuple[AggregationStats, ...]
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        """The JSON document (see the module docstring)."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "protocol": self.protocol,
            "records": [
                {
                    "version": r.version,
                    "sender": r.sender,
                    "stage": r.stage,
                    "size": r.size,
                    "sha256": r.sha256,
                }
                for r in self.records
            ],
            "aggregations": _aggregations_json(self.aggregations),
        }


def _aggregations_json(aggregations: Iterable[AggregationStats]) -> list[dict[str, Any]]:
    return [
        {
            "version": a.version,
            "field_bits": a.field_bits,
            "coordinates": a.coordinates,
            "top4_histogram": list(a.top4_histogram),
            "uploads": [
                {
                    "sender": u.sender,
                    "coordinates": u.coordinates,
                    "top4_histogram": list(u.top4_histogram),
                }
                for u in a.uploads
            ],
            "statistics": dict(a.statistics),
        }
        for a in aggregations
    ]


# --------------------------------------------------------------------------- statistics


def top_bits_histogram(masked: npt.ArrayLike, *, bits: int) -> npt.NDArray[np.int64]:
    """Counts of the top 4 bits of each coordinate of ``masked`` in Z_2^bits (16 bins).

    ``masked`` holds integers in ``[0, 2**bits)`` (any integer dtype); ``4 <= bits <= 64``.
    Bin ``j`` counts coordinates ``y`` with ``y >> (bits - 4) == j``. For a uniformly
    random ``y`` each bin has probability exactly 1/16.

    >>> top_bits_histogram([0, 0xFFFF, 0x8000], bits=16).tolist()
    [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not TOP_BITS <= bits <= 64:
        raise TranscriptError(
            f"bits must be an int in [{TOP_BITS}, 64], got {bits!r}", location="bits"
        )
    arr = np.asarray(masked)
    if arr.dtype.kind not in "ui":
        raise TranscriptError(
            f"masked values must be integers, got dtype {arr.dtype}", location="masked"
        )
    flat = arr.reshape(-1)
    if flat.size == 0:
        return np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    if arr.dtype.kind == "i" and int(flat.min()) < 0:
        raise TranscriptError("masked values must be non-negative", location="masked")
    top = flat.astype(np.uint64, copy=False) >> np.uint64(bits - TOP_BITS)
    if int(top.max()) >= HISTOGRAM_BINS:
        raise TranscriptError(f"masked values must be < 2**{bits}", location="masked")
    return np.bincount(top.astype(np.intp), minlength=HISTOGRAM_BINS).astype(np.int64)


def uniformity_test(
    histogram_counts: Sequence[int] | npt.NDArray[np.integer[Any]],
) -> tuple[float, float]:
    """Pearson's chi-square test that ``histogram_counts`` come from a uniform distribution.

    Returns ``(statistic, p_value)`` from :func:`scipy.stats.chisquare` with equal
    expected counts ``N / k`` (``k`` bins, ``N`` total, ``k - 1`` degrees of freedom):
    ``statistic = sum_j (O_j - N/k)^2 / (N/k)``. A small p-value (say below 1e-3) rejects
    uniformity: for a masked upload it means the masks did not hide the input.

    Interpretation: under correct masking the p-value is uniform on [0, 1], so testing
    many uploads at level alpha rejects about alpha of them by chance; use a Bonferroni
    threshold (alpha / number of tests) or test the aggregate histogram. The test is
    powerful against gross failures (an unmasked float or small-integer upload puts its
    mass in one or two bins) but blind to anything the marginal hides (see the module
    docstring).

    Refuses (:class:`TranscriptError`) fewer than 2 bins, negative or non-integer
    counts, and fewer than 5 expected counts per bin (the chi-square approximation is
    then unreliable) rather than return a misleading p-value.
    """
    arr = np.asarray(histogram_counts)
    if arr.ndim != 1 or arr.size < 2:
        raise TranscriptError(
            "a histogram is a 1-D sequence of at least 2 counts", location="histogram"
        )
    if arr.dtype.kind not in "ui":
        raise TranscriptError(
            f"histogram counts must be integers, got dtype {arr.dtype}", location="histogram"
        )
    if int(arr.min()) < 0:
        raise TranscriptError("histogram counts must be non-negative", location="histogram")
    total = int(arr.sum())
    if total / arr.size < MIN_EXPECTED_PER_BIN:
        raise TranscriptError(
            f"{total} observations over {arr.size} bins: fewer than {MIN_EXPECTED_PER_BIN:g} expected per bin",
            location="histogram",
        )
    from scipy.stats import chisquare  # deferred: scipy.stats is slow to import

    result = chisquare(arr.astype(np.float64))
    return float(result.statistic), float(result.pvalue)


# --------------------------------------------------------------------------- writer


class TranscriptWriter:
    """Accumulates the server's view of a run in memory; :meth:`write` saves it.

    Typical use in the server loop, after each aggregation::

        tw.add_messages(outcome.transcript, version=v)
        for sender, y in masked_uploads:          # as they stream in
            tw.observe_masked_upload(version=v, sender=sender, masked=y, bits=b)
        tw.add_statistic(version=v, name="max_abs_corr", value=c)
        tw.write(run_dir / TRANSCRIPT_FILENAME)    # atomic; may be called every round
    """

    def __init__(self, protocol: str) -> None:
        if not isinstance(protocol, str) or not protocol:
            raise TranscriptError("protocol is a non-empty string", location="protocol")
        self._protocol = protocol
        self._records: list[TranscriptRecord] = []
        self._uploads: dict[int, list[UploadStats]] = {}
        self._bits: dict[int, int | None] = {}
        self._stats: dict[int, dict[str, float]] = {}

    def _aggregation(self, version: int) -> None:
        _check_nonneg_int(version, "version")
        self._uploads.setdefault(version, [])
        self._bits.setdefault(version, None)
        self._stats.setdefault(version, {})

    def add_message(self, *, version: int, sender: int, stage: str, size: int, sha256: str) -> None:
        """Record the digest of one received message."""
        record = TranscriptRecord(version, sender, stage, size, sha256)
        _check_record(record, f"records[{len(self._records)}]")
        self._records.append(record)

    def add_messages(self, records: Iterable[MessageLike], *, version: int) -> None:
        """Record many digests (e.g. ``AggregateOutcome.transcript``) for aggregation ``version``."""
        for r in records:
            self.add_message(
                version=version, sender=r.sender, stage=r.stage, size=r.size, sha256=r.sha256
            )

    def observe_masked_upload(
        self, *, version: int, sender: int, masked: npt.ArrayLike, bits: int
    ) -> None:
        """Add the top-4-bit histogram of one masked upload in Z_2^bits; the vector is not kept."""
        self._aggregation(version)
        _check_int(sender, "sender")
        known = self._bits[version]
        if known is not None and known != bits:
            raise TranscriptError(
                f"aggregation {version} already has uploads with {known} bits, not {bits}",
                location="bits",
            )
        hist = top_bits_histogram(masked, bits=bits)
        self._bits[version] = bits
        self._uploads[version].append(
            UploadStats(sender, int(hist.sum()), tuple(int(c) for c in hist))
        )

    def add_statistic(self, *, version: int, name: str, value: float) -> None:
        """Record a caller-computed scalar statistic of aggregation ``version``."""
        self._aggregation(version)
        if not isinstance(name, str) or not name:
            raise TranscriptError("a statistic name is a non-empty string", location="name")
        self._stats[version][name] = _check_finite(value, f"statistics.{name}")

    @classmethod
    def from_transcript(cls, transcript: Transcript) -> TranscriptWriter:
        """A writer holding exactly ``transcript`` (e.g. a resumed run's, parsed from its
        checkpoint), to which later aggregations are added."""
        writer = cls(transcript.protocol)
        for record in transcript.records:
            _check_record(record, f"records[{len(writer._records)}]")
            writer._records.append(record)
        for agg in transcript.aggregations:
            writer._aggregation(agg.version)
            writer._bits[agg.version] = agg.field_bits
            writer._uploads[agg.version] = list(agg.uploads)
            writer._stats[agg.version] = dict(agg.statistics)
        return writer

    def _aggregation_stats(self) -> tuple[AggregationStats, ...]:
        return tuple(
            AggregationStats(v, self._bits[v], tuple(self._uploads[v]), dict(self._stats[v]))
            for v in sorted(self._uploads)
        )

    def transcript(self) -> Transcript:
        """A snapshot of everything recorded so far."""
        return Transcript(self._protocol, tuple(self._records), self._aggregation_stats())

    # -- checkpoint state ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything recorded so far, compact, for a checkpoint (rewritten after every
        aggregation, so its encoding cost matters): the records as columns (numpy
        arrays; the raw 32-byte digests concatenated into one ``bytes``) and the
        aggregations as in ``transcript.json``. :meth:`from_state` restores this writer."""
        records = self._records
        n = len(records)
        stages = sorted({r.stage for r in records})
        code = {stage: i for i, stage in enumerate(stages)}
        return {
            "protocol": self._protocol,
            "versions": np.fromiter((r.version for r in records), dtype=np.int64, count=n),
            "senders": np.fromiter((r.sender for r in records), dtype=np.int64, count=n),
            "sizes": np.fromiter((r.size for r in records), dtype=np.int64, count=n),
            "stages": stages,
            "stage_codes": np.fromiter((code[r.stage] for r in records), dtype=np.int64, count=n),
            "digests": bytes.fromhex("".join(r.sha256 for r in records)),
            "aggregations": _aggregations_json(self._aggregation_stats()),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> TranscriptWriter:
        """The writer :meth:`state` describes; :class:`TranscriptError` naming the field
        if it is malformed (every record and aggregation is checked as on loading)."""
        if not isinstance(state, Mapping):
            raise TranscriptError("transcript state is not a mapping", location="state")
        columns = {}
        for name in ("versions", "senders", "sizes", "stage_codes"):
            col = state.get(name)
            if not isinstance(col, np.ndarray) or col.ndim != 1 or col.dtype.kind not in "iu":
                raise TranscriptError(f"transcript state: {name} is not a 1-D integer array", location=name)
            columns[name] = col.tolist()
        stages, digests = state.get("stages"), state.get("digests")
        n = len(columns["versions"])
        if any(len(col) != n for col in columns.values()):
            raise TranscriptError("transcript state: columns of different lengths", location="state")
        if not isinstance(stages, list) or not all(isinstance(x, str) for x in stages):
            raise TranscriptError("transcript state: stages is not a list of names", location="stages")
        if not isinstance(digests, bytes) or len(digests) != 32 * n:
            raise TranscriptError(f"transcript state: digests are not {n} SHA-256 values", location="digests")
        if any(not 0 <= c < len(stages) for c in columns["stage_codes"]):
            raise TranscriptError("transcript state: a stage code is out of range", location="stage_codes")
        parsed = transcript_from_json({
            "format": FORMAT, "format_version": FORMAT_VERSION, "protocol": state.get("protocol"),
            "records": [], "aggregations": state.get("aggregations"),
        })
        writer = cls.from_transcript(parsed)
        for i, (version, sender, size, c) in enumerate(zip(
                columns["versions"], columns["senders"], columns["sizes"], columns["stage_codes"], strict=True)):
            writer.add_message(version=version, sender=sender, stage=stages[c], size=size,
                               sha256=digests[32 * i:32 * i + 32].hex())
        return writer

    def write(self, path: str | os.PathLike[str]) -> str:
        """Atomically write ``transcript.json`` (temp file, fsync, rename); return its digest."""
        target = Path(path)
        try:
            data = canonical_json(self.transcript().to_json()) + b"\n"
        except LedgerWriteError as exc:
            raise TranscriptError(str(exc), location=exc.location) from exc
        try:
            fd, tmp = tempfile.mkstemp(prefix=".transcript-", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TranscriptError(f"cannot write transcript: {exc}", location=str(target)) from exc
        return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- loading


def _check_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TranscriptError(f"expected an integer, got {type(value).__name__}", location=where)
    return value


def _check_nonneg_int(value: object, where: str) -> int:
    result = _check_int(value, where)
    if result < 0:
        raise TranscriptError(f"expected a non-negative integer, got {result}", location=where)
    return result


def _check_finite(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TranscriptError(f"expected a number, got {type(value).__name__}", location=where)
    result = float(value)
    if not math.isfinite(result):
        raise TranscriptError("expected a finite number", location=where)
    return result


def _check_record(r: TranscriptRecord, where: str) -> None:
    _check_nonneg_int(r.version, f"{where}.version")
    _check_int(r.sender, f"{where}.sender")
    if not isinstance(r.stage, str) or not r.stage:
        raise TranscriptError("stage is a non-empty string", location=f"{where}.stage")
    _check_nonneg_int(r.size, f"{where}.size")
    if not (isinstance(r.sha256, str) and len(r.sha256) == 64 and set(r.sha256) <= _HEX):
        raise TranscriptError("sha256 is 64 lowercase hex characters", location=f"{where}.sha256")


def _object(value: object, keys: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TranscriptError(f"expected an object, got {type(value).__name__}", location=where)
    if set(value) != keys:
        missing = sorted(keys - set(value))
        extra = sorted(set(value) - keys)
        raise TranscriptError(
            f"wrong fields (missing {missing}, unexpected {extra})", location=where
        )
    return value


def _histogram(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != HISTOGRAM_BINS:
        raise TranscriptError(f"a histogram is a list of {HISTOGRAM_BINS} counts", location=where)
    return tuple(_check_nonneg_int(c, f"{where}[{i}]") for i, c in enumerate(value))


_TOP_KEYS = frozenset({"format", "format_version", "protocol", "records", "aggregations"})
_RECORD_KEYS = frozenset({"version", "sender", "stage", "size", "sha256"})
_AGG_KEYS = frozenset(
    {"version", "field_bits", "coordinates", "top4_histogram", "uploads", "statistics"}
)
_UPLOAD_KEYS = frozenset({"sender", "coordinates", "top4_histogram"})


def _parse(doc: object) -> Transcript:
    top = _object(doc, _TOP_KEYS, "$")
    if top["format"] != FORMAT:
        raise TranscriptError(f"not a {FORMAT} document", location="$.format")
    if _check_int(top["format_version"], "$.format_version") != FORMAT_VERSION:
        raise TranscriptError(
            f"unsupported format version {top['format_version']}", location="$.format_version"
        )
    protocol = top["protocol"]
    if not isinstance(protocol, str) or not protocol:
        raise TranscriptError("protocol is a non-empty string", location="$.protocol")
    if not isinstance(top["records"], list):
        raise TranscriptError("records is a list", location="$.records")
    records: list[TranscriptRecord] = []
    for i, raw in enumerate(top["records"]):
        where = f"$.records[{i}]"
        obj = _object(raw, _RECORD_KEYS, where)
        record = TranscriptRecord(
            obj["version"], obj["sender"], obj["stage"], obj["size"], obj["sha256"]
        )
        _check_record(record, where)
        records.append(record)
    if not isinstance(top["aggregations"], list):
        raise TranscriptError("aggregations is a list", location="$.aggregations")
    aggregations: list[AggregationStats] = []
    seen: set[int] = set()
    for i, raw in enumerate(top["aggregations"]):
        where = f"$.aggregations[{i}]"
        obj = _object(raw, _AGG_KEYS, where)
        version = _check_nonneg_int(obj["version"], f"{where}.version")
        if version in seen:
            raise TranscriptError(
                f"second entry for version {version}", location=f"{where}.version"
            )
        seen.add(version)
        bits = obj["field_bits"]
        if bits is not None and (_check_int(bits, f"{where}.field_bits") < TOP_BITS or bits > 64):
            raise TranscriptError(
                f"field_bits must be in [{TOP_BITS}, 64]", location=f"{where}.field_bits"
            )
        if not isinstance(obj["uploads"], list):
            raise TranscriptError("uploads is a list", location=f"{where}.uploads")
        uploads: list[UploadStats] = []
        for j, raw_up in enumerate(obj["uploads"]):
            uw = f"{where}.uploads[{j}]"
            up = _object(raw_up, _UPLOAD_KEYS, uw)
            hist = _histogram(up["top4_histogram"], f"{uw}.top4_histogram")
            count = _check_nonneg_int(up["coordinates"], f"{uw}.coordinates")
            if sum(hist) != count:
                raise TranscriptError(
                    f"histogram sums to {sum(hist)}, not {count}", location=f"{uw}.top4_histogram"
                )
            uploads.append(UploadStats(_check_int(up["sender"], f"{uw}.sender"), count, hist))
        if uploads and bits is None:
            raise TranscriptError("uploads need field_bits", location=f"{where}.field_bits")
        stats_raw = obj["statistics"]
        if not isinstance(stats_raw, dict):
            raise TranscriptError("statistics is an object", location=f"{where}.statistics")
        stats: dict[str, float] = {}
        for name, value in stats_raw.items():
            if not name:
                raise TranscriptError(
                    "a statistic name is non-empty", location=f"{where}.statistics"
                )
            stats[name] = _check_finite(value, f"{where}.statistics.{name}")
        agg = AggregationStats(version, bits, tuple(uploads), stats)
        if _histogram(obj["top4_histogram"], f"{where}.top4_histogram") != agg.top4_histogram:
            raise TranscriptError(
                "aggregate histogram is not the sum of the uploads'",
                location=f"{where}.top4_histogram",
            )
        if _check_nonneg_int(obj["coordinates"], f"{where}.coordinates") != agg.coordinates:
            raise TranscriptError(
                "coordinates is not the sum of the uploads'", location=f"{where}.coordinates"
            )
        aggregations.append(agg)
    return Transcript(protocol, tuple(records), tuple(aggregations))


def transcript_from_json(doc: object) -> Transcript:
    """Validate a parsed transcript document (the checks of :func:`load_transcript`)."""
    return _parse(doc)


def load_transcript(path: str | os.PathLike[str]) -> Transcript:
    """Read and strictly validate ``transcript.json``.

    Raises :class:`TranscriptError` with the JSON path of the first defect: invalid
    UTF-8/JSON, duplicate keys, NaN/Infinity, a missing or unexpected field, a wrong
    type, a malformed digest, a histogram that is not 16 non-negative counts summing to
    the coordinate count, aggregate totals that disagree with the uploads, a repeated
    version, an unknown format or format version.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TranscriptError(f"cannot read transcript: {exc}", location=str(path)) from exc
    try:
        doc = loads_strict(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TranscriptError(f"not valid JSON: {exc}", location=str(path)) from exc
    return _parse(doc)


def transcript_digest(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the transcript file's exact bytes (for the ledger / summary to anchor)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise TranscriptError(f"cannot read transcript: {exc}", location=str(path)) from exc
    return h.hexdigest()
