"""Messages of the SecAgg / SecAgg+ protocol and the public round configuration.

Every message is a frozen dataclass that carries the session id, the round number and
(through its type) the protocol stage, and validates its own fields on construction,
raising :class:`~crypto.errors.RemoteProtocolError` naming the sender, because the
usual way a message comes into existence is :func:`crypto.secagg.wire.decode` of
bytes from a peer. Membership checks (is this sender in the cohort? is this the stage
I am in?) are the job of the state machines, which know the cohort.

Uplink (client -> server) messages have ``sender``; downlink (server -> client)
messages have ``recipient``. :class:`Deadline` is a local event the transport hands to
the server when a stage's waiting time is over (the state machines have no clock).

Round structure (Bonawitz et al. CCS'17, Fig. 4; SecAgg+ graph of Bell et al. CCS'20):

=============  ===========================  ==============================
stage          server -> client             client -> server
=============  ===========================  ==============================
ADVERTISE      RoundStart                   AdvertiseKeys (signed c_pk, s_pk)
SHARE_KEYS     KeyBroadcast (signed keys)   EncryptedShares (AEAD shares)
CHECK_SHARES   ShareBundle (ciphertexts)    ShareReceipt (complaints)
MASKED_INPUT   MaskRequest (included set)   MaskedInput (y_u, b bits/coord)
CONSISTENCY    ConsistencyRequest (U3)      ConsistencySignature
UNMASK         UnmaskRequest (U3, sigs)     UnmaskShares (b_v or s_sk_v shares)
=============  ===========================  ==============================
"""

from __future__ import annotations

import hashlib
import operator
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from crypto.errors import LocalProtocolError, RemoteProtocolError
from crypto.key_agreement import hkdf_sha256
from crypto.secagg.graph import effective_degree, neighbor_graph
from crypto.secagg.parameters import check_parameters
from crypto.secagg.stages import Role, Stage
from crypto.shamir import PRIME

__all__ = [
    "MAX_BITS",
    "SHARE_CIPHERTEXT_BYTES",
    "SHARE_PLAINTEXT_BYTES",
    "TRANSITIONS",
    "AdvertiseKeys",
    "ConsistencyRequest",
    "ConsistencySignature",
    "Deadline",
    "DownlinkMessage",
    "EncryptedShares",
    "KeyBroadcast",
    "MaskRequest",
    "MaskedInput",
    "Message",
    "RoundConfig",
    "RoundStart",
    "ShareBundle",
    "ShareReceipt",
    "UnmaskRequest",
    "UnmaskShares",
    "UplinkMessage",
    "advertise_payload",
    "consistency_payload",
    "consistency_prefix",
    "index_list",
    "mask_set_payload",
]

MAX_BITS = 62
_U32 = 1 << 32
# plaintext of one encrypted share: owner u32 || holder u32 || b-share 33 || s-share 33
SHARE_PLAINTEXT_BYTES = 4 + 4 + 33 + 33
SHARE_CIPHERTEXT_BYTES = 12 + SHARE_PLAINTEXT_BYTES + 16
_MAX_CIPHERTEXT_BYTES = 4096


# -- validation helpers -----------------------------------------------------------------
def _bad(sender: int | None, what: str) -> RemoteProtocolError:
    return RemoteProtocolError(what, sender=sender)


_INT_TYPE = {int}


def _is_int(v: object) -> bool:
    return type(v) is int  # exactly int: excludes bool (and every other subclass)


def _check_index(v: object, name: str, who: int | None) -> None:
    if type(v) is not int or not 0 <= v < _U32:
        raise _bad(who, f"{name} must be an integer in [0, 2**32), got {v!r}")


def _check_bytes(v: object, name: str, who: int | None, *, size: int) -> None:
    if not isinstance(v, bytes) or len(v) != size:
        raise _bad(who, f"{name} must be exactly {size} bytes")


def _check_sorted_indices(v: object, name: str, who: int | None) -> None:
    if not isinstance(v, tuple):
        raise _bad(who, f"{name} must be a tuple of indices")
    # type(x) is int excludes bool; strictly increasing + bounds at both ends covers all
    # (map over C functions: these lists are long and checked on every decode)
    if v and not (
        set(map(type, v)) == _INT_TYPE
        and 0 <= v[0]
        and v[-1] < _U32
        and all(map(operator.lt, v, v[1:]))
    ):
        raise _bad(who, f"{name} must be strictly increasing integers in [0, 2**32)")


def _check_pairs(v: object, name: str, who: int | None) -> tuple[tuple[int, object], ...]:
    if not isinstance(v, tuple):
        raise _bad(who, f"{name} must be a tuple of (index, value) pairs")
    for item in v:
        if not isinstance(item, tuple) or len(item) != 2:
            raise _bad(who, f"{name} must hold (index, value) pairs")
        _check_index(item[0], name, who)
    keys = [item[0] for item in v]
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        raise _bad(who, f"{name} indices must be strictly increasing (no duplicates)")
    return v


def _check_session(session_id: object, round_number: object, who: int | None) -> None:
    if not isinstance(session_id, bytes) or not 16 <= len(session_id) <= 64:
        raise _bad(who, "session id must be 16..64 bytes")
    _check_index(round_number, "round number", who)


def advertise_payload(session_id: bytes, round_number: int, sender: int, c_pk: bytes, s_pk: bytes) -> bytes:
    """Bytes a client signs when advertising its keys (fixed-width fields)."""
    return bytes([len(session_id)]) + session_id + struct.pack(">II", round_number, sender) + c_pk + s_pk


def consistency_prefix(session_id: bytes, round_number: int, joint_seed: bytes, survivors: Sequence[int]) -> bytes:
    """The part of :func:`consistency_payload` that every signer of one view shares."""
    return (
        bytes([len(session_id)])
        + session_id
        + joint_seed
        + struct.pack(f">II{len(survivors)}I", round_number, len(survivors), *survivors)
    )


def index_list(indices: Sequence[int]) -> bytes:
    """``len || indices`` as big-endian u32 (the length prefix makes concatenations injective)."""
    return struct.pack(f">I{len(indices)}I", len(indices), *indices)


def consistency_payload(
    session_id: bytes, round_number: int, joint_seed: bytes, survivors: Sequence[int], mask_set: Sequence[int]
) -> bytes:
    """Bytes a client signs in the consistency check: (session, round, joint graph seed,
    sorted U3, and its own sorted mask set ``M_u``).

    One signature covers both the survivor set (the cohort quorum) and the signer's
    mask partners (the release rule for its self-mask shares), so a verifier that
    counts a signer towards the quorum also learns that signer's authenticated ``M_u``.
    Both lists are length-prefixed, so the encoding is injective.
    """
    return consistency_prefix(session_id, round_number, joint_seed, survivors) + index_list(mask_set)


def mask_set_payload(
    session_id: bytes, round_number: int, joint_seed: bytes, owner: int, mask_set: Sequence[int]
) -> bytes:
    """Bytes a client signs with its masked input: the partners ``M_u`` it masked with."""
    return (
        bytes([len(session_id)])
        + session_id
        + joint_seed
        + struct.pack(f">III{len(mask_set)}I", round_number, owner, len(mask_set), *mask_set)
    )


# -- configuration ------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RoundConfig:
    """Public, agreed set-up of one aggregation round (the signed cohort set-up).

    ``identity_keys[i]`` is client ``i``'s Ed25519 public key; ``neighbors=None`` is
    the complete graph (SecAgg), an integer ``k`` the SecAgg+ graph. ``threshold`` is
    Shamir's ``t`` within each client's holder set ``N(u) ∪ {u}`` (``h = k + 1``
    clients) and ``max_colluders`` the number ``c`` of clients assumed to collude with
    the server; :func:`crypto.secagg.parameters.check_parameters` enforces
    ``2t > h + c`` (per-owner consistency: two disjoint-enough groups of signers can
    never both reach ``t``, Bonawitz et al. section 4) and ``h >= t + c``.

    ``graph_seed`` is the set-up's salt for the graph; the graph itself is drawn from
    :meth:`joint_graph_seed`, a hash of this salt and of every signed key
    advertisement of the round, so the server cannot choose it alone.
    """

    session_id: bytes
    round_number: int
    bits: int
    length: int
    threshold: int
    identity_keys: tuple[bytes, ...]
    graph_seed: bytes
    neighbors: int | None = None
    max_colluders: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, bytes) or not 16 <= len(self.session_id) <= 64:
            raise LocalProtocolError("session_id must be 16..64 bytes")
        if not _is_int(self.round_number) or not 0 <= self.round_number < _U32:
            raise LocalProtocolError("round_number must be in [0, 2**32)")
        if not _is_int(self.bits) or not 1 <= self.bits <= MAX_BITS:
            raise LocalProtocolError(f"bits must be an integer in [1, {MAX_BITS}], got {self.bits!r}")
        if not _is_int(self.length) or self.length < 1:
            raise LocalProtocolError(f"length must be a positive integer, got {self.length!r}")
        n = len(self.identity_keys)
        if n < 2:
            raise LocalProtocolError("secure aggregation needs a cohort of at least 2 clients")
        for pk in self.identity_keys:
            if not isinstance(pk, bytes) or len(pk) != 32:
                raise LocalProtocolError("identity_keys must be 32-byte Ed25519 public keys")
        if len(set(self.identity_keys)) != n:
            raise LocalProtocolError("identity_keys must be distinct")
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) != 32:
            raise LocalProtocolError("graph_seed must be 32 bytes")
        effective_degree(n, self.neighbors)  # validates neighbors
        params = check_parameters(n, self.neighbors, self.threshold, self.max_colluders)
        object.__setattr__(self, "_quorum", params.quorum)

    @property
    def n(self) -> int:
        """Cohort size."""
        return len(self.identity_keys)

    @property
    def holders_per_client(self) -> int:
        """``h = k + 1``: every client's holder set has this size (the graph is regular)."""
        return effective_degree(self.n, self.neighbors) + 1

    @property
    def quorum(self) -> int:
        """Cohort-wide consistency quorum ``q = floor((n + c) / 2) + 1``."""
        q: int = object.__getattribute__(self, "_quorum")
        return q

    def joint_graph_seed(self, advertisements: Sequence[AdvertiseKeys]) -> bytes:
        """``HKDF(graph_seed, info = label || SHA-256(every signed advertisement))``.

        The advertisements are hashed in sender order, each as sender, both public keys
        and its Ed25519 signature, after the session and round; every honest client
        that received the same advertisements derives the same graph, and the digest is
        bound into each consistency signature so clients with different views never
        count each other's signatures.
        """
        h = hashlib.sha256(b"secure-fl/secagg/v1/advertisements" + bytes([len(self.session_id)]) + self.session_id)
        h.update(struct.pack(">II", self.round_number, len(advertisements)))
        for a in advertisements:
            h.update(struct.pack(">I", a.sender) + a.c_pk + a.s_pk + a.signature)
        return hkdf_sha256(self.graph_seed, info=b"secure-fl/secagg/v1/joint-graph" + h.digest())

    def graph(self, joint_seed: bytes) -> tuple[frozenset[int], ...]:
        """``N(u)`` for every ``u`` under the joint seed of the round."""
        return neighbor_graph(joint_seed, self.n, self.neighbors)

    @property
    def mask_dtype(self) -> type[np.unsignedinteger]:
        """Arithmetic dtype: uint32 (b <= 32) or uint64; sums wrap mod 2^32 / 2^64."""
        return np.uint32 if self.bits <= 32 else np.uint64


# -- messages -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """Common fields: the session and round a message belongs to."""

    STAGE: ClassVar[Stage]
    session_id: bytes
    round_number: int

    @property
    def stage(self) -> Stage:
        """The protocol stage this message type belongs to."""
        return self.STAGE

    @property
    def party(self) -> int | None:
        """The sender (uplink) or recipient (downlink)."""
        return None


@dataclass(frozen=True, kw_only=True, slots=True)
class UplinkMessage(Message):
    """A client -> server message."""

    sender: int

    def __post_init__(self) -> None:
        _check_index(self.sender, "sender", None)
        _check_session(self.session_id, self.round_number, self.sender)

    @property
    def party(self) -> int | None:
        return self.sender


@dataclass(frozen=True, kw_only=True, slots=True)
class DownlinkMessage(Message):
    """A server -> client message (``sender=None`` in errors means the server)."""

    recipient: int

    def __post_init__(self) -> None:
        _check_index(self.recipient, "recipient", None)
        _check_session(self.session_id, self.round_number, None)

    @property
    def party(self) -> int | None:
        return self.recipient


@dataclass(frozen=True, kw_only=True, slots=True)
class Deadline(Message):
    """Local event: the waiting time of ``waiting_for`` is over; absent peers dropped."""

    STAGE: ClassVar[Stage] = Stage.ADVERTISE
    waiting_for: Stage

    def __post_init__(self) -> None:
        _check_session(self.session_id, self.round_number, None)
        if not isinstance(self.waiting_for, Stage):
            raise LocalProtocolError("Deadline.waiting_for must be a Stage")

    @property
    def stage(self) -> Stage:
        return self.waiting_for


@dataclass(frozen=True, kw_only=True, slots=True)
class RoundStart(DownlinkMessage):
    """Round 0 trigger: the server invites a cohort member to advertise keys."""

    STAGE: ClassVar[Stage] = Stage.ADVERTISE


@dataclass(frozen=True, kw_only=True, slots=True)
class AdvertiseKeys(UplinkMessage):
    """Round 0: ``(c_pk, s_pk)`` signed with the client's Ed25519 identity key."""

    STAGE: ClassVar[Stage] = Stage.ADVERTISE
    c_pk: bytes
    s_pk: bytes
    signature: bytes

    def __post_init__(self) -> None:
        UplinkMessage.__post_init__(self)
        _check_bytes(self.c_pk, "c_pk", self.sender, size=32)
        _check_bytes(self.s_pk, "s_pk", self.sender, size=32)
        _check_bytes(self.signature, "signature", self.sender, size=64)
        if self.c_pk == self.s_pk:
            raise _bad(self.sender, "c_pk and s_pk must differ")

    def payload(self) -> bytes:
        """The signed bytes."""
        return advertise_payload(self.session_id, self.round_number, self.sender, self.c_pk, self.s_pk)


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyBroadcast(DownlinkMessage):
    """Round 1 trigger: every signed key advertisement the server accepted (all of U1).

    All of them, not only the recipient's neighbours: the graph is drawn from a hash
    of the whole set (:meth:`RoundConfig.joint_graph_seed`).
    """

    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS
    keys: tuple[AdvertiseKeys, ...]

    def __post_init__(self) -> None:
        DownlinkMessage.__post_init__(self)
        if not isinstance(self.keys, tuple) or (self.keys and set(map(type, self.keys)) != {AdvertiseKeys}):
            raise _bad(None, "keys must be a tuple of AdvertiseKeys")
        senders = [k.sender for k in self.keys]
        if any(a >= b for a, b in zip(senders, senders[1:], strict=False)):
            raise _bad(None, "keys must be sorted by sender without duplicates")


@dataclass(frozen=True, kw_only=True, slots=True)
class EncryptedShares(UplinkMessage):
    """Round 1: AEAD ciphertexts of ``(b_u, s_sk_u)`` shares, one per neighbour.

    ``commitment = SHA-256(label || session || round || u || b_u)`` lets the server
    check the self-mask seed it reconstructs.
    """

    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS
    commitment: bytes
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        UplinkMessage.__post_init__(self)
        _check_bytes(self.commitment, "commitment", self.sender, size=32)
        for _, ct in _check_pairs(self.ciphertexts, "ciphertexts", self.sender):
            _check_bytes(ct, "share ciphertext", self.sender, size=SHARE_CIPHERTEXT_BYTES)


@dataclass(frozen=True, kw_only=True, slots=True)
class ShareBundle(DownlinkMessage):
    """Round 1.5 trigger: the ciphertexts addressed to the recipient, by owner."""

    STAGE: ClassVar[Stage] = Stage.CHECK_SHARES
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        DownlinkMessage.__post_init__(self)
        for _, ct in _check_pairs(self.ciphertexts, "ciphertexts", None):
            if not isinstance(ct, bytes) or len(ct) > _MAX_CIPHERTEXT_BYTES:
                raise _bad(None, "a share ciphertext must be bytes of bounded length")


@dataclass(frozen=True, kw_only=True, slots=True)
class ShareReceipt(UplinkMessage):
    """Round 1.5: the owners whose ciphertexts failed to decrypt or parse."""

    STAGE: ClassVar[Stage] = Stage.CHECK_SHARES
    complaints: tuple[int, ...]

    def __post_init__(self) -> None:
        UplinkMessage.__post_init__(self)
        _check_sorted_indices(self.complaints, "complaints", self.sender)


@dataclass(frozen=True, kw_only=True, slots=True)
class MaskRequest(DownlinkMessage):
    """Round 2 trigger: the recipient's holder-set members included in masking."""

    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT
    included: tuple[int, ...]

    def __post_init__(self) -> None:
        DownlinkMessage.__post_init__(self)
        _check_sorted_indices(self.included, "included", None)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class MaskedInput(UplinkMessage):
    """Round 2: ``y_u`` in Z_{2^bits}^d (1-D uint32 for b <= 32, uint64 above).

    ``mask_set`` is ``M_u``, the partners ``u`` masked with, and ``mask_signature`` its
    Ed25519 signature over :func:`mask_set_payload`: a client releases a share of
    ``b_u`` only after checking that enough of them survived.
    """

    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT
    bits: int
    vector: npt.NDArray[np.unsignedinteger]
    mask_set: tuple[int, ...] = ()
    mask_signature: bytes = bytes(64)

    def __post_init__(self) -> None:
        UplinkMessage.__post_init__(self)
        _check_sorted_indices(self.mask_set, "mask_set", self.sender)
        _check_bytes(self.mask_signature, "mask_signature", self.sender, size=64)
        if not _is_int(self.bits) or not 1 <= self.bits <= MAX_BITS:
            raise _bad(self.sender, f"bits must be in [1, {MAX_BITS}]")
        v = self.vector
        want = np.uint32 if self.bits <= 32 else np.uint64
        if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype != want or v.size < 1:
            raise _bad(self.sender, f"masked vector must be a non-empty 1-D {np.dtype(want)} array")
        if self.bits not in (32, 64) and int(v.max()) >> self.bits:
            raise _bad(self.sender, f"masked vector has values outside [0, 2**{self.bits})")
        if v.flags.writeable:
            view = v.view()
            view.flags.writeable = False
            object.__setattr__(self, "vector", view)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsistencyRequest(DownlinkMessage):
    """Round 3 trigger: the survivor set U3 (clients whose masked input arrived)."""

    STAGE: ClassVar[Stage] = Stage.CONSISTENCY
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        DownlinkMessage.__post_init__(self)
        _check_sorted_indices(self.survivors, "survivors", None)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsistencySignature(UplinkMessage):
    """Round 3: the client's signature over ``(session, round, U3)``."""

    STAGE: ClassVar[Stage] = Stage.CONSISTENCY
    signature: bytes

    def __post_init__(self) -> None:
        UplinkMessage.__post_init__(self)
        _check_bytes(self.signature, "signature", self.sender, size=64)


@dataclass(frozen=True, kw_only=True, slots=True)
class UnmaskRequest(DownlinkMessage):
    """Round 4 trigger: U3 again; consistency signatures over it as ``(signer, M_signer,
    signature)`` triples (a cohort quorum that covers ``t`` holders of every owner the
    recipient releases for; each signature covers U3 and the signer's own mask set,
    :func:`consistency_payload`); and, for surviving owners among the recipient's
    partners whose consistency signature is not among them, their mask sets signed with
    the masked input ``(owner, M_owner, signature)`` (:func:`mask_set_payload`)."""

    STAGE: ClassVar[Stage] = Stage.UNMASK
    survivors: tuple[int, ...]
    signatures: tuple[tuple[int, tuple[int, ...], bytes], ...]
    mask_sets: tuple[tuple[int, tuple[int, ...], bytes], ...] = ()

    def __post_init__(self) -> None:
        DownlinkMessage.__post_init__(self)
        _check_sorted_indices(self.survivors, "survivors", None)
        _check_triples(self.signatures, "signatures")
        _check_triples(self.mask_sets, "mask_sets")

    @classmethod
    def from_server(
        cls,
        *,
        session_id: bytes,
        round_number: int,
        recipient: int,
        survivors: tuple[int, ...],
        signatures: tuple[tuple[int, tuple[int, ...], bytes], ...],
        mask_sets: tuple[tuple[int, tuple[int, ...], bytes], ...] = (),
    ) -> UnmaskRequest:
        """Built by the honest server from values it has already checked, without the
        field checks of ``__init__`` (90 requests of ~50 signatures each cost ~20 ms at
        n = 100). Nothing is trusted on the strength of this: the recipient decodes the
        request from the wire (:func:`crypto.secagg.wire.decode`), which runs every check."""
        given = {"session_id": session_id, "round_number": round_number, "recipient": recipient,
                 "survivors": survivors, "signatures": signatures, "mask_sets": mask_sets}
        obj = object.__new__(cls)  # its parameters are the dataclass fields (tested)
        for name, value in given.items():
            object.__setattr__(obj, name, value)
        return obj


def _check_triples(v: object, name: str) -> None:
    """``((index, sorted indices, 64-byte signature), ...)`` strictly increasing by index."""
    if not isinstance(v, tuple):
        raise _bad(None, f"{name} must be a tuple")
    for item in v:
        if type(item) is not tuple or len(item) != 3:
            raise _bad(None, f"{name} must hold (index, members, signature) triples")
        index, members, sig = item
        if type(index) is not int or not 0 <= index < _U32:
            raise _bad(None, f"{name} index must be an integer in [0, 2**32), got {index!r}")
        _check_sorted_indices(members, f"{name} members", None)
        if type(sig) is not bytes or len(sig) != 64:
            raise _bad(None, f"{name} signature must be exactly 64 bytes")
    if not all(map(operator.lt, [x[0] for x in v], [x[0] for x in v[1:]])):
        raise _bad(None, f"{name} indices must be strictly increasing")


@dataclass(frozen=True, kw_only=True, slots=True)
class UnmaskShares(UplinkMessage):
    """Round 4: shares of ``b_v`` for surviving owners, of ``s_sk_v`` for dropped ones."""

    STAGE: ClassVar[Stage] = Stage.UNMASK
    self_mask_shares: tuple[tuple[int, int], ...]
    key_shares: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        UplinkMessage.__post_init__(self)
        for name, pairs in (("self_mask_shares", self.self_mask_shares), ("key_shares", self.key_shares)):
            for _, y in _check_pairs(pairs, name, self.sender):
                if not _is_int(y) or not 0 <= y < PRIME:  # type: ignore[operator]
                    raise _bad(self.sender, f"{name} values must be integers in [0, P)")
        both = {o for o, _ in self.self_mask_shares} & {o for o, _ in self.key_shares}
        if both:
            raise _bad(self.sender, f"both shares released for owners {sorted(both)}")


# -- the transition table ---------------------------------------------------------------
def _transitions() -> dict[tuple[Role, Stage, type[Message]], Stage]:
    c, s = Role.CLIENT, Role.SERVER
    table: dict[tuple[Role, Stage, type[Message]], Stage] = {
        (c, Stage.ADVERTISE, RoundStart): Stage.SHARE_KEYS,
        (c, Stage.SHARE_KEYS, KeyBroadcast): Stage.CHECK_SHARES,
        (c, Stage.CHECK_SHARES, ShareBundle): Stage.MASKED_INPUT,
        (c, Stage.MASKED_INPUT, MaskRequest): Stage.CONSISTENCY,
        (c, Stage.CONSISTENCY, ConsistencyRequest): Stage.UNMASK,
        (c, Stage.UNMASK, UnmaskRequest): Stage.DONE,
    }
    collect: tuple[tuple[Stage, type[Message], Stage], ...] = (
        (Stage.ADVERTISE, AdvertiseKeys, Stage.SHARE_KEYS),
        (Stage.SHARE_KEYS, EncryptedShares, Stage.CHECK_SHARES),
        (Stage.CHECK_SHARES, ShareReceipt, Stage.MASKED_INPUT),
        (Stage.MASKED_INPUT, MaskedInput, Stage.CONSISTENCY),
        (Stage.CONSISTENCY, ConsistencySignature, Stage.UNMASK),
        (Stage.UNMASK, UnmaskShares, Stage.DONE),
    )
    for stage, uplink, after in collect:
        # the server stays in ``stage`` while collecting; it moves to ``after`` once
        # every expected client has answered or on the stage's Deadline
        table[(s, stage, uplink)] = after
        table[(s, stage, Deadline)] = after
    return table


TRANSITIONS: dict[tuple[Role, Stage, type[Message]], Stage] = _transitions()
"""One table for both roles: (role, current stage, message type) -> next stage.

A (role, stage, type) missing from the table is an illegal transition; the state
machines raise a ProtocolError naming all three.
"""
