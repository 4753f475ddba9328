"""An append-only, hash-chained, Ed25519-signed privacy ledger (``ledger.jsonl``).

After every aggregation the server appends one entry describing what happened: config
hash, model version, cohort, survivors and dropouts per stage, staleness weights,
support, the DP event actually realised, clip bound, field bits, running epsilon,
transcript hashes, library versions. The ledger does not interpret that ``body``; it
makes it *tamper-evident*.

File format
-----------
One JSON object per line, each line terminated by ``\\n``::

    {"body": {...}, "entry_hash": "<64 hex>", "index": 0,
     "prev_hash": "<64 hex>", "signature": "<128 hex>"[, "countersignatures": {...}]}

* ``index`` counts from 0 without gaps.
* ``prev_hash`` is the previous entry's ``entry_hash`` (64 zeros for entry 0), so each
  entry commits to the entire history before it.
* ``entry_hash = SHA-256(canonical_json({"index", "prev_hash", "body"}))``.
* ``signature = Ed25519(server_key, b"secure-fl/ledger/v1" || bytes.fromhex(entry_hash))``.
* ``countersignatures`` (optional) maps a client id (a JSON string) to
  ``Ed25519(client_key, b"secure-fl/ledger/participation/v1" || entry_hash bytes)``.

Canonical JSON (:func:`canonical_json`): keys sorted, separators ``","`` and ``":"``
with no whitespace, non-ASCII characters emitted as UTF-8 (not ``\\u`` escapes),
integers in decimal, floats as Python's ``repr`` (the shortest string that round-trips
the IEEE-754 double, e.g. ``0.1``, ``1e+16``), ``true``/``false``/``null``. Only
``dict`` (with ``str`` keys), ``list``/``tuple``, ``str``, ``int``, finite ``float``,
``bool`` and ``None`` are accepted; NaN and infinities have no JSON form and are
rejected, as is every other type (``float`` subclasses such as ``numpy.float64`` are
floats; convert other numpy scalars with ``.item()`` first). Parsing this text back
with :mod:`json` yields values that serialize to the same bytes, so a verifier
recomputes every hash from the parsed line, and also requires each whole line to be the
canonical serialization of what it parses to: every byte of the file is then covered
(a line re-encoded with ``1E+16`` or extra spaces is reported, even though it means the
same thing). The one exception is ``countersignatures``, see below.

Why countersignatures live outside the hashed part: a client signs the ``entry_hash``,
so its signature cannot be inside what is hashed. It needs no server protection either:
only the client's key can produce it. The server collects them between
:meth:`LedgerWriter.prepare` and :meth:`LedgerWriter.commit` and writes them on the
entry's line.

Threat model
------------
*Who can tamper.* Anyone with write access to the run directory (an operator, a
compromised storage bucket, a party handing the run over for audit), and the server
itself, which holds the signing key.

*Detected* by :func:`verify_ledger` (each problem located by line and entry index):
an edited field of an entry (``bad_hash``), an entry whose hash was recomputed after
an edit, an inserted entry that is unsigned or signed with another key, an altered
signature, a ledger re-signed with a different key (``bad_signature``), a deleted entry
(``index_gap``), moved entries (``reordered``), a copied entry (``duplicate``), a
garbled line (``malformed``), a torn last line (``truncated``), two different signed
entries for one index, a chain that does not link (``broken_chain``), and, against the
roster's keys, a released entry missing a survivor's valid countersignature
(``unwitnessed``).

*Not detected* without extra information:

* Removal of whole entries from the *end* of the ledger (or of the whole file): a
  shorter prefix of a valid chain is itself valid. Pass ``expected_entries`` and/or
  ``expected_head`` (e.g. from ``summary.json``, or better from somewhere the server
  cannot rewrite) to detect it.
* Without the clients' keys: a server that holds its own signing key can rewrite the
  *whole* ledger consistently: every entry re-hashed and re-signed with the same key
  verifies. The signature only proves "the key holder wrote this", not "this is what
  happened". What binds the server is the clients' countersignatures: each survivor
  countersigns its entry's hash (a countersignature on entry k commits to entries 0..k
  through the chain). With ``client_public_keys`` (the roster's keys, passed in as data)
  and ``require_witnesses=True``, an entry that records a release without a valid
  countersignature of every survivor is reported ``unwitnessed``: a rewritten,
  re-signed ledger and a stripped countersignature are both detected. Entries that
  record no release (aborted) remain vouched for by the server alone.
* Stripping countersignatures *without* ``require_witnesses``: they are outside the
  hash, so removing one is not detected; adding or altering one is (it will not verify
  under the client's key).
* Whether the body is *true* (e.g. that the noise recorded was the noise added): that is
  for the other audits (epsilon recomputation, transcript statistics).

The ledger has one writer. Entries are written with one ``write`` each, followed by
``flush`` and ``fsync``, so a crash leaves at worst a torn last line, which verification
reports as ``truncated``.

Reopening after a crash, and where the signing key lives
---------------------------------------------------------
:meth:`LedgerWriter.resume` verifies the whole chain (optionally against the anchors
of a checkpoint) and continues it with the *same* key, so a resumed run's ledger is one
chain under one public key. That requires the key to outlive the server process. Two
places are possible, with different costs:

* inside the run directory: convenient, but whoever receives the run (an auditor, a
  storage bucket) could then re-sign a rewritten ledger. :func:`save_private_key`
  therefore refuses to write there;
* outside it, at the server (``secure_fl.engine.checkpoint`` uses ``RUN_DIR.server/``,
  mode 0700, ``ledger.key`` mode 0600, or a directory the operator names): the run
  directory can be handed over without the means to re-sign it; the server's own disk
  must be trusted as much as its memory was. A key that never touches disk (the
  default before resumption existed) cannot be stolen from disk, but a crash then ends
  the chain: a new key would start a second, separately anchored ledger.

The countersignatures (threat model above) bind the server either way; the key only
proves who wrote an entry.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audits.errors import KeyFileError, LedgerError, LedgerVerificationError, LedgerWriteError
from audits.strict_json import loads_strict

__all__ = [
    "COUNTERSIGNATURE_LABEL",
    "GENESIS_HASH",
    "LEDGER_FILENAME",
    "PUBLIC_KEY_FILENAME",
    "SIGNATURE_LABEL",
    "LedgerEntry",
    "LedgerProblem",
    "LedgerReport",
    "LedgerWriter",
    "ProblemKind",
    "canonical_json",
    "countersign",
    "entry_hash_of",
    "generate_server_key",
    "load_ledger",
    "load_private_key",
    "load_public_key",
    "save_private_key",
    "save_public_key",
    "verify_countersignature",
    "verify_ledger",
]

LEDGER_FILENAME = "ledger.jsonl"
PUBLIC_KEY_FILENAME = "ledger_public_key.pem"
GENESIS_HASH = "0" * 64
#: Domain label of the server's signature over an entry hash.
SIGNATURE_LABEL = b"secure-fl/ledger/v1"
#: Domain label of a client's countersignature over an entry hash. Distinct from
#: :data:`SIGNATURE_LABEL` and from ``crypto.signatures``' ``b"secure-fl/v1/"`` prefix,
#: so no signature made for one purpose verifies for another.
COUNTERSIGNATURE_LABEL = b"secure-fl/ledger/participation/v1"

ProblemKind = Literal[
    "malformed",
    "bad_hash",
    "broken_chain",
    "bad_signature",
    "index_gap",
    "reordered",
    "duplicate",
    "truncated",
    "unwitnessed",
]

_HEX = frozenset("0123456789abcdef")
_REQUIRED_KEYS = frozenset({"index", "prev_hash", "body", "entry_hash", "signature"})
_OPTIONAL_KEYS = frozenset({"countersignatures"})
_HASH_HEX_LEN = 64
_SIG_HEX_LEN = 128


# --------------------------------------------------------------------------- helpers


def _generate_key() -> Ed25519PrivateKey:
    # The single entry point of randomness in this module (keys come from os.urandom
    # inside OpenSSL); tests that need fixed keys build them with from_private_bytes.
    return Ed25519PrivateKey.generate()


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX


def _check_json_value(value: object, path: str) -> None:
    """Raise :class:`LedgerWriteError` at ``path`` unless ``value`` is canonical JSON data."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LedgerWriteError(f"non-finite float {value!r} has no JSON form", location=path)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json_value(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise LedgerWriteError(
                    f"object key {key!r} is a {type(key).__name__}, not str", location=path
                )
            _check_json_value(item, f"{path}.{key}")
        return
    raise LedgerWriteError(
        f"{type(value).__name__} is not a JSON type (use dict/list/str/int/float/bool/None)",
        location=path,
    )


def canonical_json(value: Any, *, path: str = "$") -> bytes:
    """The canonical UTF-8 JSON bytes of ``value`` (see the module docstring).

    Raises :class:`~audits.errors.LedgerWriteError` naming the JSON path of the first
    value that has no canonical form (NaN, infinity, a non-``str`` key, a numpy scalar...).

    >>> canonical_json({"b": [1, 2.5], "a": "é"}).decode()
    '{"a":"é","b":[1,2.5]}'
    """
    _check_json_value(value, path)
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:  # huge ints, lone surrogates
        raise LedgerWriteError(f"no canonical JSON form: {exc}", location=path) from exc


def entry_hash_of(index: int, prev_hash: str, body: Mapping[str, Any]) -> str:
    """Hex SHA-256 of ``canonical_json({"index": index, "prev_hash": prev_hash, "body": body})``."""
    payload = canonical_json({"index": index, "prev_hash": prev_hash, "body": dict(body)})
    return hashlib.sha256(payload).hexdigest()


def _hash_bytes(entry_hash: str | bytes) -> bytes:
    if isinstance(entry_hash, bytes):
        if len(entry_hash) != 32:
            raise LedgerError("an entry hash is 32 bytes")
        return entry_hash
    if not _is_hex(entry_hash, _HASH_HEX_LEN):
        raise LedgerError("an entry hash is 64 lowercase hex characters")
    return bytes.fromhex(entry_hash)


def _sig_bytes(signature: str | bytes) -> bytes | None:
    if isinstance(signature, bytes):
        return signature if len(signature) == 64 else None
    if _is_hex(signature, _SIG_HEX_LEN):
        return bytes.fromhex(signature)
    return None


def _as_public_key(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, bytes) and len(key) == 32:
        try:
            return Ed25519PublicKey.from_public_bytes(key)
        except ValueError as exc:
            raise LedgerError("not a valid Ed25519 public key") from exc
    raise LedgerError("a public key is an Ed25519PublicKey or its 32 raw bytes")


def _verify(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


# --------------------------------------------------------------------------- keys


def generate_server_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 ledger signing key (randomness from the OS via OpenSSL)."""
    return _generate_key()


def save_public_key(
    key: Ed25519PrivateKey | Ed25519PublicKey, path: str | os.PathLike[str]
) -> Path:
    """Write the PEM (SubjectPublicKeyInfo) public key to ``path``; return the path.

    The conventional place is ``RUN_DIR / PUBLIC_KEY_FILENAME``. An existing file is left
    alone if it holds the same key and is refused (:class:`KeyFileError`) otherwise, so a
    run's public key cannot be silently swapped by a second writer.

    Note that a public key stored next to the ledger only proves self-consistency: an
    attacker who rewrites the ledger can replace both. Auditors should obtain the key
    out of band (or pin its fingerprint) when the directory itself is not trusted.
    """
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    if not isinstance(public, Ed25519PublicKey):
        raise KeyFileError("not an Ed25519 key", location=str(path))
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    target = Path(path)
    if target.exists():
        if target.read_bytes() == pem:
            return target
        raise KeyFileError("a different public key is already stored here", location=str(target))
    with open(target, "xb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return target


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key; :class:`KeyFileError` if unreadable or not Ed25519."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"cannot read public key: {exc}", location=str(path)) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("not an Ed25519 public key", location=str(path))
    return key


def save_private_key(
    key: Ed25519PrivateKey, path: str | os.PathLike[str], password: bytes | None = None
) -> Path:
    """Write the PKCS#8 PEM private key to a new file with mode 0600; return the path.

    ``password`` encrypts it (``BestAvailableEncryption``); ``None`` stores it in the
    clear. Refuses (:class:`KeyFileError`) to overwrite a file, and to write into a run
    directory (one that holds ``ledger.jsonl`` or ``ledger_public_key.pem``): whoever
    receives the run for audit must not receive the means to re-sign it.
    """
    target = Path(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("not an Ed25519 private key", location=str(target))
    parent = target.parent
    if (parent / LEDGER_FILENAME).exists() or (parent / PUBLIC_KEY_FILENAME).exists():
        raise KeyFileError(
            "refusing to store the ledger signing key inside a run directory", location=str(target)
        )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot create key file: {exc}", location=str(target)) from exc
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)  # the umask can only narrow the mode; make it exact
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return target


def load_private_key(
    path: str | os.PathLike[str], password: bytes | None = None
) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key; :class:`KeyFileError` if unreadable, wrong password or type."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=password)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError("cannot read private key", location=str(path)) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("not an Ed25519 private key", location=str(path))
    return key


# --------------------------------------------------------------------------- countersignatures


def countersign(entry_hash: str | bytes, client_signing_key: Ed25519PrivateKey) -> bytes:
    """A client's 64-byte signature of its participation in the entry ``entry_hash``.

    Signs ``COUNTERSIGNATURE_LABEL || entry_hash``. Because each entry hash commits to
    every earlier entry, a countersignature on entry k pins entries 0..k: the server can
    no longer rewrite that history without the client's signature failing.
    """
    return client_signing_key.sign(COUNTERSIGNATURE_LABEL + _hash_bytes(entry_hash))


def verify_countersignature(
    entry_hash: str | bytes,
    signature: str | bytes,
    client_public_key: Ed25519PublicKey | bytes,
) -> bool:
    """``True`` iff ``signature`` (64 bytes or 128 hex) is the client's countersignature."""
    sig = _sig_bytes(signature)
    if sig is None:
        return False
    return _verify(
        _as_public_key(client_public_key), sig, COUNTERSIGNATURE_LABEL + _hash_bytes(entry_hash)
    )


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger line. ``body`` is exactly what a verifier parses back (tuples become lists)."""

    index: int
    prev_hash: str
    body: dict[str, Any]
    entry_hash: str
    signature: str
    countersignatures: dict[str, str] = field(default_factory=dict)

    def to_line(self) -> bytes:
        """The canonical JSON line, ``\\n``-terminated."""
        obj: dict[str, Any] = {
            "index": self.index,
            "prev_hash": self.prev_hash,
            "body": self.body,
            "entry_hash": self.entry_hash,
            "signature": self.signature,
        }
        if self.countersignatures:
            obj["countersignatures"] = self.countersignatures
        return canonical_json(obj) + b"\n"


def _signed_entry(
    key: Ed25519PrivateKey, index: int, prev_hash: str, body: Mapping[str, Any]
) -> LedgerEntry:
    if not isinstance(body, Mapping):
        raise LedgerWriteError("an entry body is a JSON object (mapping)", location="body")
    normalized = json.loads(canonical_json(dict(body), path="body"))
    digest = entry_hash_of(index, prev_hash, normalized)
    signature = key.sign(SIGNATURE_LABEL + bytes.fromhex(digest)).hex()
    return LedgerEntry(index, prev_hash, normalized, digest, signature)


class LedgerWriter:
    """Appends signed entries to one ledger file. Build with :meth:`create` or :meth:`resume`.

    Example::

        key = generate_server_key()            # keep it OUTSIDE the run directory
        save_public_key(key, run_dir / PUBLIC_KEY_FILENAME)
        ledger = LedgerWriter.create(run_dir / LEDGER_FILENAME, key)
        entry = ledger.append({"version": 0, "dp_event": encode_event(event), ...})
        summary["ledger_head"], summary["ledger_entries"] = ledger.head, ledger.next_index

    With client countersignatures::

        pending = ledger.prepare(body)                       # signed, not yet written
        sigs = {cid: countersign(pending.entry_hash, k) for cid, k in clients}
        ledger.commit(pending, countersignatures=sigs)
    """

    def __init__(
        self, path: Path, signing_key: Ed25519PrivateKey, next_index: int, head: str
    ) -> None:
        # Private: use create() or resume(), which establish the (next_index, head) state.
        self._path = path
        self._key = signing_key
        self._next_index = next_index
        self._head = head
        self._broken = False

    @classmethod
    def create(cls, path: str | os.PathLike[str], signing_key: Ed25519PrivateKey) -> LedgerWriter:
        """Create a new, empty ledger at ``path``; refuse if the file already exists."""
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise LedgerWriteError("the signing key is an Ed25519PrivateKey", location=str(path))
        target = Path(path)
        try:
            with open(target, "xb") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            raise LedgerWriteError(f"cannot create ledger: {exc}", location=str(target)) from exc
        return cls(target, signing_key, 0, GENESIS_HASH)

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike[str],
        signing_key: Ed25519PrivateKey,
        *,
        expected_entries: int | None = None,
        expected_head: str | None = None,
    ) -> LedgerWriter:
        """Continue an existing ledger after verifying it under ``signing_key``'s public key.

        Raises :class:`LedgerVerificationError` (first problem) if it does not verify:
        appending to a damaged ledger would bury the damage. ``expected_entries`` and
        ``expected_head`` (e.g. from a resumed run's checkpoint) must then match the
        chain exactly: a removed tail or an entry appended behind the writer's back is
        refused too. The chain continues with the same key, so the whole ledger
        verifies under the one public key of the run.
        """
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise LedgerWriteError("the signing key is an Ed25519PrivateKey", location=str(path))
        _check_anchors(expected_entries, expected_head)
        report = verify_ledger(
            path,
            signing_key.public_key(),
            expected_entries=expected_entries,
            expected_head=expected_head,
        )
        _raise_if_bad(report)
        head = report.head if report.head is not None else GENESIS_HASH
        return cls(Path(path), signing_key, report.entries, head)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def next_index(self) -> int:
        """Index of the next entry = number of entries written."""
        return self._next_index

    @property
    def head(self) -> str:
        """``entry_hash`` of the last entry written (64 zeros when empty): the anchor to publish."""
        return self._head

    def prepare(self, body: Mapping[str, Any]) -> LedgerEntry:
        """Build and sign the next entry without writing it (to collect countersignatures)."""
        return _signed_entry(self._key, self._next_index, self._head, body)

    def commit(
        self,
        entry: LedgerEntry,
        countersignatures: Mapping[int, str | bytes] | Mapping[str, str | bytes] | None = None,
    ) -> LedgerEntry:
        """Write a prepared ``entry`` (optionally with countersignatures), flush and fsync.

        Countersignatures are checked for format only (client id -> 64-byte signature);
        the writer does not hold client keys. Returns the entry as written.
        """
        final = self._finalize(entry, countersignatures)
        self._write(final)
        self._next_index += 1
        self._head = final.entry_hash
        return final

    def _finalize(
        self,
        entry: LedgerEntry,
        countersignatures: Mapping[int, str | bytes] | Mapping[str, str | bytes] | None,
    ) -> LedgerEntry:
        """Check that ``entry`` is this writer's next entry; attach the countersignatures."""
        if self._broken:
            raise LedgerWriteError(
                "an earlier write failed; the ledger must be inspected", location=str(self._path)
            )
        if entry.index != self._next_index or entry.prev_hash != self._head:
            raise LedgerWriteError(
                f"entry {entry.index} was not prepared for position {self._next_index}",
                location=str(self._path),
            )
        own_sig = _sig_bytes(entry.signature)
        if (
            own_sig is None
            or entry.entry_hash != entry_hash_of(entry.index, entry.prev_hash, entry.body)
            or not _verify(
                self.public_key, own_sig, SIGNATURE_LABEL + _hash_bytes(entry.entry_hash)
            )
        ):
            raise LedgerWriteError(
                "entry was not prepared by this writer", location=f"entry {entry.index}"
            )
        sigs: dict[str, str] = {}
        for cid, sig in (countersignatures or {}).items():
            if isinstance(cid, bool) or not isinstance(cid, int | str) or cid == "":
                raise LedgerWriteError(
                    "client ids are int or non-empty str", location=f"countersignatures.{cid!r}"
                )
            raw = _sig_bytes(sig)
            if raw is None:
                raise LedgerWriteError(
                    "a countersignature is 64 bytes or 128 hex", location=f"countersignatures.{cid}"
                )
            sigs[str(cid)] = raw.hex()
        return LedgerEntry(
            entry.index, entry.prev_hash, entry.body, entry.entry_hash, entry.signature, sigs
        )

    def _write(self, final: LedgerEntry) -> None:
        """Append one finalized entry's line with one ``write``, flush and fsync."""
        line = final.to_line()
        try:
            with open(self._path, "ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self._broken = True
            raise LedgerWriteError(
                f"cannot append entry {final.index}: {exc}", location=str(self._path)
            ) from exc

    def append(self, body: Mapping[str, Any]) -> LedgerEntry:
        """Sign ``body`` as the next entry, write it, flush and fsync; return the entry."""
        return self.commit(self.prepare(body))


# --------------------------------------------------------------------------- verification


class LedgerProblem(NamedTuple):
    """One problem: 1-based ``line`` in the file (``len(lines) + 1`` for entries missing
    at the end), the ``entry_index`` the line claims (for anchor problems the first
    missing index; ``None`` when the line cannot be parsed), its ``kind`` and a human
    ``message``. A tuple, so ``line, entry_index, kind, message = problem`` works."""

    line: int
    entry_index: int | None
    kind: ProblemKind
    message: str


@dataclass(frozen=True)
class LedgerReport:
    """Outcome of :func:`verify_ledger`.

    ``entries`` counts the entries accepted into the chain (authentic and in order);
    ``head`` is the ``entry_hash`` of the last of them (``None`` if none); ``problems``
    are sorted by line. ``ok`` is true iff there are no problems.
    """

    path: str
    ok: bool
    entries: int
    head: str | None
    problems: tuple[LedgerProblem, ...]
    lines: int = 0
    #: With ``require_witnesses``: entries whose every survivor countersigned validly,
    #: and the number of valid countersignatures verified.
    witnessed: int = 0
    countersignatures: int = 0

    @property
    def first_problem(self) -> LedgerProblem | None:
        """The problem on the earliest line, or ``None`` for a clean ledger."""
        return self.problems[0] if self.problems else None


@dataclass
class _Line:
    number: int
    entry: LedgerEntry | None = None
    status: str = "ok"  # ok | bad_hash | damaged | duplicate | displaced


def _parse_entry(raw: bytes) -> LedgerEntry | str:
    """The entry on one line, or a message saying why it is malformed."""
    if not raw.strip():
        return "empty line"
    try:
        obj = loads_strict(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return f"not a JSON object: {exc}"
    if not isinstance(obj, dict):
        return "not a JSON object"
    keys = set(obj)
    if not _REQUIRED_KEYS <= keys or not keys <= _REQUIRED_KEYS | _OPTIONAL_KEYS:
        missing = sorted(_REQUIRED_KEYS - keys)
        extra = sorted(keys - _REQUIRED_KEYS - _OPTIONAL_KEYS)
        return f"wrong fields (missing {missing}, unexpected {extra})"
    index = obj["index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return "index is not a non-negative integer"
    if not _is_hex(obj["prev_hash"], _HASH_HEX_LEN):
        return "prev_hash is not 64 lowercase hex characters"
    if not _is_hex(obj["entry_hash"], _HASH_HEX_LEN):
        return "entry_hash is not 64 lowercase hex characters"
    if not _is_hex(obj["signature"], _SIG_HEX_LEN):
        return "signature is not 128 lowercase hex characters"
    if not isinstance(obj["body"], dict):
        return "body is not a JSON object"
    counters = obj.get("countersignatures", {})
    if not isinstance(counters, dict) or not all(
        k and _is_hex(v, _SIG_HEX_LEN) for k, v in counters.items()
    ):
        return "countersignatures is not an object of client id -> 128 hex characters"
    entry = LedgerEntry(
        index, obj["prev_hash"], obj["body"], obj["entry_hash"], obj["signature"], counters
    )
    # Byte-exact: a line must be the canonical serialization of what it parses to, so
    # every byte of the file is covered (e.g. "1E+16" for "1e+16" is refused too).
    try:
        canonical = entry.to_line()[:-1]
    except LedgerWriteError as exc:
        return f"no canonical form: {exc}"
    if canonical != raw:
        return "line is not in canonical JSON form"
    return entry


def _longest_increasing(items: list[tuple[int, int]]) -> set[int]:
    """Positions (into ``items``) of a longest strictly increasing subsequence of keys.

    ``items`` are (key, position) pairs; patience sorting, O(n log n). Among equally long
    subsequences this keeps later, smaller keys, so a displaced entry is the one flagged.
    """
    tails: list[int] = []  # key of the smallest tail of each length
    tail_pos: list[int] = []
    parent: dict[int, int | None] = {}
    for key, pos in items:
        k = bisect.bisect_left(tails, key)
        parent[pos] = tail_pos[k - 1] if k > 0 else None
        if k == len(tails):
            tails.append(key)
            tail_pos.append(pos)
        else:
            tails[k] = key
            tail_pos[k] = pos
    chosen: set[int] = set()
    cursor: int | None = tail_pos[-1] if tail_pos else None
    while cursor is not None:
        chosen.add(cursor)
        cursor = parent[cursor]
    return chosen


def _check_anchors(expected_entries: int | None, expected_head: str | None) -> None:
    if expected_entries is not None and (
        isinstance(expected_entries, bool)
        or not isinstance(expected_entries, int)
        or expected_entries < 0
    ):
        raise LedgerError("expected_entries is a non-negative int", location="expected_entries")
    if expected_head is not None and not _is_hex(expected_head, _HASH_HEX_LEN):
        raise LedgerError("expected_head is 64 lowercase hex characters", location="expected_head")


def verify_ledger(
    path: str | os.PathLike[str],
    public_key: Ed25519PublicKey | bytes,
    *,
    expected_entries: int | None = None,
    expected_head: str | None = None,
    client_public_keys: Mapping[int, Ed25519PublicKey | bytes]
    | Mapping[str, Ed25519PublicKey | bytes]
    | None = None,
    require_witnesses: bool = False,
) -> LedgerReport:
    """Verify ``ledger.jsonl`` at ``path`` under the server's ``public_key``.

    Never raises because of the file's content: every defect becomes a
    :class:`LedgerProblem` in the returned report. (Invalid *arguments*, such as a
    malformed ``expected_head``, raise :class:`LedgerError`.)

    Steps:

    1. Each line is parsed strictly (UTF-8, JSON without duplicate keys or NaN, exactly
       the entry fields, byte-for-byte in canonical form) -> ``malformed``; an unparseable *last* line without its
       newline -> ``truncated`` (torn write or cut file).
    2. The server signature over the stored ``entry_hash`` -> ``bad_signature``
       (forged or inserted entry, altered signature, wrong key / re-signed ledger).
       With ``client_public_keys``, every countersignature is checked too (a missing
       key or a failing signature -> ``bad_signature`` naming the client).
    3. A second line with an already-seen signed ``entry_hash`` -> ``duplicate``.
    4. The recomputed hash of {index, prev_hash, body} against the stored, signed one
       -> ``bad_hash`` (a field edited after signing).
    5. Order: the longest run of signed entries whose indices increase along the file
       is the chain; signed entries outside it -> ``reordered`` (or ``broken_chain`` if
       they conflict with a chain entry of the same index: the key holder forked).
       Along the chain, a skipped index not explained by a damaged line or a moved
       entry -> ``index_gap``; a ``prev_hash`` that is not the previous entry's hash
       -> ``broken_chain``.
    6. Anchors: ``expected_entries`` (entry count) and ``expected_head`` (hash of the
       last entry), e.g. from ``summary.json``: a shorter chain or an unknown head
       -> ``truncated``; extra entries after the anchor -> ``broken_chain``.
    7. Witnesses (``require_witnesses``, with ``client_public_keys`` = the roster's
       keys, passed in as data): every entry that records a release (a non-empty
       ``body.survivors`` and no ``body.aborted``) must carry a valid countersignature
       of each survivor -> otherwise ``unwitnessed``, naming the entry and the
       survivors whose signature is missing or invalid. A ledger the server rewrote and
       re-signed with its own key fails here: the clients' signatures are over the
       original entry hashes, which the rewrite changed.
    """
    pub = _as_public_key(public_key)
    _check_anchors(expected_entries, expected_head)
    client_keys = {str(k): _as_public_key(v) for k, v in (client_public_keys or {}).items()}

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        problem = LedgerProblem(0, None, "truncated", f"cannot read the ledger file: {exc}")
        return LedgerReport(str(path), False, 0, None, (problem,), 0)
    return _verify_data(
        data,
        str(path),
        pub,
        expected_entries,
        expected_head,
        client_keys if client_public_keys is not None else None,
        require_witnesses,
    )


def _verify_data(
    data: bytes,
    path: str,
    pub: Ed25519PublicKey,
    expected_entries: int | None,
    expected_head: str | None,
    client_keys: dict[str, Ed25519PublicKey] | None,
    require_witnesses: bool = False,
) -> LedgerReport:
    if require_witnesses and client_keys is None:
        raise LedgerError("require_witnesses needs the roster's client_public_keys", location="client_public_keys")
    problems: list[LedgerProblem] = []
    witnessed = 0
    valid_countersignatures = 0
    raw_lines = data.split(b"\n")
    terminated = data.endswith(b"\n") or not data
    if terminated:
        raw_lines = raw_lines[:-1]

    lines: list[_Line] = []
    seen_hashes: dict[str, int] = {}
    for i, raw in enumerate(raw_lines):
        number = i + 1
        is_torn = not terminated and i == len(raw_lines) - 1
        line = _Line(number)
        lines.append(line)
        parsed = _parse_entry(raw)
        if isinstance(parsed, str):
            line.status = "damaged"
            if is_torn:
                problems.append(
                    LedgerProblem(number, None, "truncated", f"last line is cut off ({parsed})")
                )
            else:
                problems.append(LedgerProblem(number, None, "malformed", parsed))
            continue
        line.entry = parsed
        if is_torn:
            problems.append(
                LedgerProblem(
                    number, parsed.index, "truncated", "last line lacks its newline terminator"
                )
            )
        if not _verify(
            pub, bytes.fromhex(parsed.signature), SIGNATURE_LABEL + bytes.fromhex(parsed.entry_hash)
        ):
            line.status = "damaged"
            problems.append(
                LedgerProblem(
                    number,
                    parsed.index,
                    "bad_signature",
                    "server signature does not verify (forged/inserted entry, altered signature, or wrong public key)",
                )
            )
            continue
        if client_keys is not None:
            valid: set[str] = set()
            bad: list[LedgerProblem] = []
            for cid, sig in sorted(parsed.countersignatures.items()):
                ckey = client_keys.get(cid)
                if ckey is None:
                    why = f"countersignature from unknown client {cid}"
                elif verify_countersignature(parsed.entry_hash, sig, ckey):
                    valid.add(cid)
                    continue
                else:
                    why = f"countersignature of client {cid} does not verify"
                bad.append(LedgerProblem(number, parsed.index, "bad_signature", why))
            valid_countersignatures += len(valid)
            absent = _unwitnessed(parsed.body, valid) if require_witnesses else []
            if absent is None:
                witnessed += 1
            elif absent:  # first, so the report names the entry before its details
                shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
                problems.append(
                    LedgerProblem(
                        number,
                        parsed.index,
                        "unwitnessed",
                        f"entry {parsed.index} lacks valid countersignatures of survivors {shown} "
                        "(rewritten by the server, or a countersignature removed)",
                    )
                )
            problems.extend(bad)
        if parsed.entry_hash in seen_hashes:
            line.status = "duplicate"
            problems.append(
                LedgerProblem(
                    number,
                    parsed.index,
                    "duplicate",
                    f"copy of the entry on line {seen_hashes[parsed.entry_hash]}",
                )
            )
            continue
        seen_hashes[parsed.entry_hash] = number
        try:
            recomputed = entry_hash_of(parsed.index, parsed.prev_hash, parsed.body)
        except LedgerWriteError as exc:  # e.g. a number too large to be a finite float
            line.status = "damaged"
            problems.append(
                LedgerProblem(
                    number, parsed.index, "malformed", f"body has no canonical form: {exc}"
                )
            )
            continue
        if recomputed != parsed.entry_hash:
            line.status = "bad_hash"
            problems.append(
                LedgerProblem(
                    number,
                    parsed.index,
                    "bad_hash",
                    "content does not match its signed entry_hash (edited after signing)",
                )
            )

    # Order: the chain is a longest index-increasing run of signed entries.
    candidates = [
        (ln.entry.index, pos)
        for pos, ln in enumerate(lines)
        if ln.entry is not None and ln.status in ("ok", "bad_hash")
    ]
    chain_positions = _longest_increasing(candidates)
    chain_index_line: dict[int, int] = {}
    for pos in sorted(chain_positions):
        entry = lines[pos].entry
        if entry is not None:
            chain_index_line[entry.index] = lines[pos].number
    displaced: set[int] = set()
    for _, pos in candidates:
        if pos in chain_positions:
            continue
        ln = lines[pos]
        entry = ln.entry
        if entry is None:
            continue
        ln.status = "displaced"
        if entry.index in chain_index_line:
            problems.append(
                LedgerProblem(
                    ln.number,
                    entry.index,
                    "broken_chain",
                    f"a different signed entry for index {entry.index} is on line {chain_index_line[entry.index]} (forked chain)",
                )
            )
        else:
            displaced.add(entry.index)
            problems.append(
                LedgerProblem(
                    ln.number, entry.index, "reordered", f"entry {entry.index} is out of order"
                )
            )

    expected = 0
    head = GENESIS_HASH
    damaged_since = 0
    accepted = 0
    last_line = 0
    for pos, ln in enumerate(lines):
        if ln.status == "damaged":
            damaged_since += 1
            continue
        if pos not in chain_positions or ln.entry is None:
            continue
        entry = ln.entry
        if entry.index > expected:
            missing = [i for i in range(expected, entry.index) if i not in displaced]
            if len(missing) > damaged_since:
                shown = f"{missing[0]}" if len(missing) == 1 else f"{missing[0]}..{missing[-1]}"
                problems.append(
                    LedgerProblem(
                        ln.number,
                        entry.index,
                        "index_gap",
                        f"entry {shown} missing before entry {entry.index}",
                    )
                )
        elif entry.prev_hash != head and ln.status != "bad_hash":
            problems.append(
                LedgerProblem(
                    ln.number,
                    entry.index,
                    "broken_chain",
                    "prev_hash is not the previous entry's hash",
                )
            )
        expected = entry.index + 1
        head = entry.entry_hash
        damaged_since = 0
        accepted += 1
        last_line = ln.number

    end_line = len(lines) + 1
    final_head = head if accepted else None
    if expected_entries is not None:
        if expected < expected_entries:
            problems.append(
                LedgerProblem(
                    end_line,
                    expected,
                    "truncated",
                    f"anchor expects {expected_entries} entries, the chain holds {expected}: tail removed",
                )
            )
        elif expected > expected_entries:
            extra_line = chain_index_line.get(expected_entries, last_line)
            problems.append(
                LedgerProblem(
                    extra_line,
                    expected_entries,
                    "broken_chain",
                    f"anchor expects {expected_entries} entries, the chain has {expected}: entries appended after the anchor",
                )
            )
    if expected_head is not None and expected_head != final_head:
        anchored_line = next(
            (
                ln.number
                for pos, ln in enumerate(lines)
                if pos in chain_positions
                and ln.entry is not None
                and ln.entry.entry_hash == expected_head
            ),
            None,
        )
        if anchored_line is not None:
            problems.append(
                LedgerProblem(
                    anchored_line + 1,
                    None,
                    "broken_chain",
                    f"anchored head is the entry on line {anchored_line}, but entries follow it",
                )
            )
        else:
            problems.append(
                LedgerProblem(
                    end_line,
                    expected,
                    "truncated",
                    "anchored head hash is not in the ledger: tail removed or ledger rewritten",
                )
            )

    problems.sort(key=lambda p: p.line)
    return LedgerReport(
        path, not problems, accepted, final_head, tuple(problems), len(lines), witnessed, valid_countersignatures
    )


def _unwitnessed(body: Mapping[str, Any], valid: set[str]) -> list[str] | None:
    """Survivors of a released aggregation without a valid countersignature (``[]``:
    nothing released, nothing to witness; ``None``: every survivor countersigned)."""
    survivors = body.get("survivors")
    if body.get("aborted") or not isinstance(survivors, list) or not survivors:
        return []
    missing = [str(s) for s in survivors if str(s) not in valid]
    return missing or None


def _raise_if_bad(report: LedgerReport) -> None:
    first = report.first_problem
    if first is not None:
        raise LedgerVerificationError(
            f"ledger fails verification: {first.kind}: {first.message}",
            line=first.line,
            entry_index=first.entry_index,
            kind=first.kind,
        )


def load_ledger(
    path: str | os.PathLike[str],
    public_key: Ed25519PublicKey | bytes,
    *,
    expected_entries: int | None = None,
    expected_head: str | None = None,
) -> list[LedgerEntry]:
    """The entries of a ledger that verifies cleanly; otherwise raise
    :class:`LedgerVerificationError` describing the first problem."""
    pub = _as_public_key(public_key)
    _check_anchors(expected_entries, expected_head)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LedgerVerificationError(
            f"cannot read the ledger file: {exc}", line=0, entry_index=None, kind="truncated"
        ) from exc
    report = _verify_data(data, str(path), pub, expected_entries, expected_head, None)
    _raise_if_bad(report)
    entries: list[LedgerEntry] = []
    for raw in data.split(b"\n")[:-1]:
        parsed = _parse_entry(raw)
        if isinstance(parsed, LedgerEntry):  # always, since the same bytes verified
            entries.append(parsed)
    return entries
