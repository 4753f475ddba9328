"""Resuming a run after the server process dies: the checkpoint and the recovery rule.

After every completed aggregation the server writes ``RUN_DIR/checkpoint.json``: the
whole server state after that aggregation (model, server optimizer, pruner, clip,
budgets, transcript, schedule, and whatever else the engine needs) together with the
aggregation's ledger line and metrics line. On restart, :func:`open_resume` verifies
the checkpoint and the ledger, brings the ledger and ``metrics.jsonl`` to exactly the
checkpoint's aggregation, and hands back the state; the run continues at
``version + 1`` with the same run id, the same ledger key and one unbroken hash chain.

Commit order (write-ahead checkpoint; the ledger entry is the commit point)
---------------------------------------------------------------------------
For aggregation ``v`` the server

1. prepares and signs ledger entry ``v`` and collects the survivors' countersignatures;
2. writes the checkpoint of ``v``, which carries that entry's exact line and the
   metrics line (temp file, ``fsync``, ``os.replace``, ``fsync`` of the directory);
3. appends the entry to ``ledger.jsonl`` (the commit point of the aggregation);
4. appends the metrics line.

A crash before 2 completes leaves the checkpoint of ``v - 1`` and a ledger of
``v - 1`` entries: aggregation ``v`` released nothing and is redone from the restored
state. A crash between 2 and 4 leaves a checkpoint one step ahead: :func:`recover`
rolls the ledger forward with the stored line (byte-identical, already signed and
countersigned; a torn partial line of it is cut first) and rewrites the metrics. Any
other disagreement (an unknown entry after the checkpoint's head, a chain that does
not verify, a different configuration) is refused with :class:`CheckpointError`.

Budgets
-------
Server-side budgets are state like any other: restored from the checkpoint, they hold
each completed aggregation exactly once, and an interrupted aggregation (no checkpoint,
no ledger entry) charged nothing and is redone. Sites that keep their own budget
(Flower; :class:`secure_fl.transport.flower.site.SiteBudget`) charge when their masked
input leaves; see that class for why an interrupted aggregation's charge stays.

What the checkpoint holds, and what it must not
-----------------------------------------------
It lives in the run directory and is as public as the rest of it: aggregate-derived
state only (the model and everything computed from released aggregates, DP events,
digests). Never an individual update, never a secret. Secrets that a resumed server
needs are kept in the server's private state directory (:func:`server_state_dir`):
the ledger signing key, and for the in-process simulation the simulated clients' key
seed. The CSPRNG of clients' noise is saved (seed and stream position,
:meth:`crypto.prg.Csprng.position`) only under ``simulation.reproducible_noise``,
where it is derived from the public seed anyway; otherwise a resumed run draws fresh
OS entropy, so past noise can never be regenerated from anything on disk.

The file is ``canonical_json({"checkpoint": doc, "sha256": hex, "signature": hex})``
with ``signature = Ed25519(ledger key, b"secure-fl/checkpoint/v1" || sha256)`` over
``canonical_json(doc)``: a checkpoint edited by anyone without the server's key
(e.g. budgets reset to zero) is refused.

State trees
-----------
``Snapshot.state`` is a tree of dicts (``str`` keys not starting with ``$``), lists,
``str``, ``int``, ``float`` (including infinities), ``bool``, ``None``, ``bytes``,
tuples, numpy arrays, :class:`~privacy.events.DPEvent` objects and dicts with ``int``
keys; :func:`encode_tree` turns it into canonical JSON with ``$``-tagged objects and
:func:`decode_tree` reverses it exactly (arrays keep dtype and shape, floats are exact).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audits.errors import LedgerError
from audits.events_codec import decode_event, encode_event
from audits.ledger import (
    GENESIS_HASH,
    LEDGER_FILENAME,
    PUBLIC_KEY_FILENAME,
    LedgerEntry,
    LedgerWriter,
    canonical_json,
    generate_server_key,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
    verify_ledger,
)
from audits.strict_json import loads_strict
from crypto.prg import Csprng
from privacy.events import DPEvent
from secure_fl.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FILENAME",
    "CHECKPOINT_LABEL",
    "METRICS_FILENAME",
    "SERVER_KEY_FILENAME",
    "CLIENT_SEED_FILENAME",
    "Checkpointer",
    "Resumed",
    "RunStore",
    "Snapshot",
    "WriteAheadLedger",
    "create_server_key",
    "csprng_from_state",
    "csprng_state",
    "decode_tree",
    "encode_tree",
    "generator_from_state",
    "generator_state",
    "load_checkpoint",
    "load_server_key",
    "open_resume",
    "recover",
    "load_server_secret",
    "resume_snapshot",
    "save_run_id",
    "save_server_secret",
    "server_state_dir",
    "write_checkpoint",
]

CHECKPOINT_FILENAME = "checkpoint.json"
METRICS_FILENAME = "metrics.jsonl"
SERVER_KEY_FILENAME = "ledger.key"
CHECKPOINT_LABEL = b"secure-fl/checkpoint/v1"
FORMAT = "secure-fl/checkpoint"
FORMAT_VERSION = 2


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class Snapshot:
    """The server after aggregation ``version`` completed.

    ``ledger_entries``/``ledger_head`` are the ledger's count and head *including* this
    aggregation's entry, whose canonical line is ``ledger_line`` (``None`` when the
    caller wrote the ledger entry before the checkpoint: then no roll-forward is
    possible and a ledger one entry ahead is refused). ``metrics_lines`` counts the
    lines of ``metrics.jsonl`` including ``metrics_line``. ``state`` is the engine's
    state tree (see the module docstring); ``run_id`` is kept by the resumed run.
    """

    run_id: str
    version: int
    config_sha256: str
    ledger_entries: int
    ledger_head: str
    metrics_lines: int
    ledger_line: str | None = None
    metrics_line: str | None = None
    state: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("version", "ledger_entries", "metrics_lines"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CheckpointError(f"{name} is a non-negative int, got {value!r}", field=name)
        if not isinstance(self.run_id, str) or not self.run_id:
            raise CheckpointError("run_id is a non-empty string", field="run_id")
        if not _is_hex64(self.ledger_head):
            raise CheckpointError("ledger_head is 64 lowercase hex characters", field="ledger_head")
        if not _is_hex64(self.config_sha256):
            raise CheckpointError("config_sha256 is 64 lowercase hex characters", field="config_sha256")
        for name in ("ledger_line", "metrics_line"):
            line = getattr(self, name)
            if line is not None and (not isinstance(line, str) or "\n" in line or not line):
                raise CheckpointError(f"{name} is one line of text without its newline", field=name)
        if self.metrics_line is not None and self.metrics_lines < 1:
            raise CheckpointError("metrics_line is given but metrics_lines is 0", field="metrics_lines")


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef")


# --------------------------------------------------------------------------- state trees


def encode_tree(value: Any, path: str = "$") -> Any:
    """``value`` as JSON data with ``$``-tagged objects (see the module docstring);
    :class:`CheckpointError` naming the path of anything else."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        if math.isfinite(f):
            return f
        if math.isnan(f):
            raise CheckpointError(f"NaN at {path} has no place in a checkpoint")
        return {"$float": "inf" if f > 0 else "-inf"}
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf" or value.dtype.byteorder == ">":
            raise CheckpointError(f"array of dtype {value.dtype} at {path} is not storable")
        arr = np.ascontiguousarray(value)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise CheckpointError(f"array at {path} holds a non-finite value")
        return {
            "$nd": {
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "data": base64.b64encode(arr.tobytes()).decode("ascii"),
            }
        }
    if isinstance(value, DPEvent):
        return {"$event": encode_event(value)}
    if isinstance(value, tuple):
        return {"$tuple": [encode_tree(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_tree(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        keys = list(value)
        if all(isinstance(k, str) for k in keys):
            for k in keys:
                if k.startswith("$"):
                    raise CheckpointError(f"key {k!r} at {path} starts with '$' (reserved)")
            return {k: encode_tree(v, f"{path}.{k}") for k, v in value.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
            return {"$intmap": [[int(k), encode_tree(v, f"{path}[{k}]")] for k, v in value.items()]}
        raise CheckpointError(f"mapping at {path} mixes key types (str-only or int-only)")
    raise CheckpointError(f"{type(value).__name__} at {path} is not storable in a checkpoint")


def decode_tree(value: Any, path: str = "$") -> Any:
    """The inverse of :func:`encode_tree`; :class:`CheckpointError` naming the path."""
    if value is None or isinstance(value, bool | str | int | float):
        return value
    if isinstance(value, list):
        return [decode_tree(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        raise CheckpointError(f"unexpected {type(value).__name__} at {path}")
    tags = [k for k in value if k.startswith("$")]
    if not tags:
        return {k: decode_tree(v, f"{path}.{k}") for k, v in value.items()}
    if len(value) != 1:
        raise CheckpointError(f"tagged object at {path} has extra keys")
    tag, body = tags[0], value[tags[0]]
    try:
        if tag == "$float":
            if body not in ("inf", "-inf"):
                raise CheckpointError(f"$float at {path} is 'inf' or '-inf'")
            return math.inf if body == "inf" else -math.inf
        if tag == "$bytes":
            return base64.b64decode(body, validate=True)
        if tag == "$nd":
            dtype = np.dtype(body["dtype"])
            if dtype.kind not in "biuf":
                raise CheckpointError(f"array dtype {dtype} at {path} is not allowed")
            shape = tuple(int(n) for n in body["shape"])
            raw = base64.b64decode(body["data"], validate=True)
            count = math.prod(shape)
            if len(raw) != count * dtype.itemsize:
                raise CheckpointError(f"array at {path} holds {len(raw)} bytes, not {count * dtype.itemsize}")
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        if tag == "$event":
            return decode_event(body)
        if tag == "$tuple":
            return tuple(decode_tree(v, f"{path}[{i}]") for i, v in enumerate(body))
        if tag == "$intmap":
            out: dict[int, Any] = {}
            for k, v in body:
                if isinstance(k, bool) or not isinstance(k, int) or k in out:
                    raise CheckpointError(f"$intmap at {path} has a bad or repeated key {k!r}")
                out[k] = decode_tree(v, f"{path}[{k}]")
            return out
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, LedgerError) as exc:
        raise CheckpointError(f"malformed {tag} at {path}: {exc}") from None
    raise CheckpointError(f"unknown tag {tag!r} at {path}")


# --------------------------------------------------------------------------- RNG states


def csprng_state(rng: Csprng, *, public: bool) -> dict[str, Any] | None:
    """The generator's seed and position when its stream is ``public`` (derived from the
    public configuration, ``simulation.reproducible_noise``); ``None`` otherwise: a
    secret stream is never written to the run directory (see the module docstring)."""
    if not public:
        return None
    seed, offset = rng.position()
    return {"seed": seed, "offset": offset}


def csprng_from_state(state: Mapping[str, Any] | None) -> Csprng:
    """The generator saved by :func:`csprng_state`, or fresh OS entropy for ``None``."""
    if state is None:
        return Csprng.from_entropy()
    seed, offset = state.get("seed"), state.get("offset")
    if not isinstance(seed, bytes) or isinstance(offset, bool) or not isinstance(offset, int):
        raise CheckpointError("a CSPRNG state is {seed: 32 bytes, offset: int}")
    return Csprng.at(seed, offset)


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's bit-generator state (simulation randomness only: dropouts,
    schedules; never privacy-relevant values, which come from :class:`Csprng`)."""
    return dict(rng.bit_generator.state)


def generator_from_state(state: Mapping[str, Any]) -> np.random.Generator:
    name = state.get("bit_generator")
    if name != "PCG64":
        raise CheckpointError(f"unsupported numpy bit generator {name!r} (PCG64 expected)")
    bg = np.random.PCG64()
    try:
        bg.state = dict(state)  # type: ignore[assignment]
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"bad numpy generator state: {exc}") from None
    return np.random.Generator(bg)


# --------------------------------------------------------------------------- server key


def server_state_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The server's private state directory of a run: ``RUN_DIR.server`` beside it.

    Outside the run directory on purpose: the run directory is what an auditor receives;
    the signing key and simulated clients' secrets must not travel with it (see
    :mod:`audits.ledger`, "where the signing key lives").
    """
    run = Path(run_dir).resolve()
    return run.with_name(run.name + ".server")


def _state_dir(run_dir: Path, state_dir: str | os.PathLike[str] | None) -> Path:
    target = Path(state_dir) if state_dir is not None else server_state_dir(run_dir)
    if target.resolve() == run_dir.resolve():
        raise CheckpointError("the server state directory must not be the run directory", field="state_dir")
    return target


def create_server_key(
    run_dir: str | os.PathLike[str], *, state_dir: str | os.PathLike[str] | None = None
) -> Ed25519PrivateKey:
    """A fresh ledger key for a new run: the public half in ``RUN_DIR``, the private half
    (0600) in the server state directory (0700), so the run can be resumed."""
    run = Path(run_dir)
    target = _state_dir(run, state_dir)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    key = generate_server_key()
    save_private_key(key, target / SERVER_KEY_FILENAME)
    save_public_key(key, run / PUBLIC_KEY_FILENAME)
    return key


def load_server_key(
    run_dir: str | os.PathLike[str], *, state_dir: str | os.PathLike[str] | None = None
) -> Ed25519PrivateKey:
    """The run's ledger key from the server state directory; :class:`CheckpointError`
    if it is missing, readable by others, or not the key of ``RUN_DIR``'s public key."""
    run = Path(run_dir)
    path = _state_dir(run, state_dir) / SERVER_KEY_FILENAME
    if not path.exists():
        raise CheckpointError(
            f"the run's ledger key {path} is missing: the run cannot be resumed under the same "
            "key (give the state directory with --state-dir if it was moved)",
            field="state_dir",
        )
    if path.stat().st_mode & 0o077:
        raise CheckpointError(f"{path} is readable by others (mode must be 0600)", field="state_dir")
    try:
        key = load_private_key(path)
        public = load_public_key(run / PUBLIC_KEY_FILENAME)
    except LedgerError as exc:
        raise CheckpointError(str(exc), field="state_dir") from None
    if key.public_key().public_bytes_raw() != public.public_bytes_raw():
        raise CheckpointError(f"{path} is not the key of {run / PUBLIC_KEY_FILENAME}", field="state_dir")
    return key


# --------------------------------------------------------------------------- file I/O


def _atomic_write(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def _doc(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "run_id": snapshot.run_id,
        "version": snapshot.version,
        "config_sha256": snapshot.config_sha256,
        "ledger_entries": snapshot.ledger_entries,
        "ledger_head": snapshot.ledger_head,
        "ledger_line": snapshot.ledger_line,
        "metrics_lines": snapshot.metrics_lines,
        "metrics_line": snapshot.metrics_line,
        "state": encode_tree(dict(snapshot.state), "$.state"),
    }


def write_checkpoint(
    run_dir: str | os.PathLike[str], snapshot: Snapshot, signing_key: Ed25519PrivateKey
) -> Path:
    """Atomically replace ``RUN_DIR/checkpoint.json`` with ``snapshot``, signed."""
    payload = canonical_json(_doc(snapshot))
    digest = hashlib.sha256(payload).digest()
    signature = signing_key.sign(CHECKPOINT_LABEL + digest)
    # canonical_json({"checkpoint": doc, "sha256": ..., "signature": ...}), assembled from
    # the canonical payload instead of encoding the (large) document a second time
    outer = (b'{"checkpoint":' + payload + b',"sha256":"' + digest.hex().encode()
             + b'","signature":"' + signature.hex().encode() + b'"}')
    target = Path(run_dir) / CHECKPOINT_FILENAME
    _atomic_write(target, outer + b"\n")
    return target


def load_checkpoint(
    run_dir: str | os.PathLike[str], public_key: Ed25519PublicKey
) -> Snapshot | None:
    """The verified checkpoint of ``RUN_DIR`` (``None`` if there is none yet, i.e. the
    server died before its first aggregation completed). :class:`CheckpointError` if
    it is malformed or its signature does not verify under the run's key."""
    target = Path(run_dir) / CHECKPOINT_FILENAME
    if not target.exists():
        return None
    try:
        outer = loads_strict(target.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{target} is unreadable: {exc}") from None
    if not isinstance(outer, dict) or set(outer) != {"checkpoint", "sha256", "signature"}:
        raise CheckpointError(f"{target} is not a checkpoint file")
    doc = outer["checkpoint"]
    try:
        payload = canonical_json(doc)
        signature = bytes.fromhex(outer["signature"])
    except (LedgerError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{target} is malformed: {exc}") from None
    digest = hashlib.sha256(payload).digest()
    if digest.hex() != outer["sha256"]:
        raise CheckpointError(f"{target}: content does not match its digest (edited)")
    try:
        public_key.verify(signature, CHECKPOINT_LABEL + digest)
    except InvalidSignature:
        raise CheckpointError(f"{target}: signature does not verify under the run's ledger key") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{target}: unknown checkpoint format")
    try:
        return Snapshot(
            run_id=doc["run_id"],
            version=doc["version"],
            config_sha256=doc["config_sha256"],
            ledger_entries=doc["ledger_entries"],
            ledger_head=doc["ledger_head"],
            ledger_line=doc["ledger_line"],
            metrics_lines=doc["metrics_lines"],
            metrics_line=doc["metrics_line"],
            state=decode_tree(doc["state"], "$.state"),
        )
    except KeyError as exc:
        raise CheckpointError(f"{target}: missing field {exc}") from None


# --------------------------------------------------------------------------- recovery


def _parse_line(line: str) -> LedgerEntry:
    obj = json.loads(line)
    return LedgerEntry(
        obj["index"], obj["prev_hash"], obj["body"], obj["entry_hash"], obj["signature"],
        obj.get("countersignatures", {}),
    )


def _recover_ledger(run: Path, snapshot: Snapshot, public_key: Ed25519PublicKey) -> str:
    """Bring ``ledger.jsonl`` to the checkpoint; return what was done (for the log)."""
    path = run / LEDGER_FILENAME
    data = path.read_bytes() if path.exists() else b""
    pending = snapshot.ledger_line.encode("utf-8") + b"\n" if snapshot.ledger_line else None
    action = "ledger matches the checkpoint"
    if data and not data.endswith(b"\n"):
        # A torn append: acceptable only as a prefix of the entry the checkpoint holds.
        tail = data[data.rfind(b"\n") + 1 :]
        if pending is None or not pending.startswith(tail):
            raise CheckpointError(f"{path} ends with a torn line that is not the checkpoint's entry")
        with open(path, "r+b") as fh:
            fh.truncate(len(data) - len(tail))
            fh.flush()
            os.fsync(fh.fileno())
        data = data[: len(data) - len(tail)]
        action = "cut a torn partial line"
    report = verify_ledger(path, public_key) if data else None
    if report is not None and not report.ok:
        first = report.first_problem
        raise CheckpointError(
            f"{path} fails verification ({first.kind if first else '?'} at line "
            f"{first.line if first else '?'}: {first.message if first else ''}); refusing to resume"
        )
    entries = report.entries if report is not None else 0
    head = report.head if report is not None and report.head is not None else GENESIS_HASH
    if entries == snapshot.ledger_entries and head == snapshot.ledger_head:
        return action
    if entries == snapshot.ledger_entries - 1 and pending is not None:
        entry = _parse_line(snapshot.ledger_line or "")
        if entry.index != entries or entry.prev_hash != head or entry.entry_hash != snapshot.ledger_head:
            raise CheckpointError("the checkpoint's ledger entry does not continue the ledger's chain")
        with open(path, "ab") as fh:
            fh.write(pending)
            fh.flush()
            os.fsync(fh.fileno())
        final = verify_ledger(
            path, public_key, expected_entries=snapshot.ledger_entries, expected_head=snapshot.ledger_head
        )
        if not final.ok:
            raise CheckpointError("the ledger does not verify after rolling the checkpoint's entry forward")
        return f"rolled ledger entry {entry.index} forward from the checkpoint"
    if entries > snapshot.ledger_entries:
        raise CheckpointError(
            f"{path} holds {entries} entries, the checkpoint {snapshot.ledger_entries}: entries were "
            "committed after the last checkpoint (refusing to resume: the state after them is lost)"
        )
    raise CheckpointError(
        f"{path} holds {entries} entries with head {head[:12]}.., the checkpoint expects "
        f"{snapshot.ledger_entries} with head {snapshot.ledger_head[:12]}..: tail removed or ledger replaced"
    )


def _recover_metrics(run: Path, snapshot: Snapshot) -> None:
    path = run / METRICS_FILENAME
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")[:-1]  # the part after the last newline is empty or torn
    keep = snapshot.metrics_lines - (1 if snapshot.metrics_line is not None else 0)
    if len(lines) < keep:
        raise CheckpointError(
            f"{path} holds {len(lines)} complete lines, the checkpoint expects at least {keep}"
        )
    out = lines[:keep]
    if snapshot.metrics_line is not None:
        out.append(snapshot.metrics_line.encode("utf-8"))
    _atomic_write(path, b"".join(line + b"\n" for line in out))


def recover(
    run_dir: str | os.PathLike[str],
    snapshot: Snapshot,
    public_key: Ed25519PublicKey,
    *,
    config_sha256: str | None = None,
) -> str:
    """Make ``ledger.jsonl`` and ``metrics.jsonl`` of ``RUN_DIR`` agree with ``snapshot``
    (the commit rule of the module docstring); return a note of what was done.

    ``config_sha256`` (the resumed run's configuration) must equal the checkpoint's.
    """
    if config_sha256 is not None and config_sha256 != snapshot.config_sha256:
        raise CheckpointError(
            "the configuration differs from the interrupted run's (config_sha256); resume with "
            "the run directory's own config.toml",
            field="config_sha256",
        )
    run = Path(run_dir)
    note = _recover_ledger(run, snapshot, public_key)
    _recover_metrics(run, snapshot)
    return note


def resume_snapshot(run_dir: str | os.PathLike[str]) -> Snapshot | None:
    """The checkpoint of ``RUN_DIR``, verified under its ``ledger_public_key.pem``
    (``None`` if no aggregation completed yet). Does not change any file."""
    run = Path(run_dir)
    try:
        public = load_public_key(run / PUBLIC_KEY_FILENAME)
    except LedgerError as exc:
        raise CheckpointError(f"{run} is not a resumable run directory: {exc}") from None
    return load_checkpoint(run, public)


@dataclass
class Resumed:
    """What a resuming server gets from :func:`open_resume`: the verified snapshot
    (``None``: the server died before its first aggregation; the run starts over in
    the same directory with the same key and run id), the ledger writer positioned
    after it, the signing key and a note of the repair done."""

    snapshot: Snapshot | None
    ledger: LedgerWriter
    signing_key: Ed25519PrivateKey
    note: str
    run_id: str | None


def open_resume(
    run_dir: str | os.PathLike[str],
    *,
    config_sha256: str,
    state_dir: str | os.PathLike[str] | None = None,
) -> Resumed:
    """Everything a server needs to continue the run in ``RUN_DIR``: load the key from
    the state directory, verify the checkpoint, repair ledger and metrics to it
    (:func:`recover`) and reopen the ledger at the checkpoint's head."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"{run} is not a directory", field="resume")
    if (run / "summary.json").exists():
        raise CheckpointError(f"{run} holds a finished run (summary.json): nothing to resume", field="resume")
    key = load_server_key(run, state_dir=state_dir)
    snapshot = load_checkpoint(run, key.public_key())
    ledger_path = run / LEDGER_FILENAME
    if snapshot is None:
        data = ledger_path.read_bytes() if ledger_path.exists() else b""
        if data.strip():
            raise CheckpointError(f"{ledger_path} has entries but there is no checkpoint", field="resume")
        if not ledger_path.exists():
            ledger_path.touch()
        ledger = LedgerWriter.resume(ledger_path, key, expected_entries=0)
        _atomic_write(run / METRICS_FILENAME, b"")
        run_id_path = _state_dir(run, state_dir) / "run_id"
        run_id = run_id_path.read_text(encoding="ascii").strip() if run_id_path.exists() else None
        return Resumed(None, ledger, key, "no aggregation had completed: starting over", run_id)
    note = recover(run, snapshot, key.public_key(), config_sha256=config_sha256)
    try:
        ledger = LedgerWriter.resume(
            ledger_path, key, expected_entries=snapshot.ledger_entries, expected_head=snapshot.ledger_head
        )
    except LedgerError as exc:
        raise CheckpointError(f"cannot reopen the ledger: {exc}") from None
    return Resumed(snapshot, ledger, key, note, snapshot.run_id)


def save_run_id(
    run_dir: str | os.PathLike[str], run_id: str, *, state_dir: str | os.PathLike[str] | None = None
) -> None:
    """Remember the run id in the state directory before the first aggregation (so a
    server that dies before its first checkpoint resumes with the same id)."""
    target = _state_dir(Path(run_dir), state_dir)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    _atomic_write(target / "run_id", run_id.encode("ascii") + b"\n")


def save_server_secret(
    run_dir: str | os.PathLike[str],
    name: str,
    secret: bytes,
    *,
    state_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Store ``secret`` as ``name`` (0600) in the server state directory; refuses to
    overwrite a different value (a second writer would split the run's history)."""
    if not name or "/" in name or name.startswith("."):
        raise CheckpointError(f"bad secret name {name!r}")
    target_dir = _state_dir(Path(run_dir), state_dir)
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = target_dir / name
    if target.exists():
        if target.read_bytes() == secret:
            return target
        raise CheckpointError(f"{target} already holds another value", field="state_dir")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(secret)
        fh.flush()
        os.fsync(fh.fileno())
    return target


def load_server_secret(
    run_dir: str | os.PathLike[str], name: str, *, state_dir: str | os.PathLike[str] | None = None
) -> bytes:
    """A secret saved by :func:`save_server_secret`; :class:`CheckpointError` if absent
    or readable by others."""
    target = _state_dir(Path(run_dir), state_dir) / name
    if not target.exists():
        raise CheckpointError(f"{target} is missing: the run cannot be resumed", field="state_dir")
    if target.stat().st_mode & 0o077:
        raise CheckpointError(f"{target} is readable by others (mode must be 0600)", field="state_dir")
    return target.read_bytes()


# --------------------------------------------------------------------------- run privacy


def _rdp_state(acc: Any) -> dict[str, Any]:
    return {"orders": [float(o) for o in acc.orders], "rdp": [float(x) for x in acc.rdp]}


def _rdp_from_state(state: Mapping[str, Any]) -> Any:
    from privacy import RdpAccountant

    try:
        return RdpAccountant.from_curve(state["orders"], state["rdp"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"bad RDP accountant state: {exc}") from None


def _ident(client: Any) -> int | str:
    """A party's ident as a checkpoint key: the simulator's client index (an int) or,
    on Flower, the site's name (a str); :func:`encode_tree` keeps either kind."""
    return client if isinstance(client, str) else int(client)


def privacy_state(privacy: Any) -> dict[str, Any]:
    """The changing part of a :class:`secure_fl.accounting.RunPrivacy`: the three
    per-client budgets (against the server, replace-one, released model), the amplified
    released-model accountant, the record-level accountants, warnings, hazards and
    counters. DP events and epsilons only: nothing about any individual update."""
    return {
        "budgets": _compact_history(privacy.budgets.state_dict()),
        "replace_one": _compact_history(privacy.replace_one.state_dict()),
        "released_budgets": _compact_history(privacy.released_budgets.state_dict()),
        "released": _rdp_state(privacy.released),
        "record_accountants": {_ident(c): _rdp_state(a) for c, a in privacy.record_accountants.items()},
        "warnings": list(privacy.warnings),
        "hazards": list(privacy.hazards),
        "refusals": int(privacy.refusals),
        "shortfall": bool(privacy.shortfall),
    }


def _compact_history(budget_state: Mapping[str, Any]) -> dict[str, Any]:
    """A budgets ``state_dict`` with each distinct DP event stored once: ``events`` lists
    them, and each client's history becomes an index array into it (every client of an
    aggregation is charged the same event, so this keeps the checkpoint small)."""
    events: list[Any] = []
    index: dict[Any, int] = {}
    history = []
    for client, evs in budget_state["history"]:
        idx = []
        for event in evs:
            at = index.get(event)
            if at is None:
                at = index[event] = len(events)
                events.append(event)
            idx.append(at)
        history.append([client, np.asarray(idx, dtype=np.int64)])
    return {**budget_state, "history": history, "events": events}


def _expand_history(compact: Mapping[str, Any]) -> dict[str, Any]:
    """The budgets ``state_dict`` that :func:`_compact_history` compacted."""
    events = compact.get("events")
    if not isinstance(events, list):
        raise CheckpointError("budget state lacks its event table", field="dp")
    history = []
    for client, idx in compact.get("history", []):
        if not isinstance(idx, np.ndarray) or idx.ndim != 1 or idx.dtype.kind not in "iu" or (
                idx.size and not (0 <= int(idx.min()) and int(idx.max()) < len(events))):
            raise CheckpointError(f"budget state: client {client!r} refers to events that do not exist", field="dp")
        history.append([client, [events[i] for i in idx.tolist()]])
    out = {k: v for k, v in compact.items() if k != "events"}
    out["history"] = history
    return out


def load_privacy_state(privacy: Any, state: Mapping[str, Any]) -> None:
    """Restore :func:`privacy_state` into a freshly built ``RunPrivacy`` of the same
    configuration (:class:`CheckpointError` if delta, accountant or caps differ)."""
    from privacy.errors import PrivacyError

    try:
        privacy.budgets.load_state_dict(_expand_history(state["budgets"]))
        privacy.replace_one.load_state_dict(_expand_history(state["replace_one"]))
        privacy.released_budgets.load_state_dict(_expand_history(state["released_budgets"]))
    except PrivacyError as exc:
        raise CheckpointError(f"budget state: {exc}", field="dp") from None
    except KeyError as exc:
        raise CheckpointError(f"privacy state lacks {exc}") from None
    privacy.released = _rdp_from_state(state["released"])
    privacy.record_accountants = {_ident(c): _rdp_from_state(a) for c, a in state["record_accountants"].items()}
    privacy.warnings = list(state["warnings"])
    privacy.hazards = list(state["hazards"])
    privacy.refusals = int(state["refusals"])
    privacy.shortfall = bool(state["shortfall"])


# --------------------------------------------------------------------------- the write-ahead hook


class WriteAheadLedger(LedgerWriter):
    """A :class:`LedgerWriter` whose :meth:`commit` signs off the entry and advances the
    head but leaves the line pending: :class:`Checkpointer` writes the checkpoint that
    carries it, then :meth:`flush_pending` appends it (the commit point). Between the
    two, :attr:`head` and :attr:`next_index` already count the pending entry, so the
    engine's snapshot binds it."""

    def __init__(self, path: Path, signing_key: Ed25519PrivateKey, next_index: int, head: str) -> None:
        super().__init__(path, signing_key, next_index, head)
        self.pending: LedgerEntry | None = None

    @classmethod
    def wrap(cls, writer: LedgerWriter) -> WriteAheadLedger:
        """The same file, key and position as ``writer`` (from ``create``/``resume``)."""
        return cls(writer.path, writer._key, writer.next_index, writer.head)

    def commit(
        self,
        entry: LedgerEntry,
        countersignatures: Mapping[int, str | bytes] | Mapping[str, str | bytes] | None = None,
    ) -> LedgerEntry:
        if self.pending is not None:
            raise CheckpointError(
                f"ledger entry {self.pending.index} was never checkpointed (no on_aggregation_complete)"
            )
        final = self._finalize(entry, countersignatures)
        self.pending = final
        self._next_index += 1
        self._head = final.entry_hash
        return final

    def flush_pending(self) -> LedgerEntry | None:
        """Append the pending entry (one write, flush, fsync); return it."""
        final, self.pending = self.pending, None
        if final is not None:
            self._write(final)
        return final


CRASH_ENV = "SECURE_FL_TEST_CRASH"
"""Fault injection for the crash tests: ``POINT:VERSION`` makes the process SIGKILL
itself at ``POINT`` of aggregation ``VERSION``. Points: ``after_checkpoint`` (the
checkpoint is written, the ledger entry is not), ``after_ledger`` (the entry is
committed, the metrics line is not), and any protocol stage name the transport
exchanges (``stage:masked_input``: in the middle of the aggregation, after the sites'
masked inputs left). Unset in normal use; reading one variable is all it costs."""


def crash_point(point: str, version: int) -> None:
    """SIGKILL this process if :data:`CRASH_ENV` names ``point`` at ``version``."""
    wanted = os.environ.get(CRASH_ENV)
    if wanted and wanted == f"{point}:{version}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Checkpointer:
    """Writes the run's checkpoint after each completed aggregation (write-ahead, see
    the module docstring), then commits the ledger entry and the metrics line.

    Give :meth:`metrics_sink` and :meth:`on_aggregation_complete` to the
    :class:`~secure_fl.engine.server.ServerEngine` and :attr:`ledger` as its ledger.
    ``extra_state()`` returns what the engine's snapshot lacks (transport clock and
    generators, the transcript, ...); ``encode_snapshot`` turns the engine's snapshot
    into a state tree (default: :func:`engine_state`).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        ledger: LedgerWriter,
        signing_key: Ed25519PrivateKey,
        *,
        run_id: str,
        config_sha256: str,
        metrics_lines: int = 0,
        extra_state: Any = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.ledger = ledger if isinstance(ledger, WriteAheadLedger) else WriteAheadLedger.wrap(ledger)
        self._key = signing_key
        self.run_id = run_id
        self.config_sha256 = config_sha256
        self.metrics_lines = metrics_lines
        self._extra = extra_state
        self._record: dict[str, Any] | None = None

    def metrics_sink(self, record: dict[str, Any]) -> None:
        """Hold the metrics line until the checkpoint that carries it is written."""
        self._record = record

    def on_aggregation_complete(self, snapshot: Mapping[str, Any]) -> None:
        version = int(snapshot["version"])
        entry = self.ledger.pending
        if entry is None:
            raise CheckpointError(f"aggregation {version} completed without a ledger entry")
        if self._record is None:
            raise CheckpointError(f"aggregation {version} completed without a metrics line")
        line = json.dumps(self._record, default=_json_default)
        state = {"engine": engine_state(snapshot)}
        if self._extra is not None:
            state.update(self._extra())
        snap = Snapshot(
            run_id=self.run_id,
            version=version,
            config_sha256=self.config_sha256,
            ledger_entries=self.ledger.next_index,
            ledger_head=self.ledger.head,
            metrics_lines=self.metrics_lines + 1,
            ledger_line=entry.to_line()[:-1].decode("utf-8"),
            metrics_line=line,
            state=state,
        )
        write_checkpoint(self.run_dir, snap, self._key)
        crash_point("after_checkpoint", version)
        self.ledger.flush_pending()
        crash_point("after_ledger", version)
        with open(self.run_dir / METRICS_FILENAME, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.metrics_lines += 1
        self._record = None
        crash_point("after_metrics", version)


def engine_state(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The engine's snapshot as a storable tree: the live ``RunPrivacy`` object becomes
    :func:`privacy_state`; everything else is already data."""
    out: dict[str, Any] = {}
    for key, value in snapshot.items():
        if key == "privacy":
            out["privacy"] = privacy_state(value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- one run store for every transport


CLIENT_SEED_FILENAME = "clients.seed"


class RunStore:
    """A server's run directory, fresh or resumed: what any transport's server needs to
    make its run resumable, in one place (the in-process runner and the Flower
    ServerApp both use it).

    ::

        store = RunStore.open(out, config_sha256=config_hash(config), resume=resuming)
        engine = ServerEngine(config, model, ..., ledger=store.ledger, transcript=store.transcript,
                              metrics_sink=store.metrics_sink, rng=store.server_rng(default_rng),
                              resume=store.engine_resume)
        store.attach(engine, reproducible=config.simulation.reproducible_noise)
        drive(engine.run(transport.reachable()), transport)

    :meth:`open` with ``resume=False`` creates the key (in the server state directory),
    the public key, an empty ledger and metrics file; with ``resume=True`` it verifies
    and repairs the directory (:func:`open_resume`). :meth:`attach` restores what the
    engine's own ``load_snapshot`` does not (the privacy accountants, the run id, the
    stopped flag) and installs the write-ahead checkpoint hook. ``extra_state`` /
    :attr:`saved` carry a transport's own state (the in-process clock and generators).
    """

    def __init__(self, run_dir: Path, resumed: Resumed | None, checkpointer: Checkpointer,
                 state_dir: str | os.PathLike[str] | None) -> None:
        self.run_dir = run_dir
        self.resumed = resumed
        self.checkpointer = checkpointer
        self.state_dir = state_dir
        snap = resumed.snapshot if resumed is not None else None
        #: The checkpoint's state tree (empty for a fresh run or one that died before
        #: its first aggregation).
        self.saved: Mapping[str, Any] = snap.state if snap is not None else {}
        from audits.errors import TranscriptError
        from audits.transcript import TranscriptWriter

        self._transcript_cls = TranscriptWriter
        try:
            self.transcript: Any = TranscriptWriter.from_state(self.saved["transcript"]) if self.saved else None
        except TranscriptError as exc:
            raise CheckpointError(f"transcript state: {exc}", field="transcript") from None

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike[str],
        *,
        config_sha256: str,
        protocol: str,
        resume: bool,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> RunStore:
        run = Path(run_dir)
        if resume:
            resumed = open_resume(run, config_sha256=config_sha256, state_dir=state_dir)
            checkpointer = Checkpointer(
                run, resumed.ledger, resumed.signing_key, run_id=resumed.run_id or "",
                config_sha256=config_sha256,
                metrics_lines=resumed.snapshot.metrics_lines if resumed.snapshot else 0,
            )
            store = cls(run, resumed, checkpointer, state_dir)
        else:
            (run / METRICS_FILENAME).write_bytes(b"")
            key = create_server_key(run, state_dir=state_dir)
            created = LedgerWriter.create(run / LEDGER_FILENAME, key)
            checkpointer = Checkpointer(run, created, key, run_id="", config_sha256=config_sha256)
            store = cls(run, None, checkpointer, state_dir)
        if store.transcript is None:
            store.transcript = store._transcript_cls(protocol)
        return store

    @property
    def ledger(self) -> WriteAheadLedger:
        return self.checkpointer.ledger

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return self.checkpointer._key

    @property
    def engine_resume(self) -> dict[str, Any] | None:
        """The ``resume=`` argument of the :class:`ServerEngine`."""
        return dict(self.saved["engine"]) if self.saved else None

    def metrics_sink(self, record: dict[str, Any]) -> None:
        """The engine's ``metrics_sink`` (the line is written after its checkpoint)."""
        self.checkpointer.metrics_sink(record)

    def server_rng(self, default: Csprng) -> Csprng:
        """The server's CSPRNG: restored where its stream is public, else ``default``
        (fresh entropy for a run whose noise must not be predictable)."""
        if self.saved and self.saved.get("server_rng") is not None:
            return csprng_from_state(self.saved["server_rng"])
        return default

    def committed_entries(self) -> list[LedgerEntry]:
        """The ledger's entries after recovery (e.g. to rebuild simulated sites' state)."""
        from audits.ledger import load_ledger

        return load_ledger(self.ledger.path, self.signing_key.public_key())

    def client_seed(self, *, create: bool) -> bytes:
        """The simulated clients' secret key seed (server state directory)."""
        if create:
            from crypto.prg import fresh_seed

            seed = fresh_seed()
            save_server_secret(self.run_dir, CLIENT_SEED_FILENAME, seed, state_dir=self.state_dir)
            return seed
        return load_server_secret(self.run_dir, CLIENT_SEED_FILENAME, state_dir=self.state_dir)

    def attach(self, engine: Any, *, reproducible: bool, extra_state: Any = None) -> None:
        """Finish the engine's restore and install the checkpoint hook (see the class
        docstring). ``extra_state()`` returns a transport's own state for the checkpoint."""
        if self.saved:
            load_privacy_state(engine.privacy, self.saved["engine"]["privacy"])
            engine.stopped = bool(self.saved.get("stopped", False))
        if self.resumed is not None and self.resumed.run_id:
            engine.run_tag = self.resumed.run_id  # the same run id: sites key their charges by it
        self.checkpointer.run_id = engine.run_tag
        if self.resumed is None:
            save_run_id(self.run_dir, engine.run_tag, state_dir=self.state_dir)
        transcript = self.transcript

        def state() -> dict[str, Any]:
            out: dict[str, Any] = {
                "transcript": transcript.state(),
                "server_rng": csprng_state(engine.rng, public=reproducible),
                "stopped": bool(engine.stopped),
            }
            if extra_state is not None:
                out.update(extra_state())
            return out

        self.checkpointer._extra = state
        engine.on_aggregation_complete = self.checkpointer.on_aggregation_complete
