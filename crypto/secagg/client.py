"""The SecAgg / SecAgg+ client: a sans-I/O state machine.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS'17 (Fig. 4, the actively secure variant), on the sparse graph of Bell
et al., CCS'20. Client ``u`` with input ``x_u`` in Z_{2^b}^d:

0. AdvertiseKeys: draw X25519 pairs ``(c_sk, c_pk)``, ``(s_sk, s_pk)``; send the
   public keys signed with its Ed25519 identity key.
1. ShareKeys: derive the graph from the joint seed over all advertisements; verify
   the neighbours' signed keys and skip neighbours with invalid (small-order,
   non-canonical) or repeated keys; draw the self-mask seed ``b_u``;
   Shamir-share ``b_u`` and ``s_sk_u`` with threshold ``t`` among ``N(u) ∪ {u}``; send
   each neighbour ``v`` its shares under ChaCha20-Poly1305 with key
   ``c_uv = HKDF(X25519(c_sk_u, c_pk_v))``.
1.5 CheckShares: decrypt the shares received; report the owners whose ciphertexts fail.
2. MaskedInput: for the included neighbours ``M_u`` (withdraw if fewer than
   ``min(t + c, k + 1) - 1``), with
   ``s_uv = HKDF(X25519(s_sk_u, s_pk_v))`` send

       y_u = x_u + PRG(b_u) + sum_{v in M_u, v > u} PRG(s_uv)
                           - sum_{v in M_u, v < u} PRG(s_uv)      (mod 2^b)

   where PRG is AES-256-CTR (:class:`~crypto.prg.Csprng`) read as little-endian words,
   and sign ``M_u``.
3. ConsistencyCheck: sign ``(session, round, joint seed, U3, M_u)`` for the U3
   announced (one signature for the survivor set and the client's own mask set).
4. Unmasking: only under a cohort quorum of signatures over *the same* U3 that also
   covers ``t`` holders of every owner concerned, and, for surviving owners, their
   signed mask sets (carried by their consistency signatures) with ``c + 1`` survivors (:meth:`SecAggClient._on_unmask_request`),
   release for every ``v in M_u ∪ {u}`` the share of ``b_v`` if ``v`` survived, of
   ``s_sk_v`` if it dropped, and never both for one ``v`` (a record of released kinds
   is kept; a conflicting request is refused).

Everything a client receives from the server is checked; any inconsistency means the
server misbehaves and the client aborts (raises and refuses every later message).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto import parallel
from crypto.aead import decrypt_share, encrypt_share
from crypto.errors import (
    CryptoError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    RoundAbortedError,
)
from crypto.key_agreement import (
    Purpose,
    derive_pair_key,
    derive_self_mask_seed,
    generate_x25519,
    public_bytes,
    validate_x25519_public,
)
from crypto.prg import Csprng
from crypto.secagg.messages import (
    SHARE_PLAINTEXT_BYTES,
    TRANSITIONS,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    DownlinkMessage,
    EncryptedShares,
    KeyBroadcast,
    MaskedInput,
    MaskRequest,
    Message,
    RoundConfig,
    RoundStart,
    ShareBundle,
    ShareReceipt,
    UnmaskRequest,
    UnmaskShares,
    UplinkMessage,
    advertise_payload,
    consistency_payload,
    consistency_prefix,
    index_list,
    mask_set_payload,
)
from crypto.secagg.parameters import check_parameters, mask_floor
from crypto.secagg.stages import Role, Stage
from crypto.shamir import PRIME, SHARE_BYTES, split
from crypto.signatures import sign, verify, verify_all

__all__ = [
    "ADVERTISE_CONTEXT",
    "CONSISTENCY_CONTEXT",
    "MASK_SET_CONTEXT",
    "SecAggClient",
    "apply_masks",
    "expand_mask",
    "self_mask_commitment",
]

ADVERTISE_CONTEXT = b"secagg-advertise"
CONSISTENCY_CONTEXT = b"secagg-consistency"
MASK_SET_CONTEXT = b"secagg-mask-set"
_SHARE_HEADER = struct.Struct(">II")


def expand_mask(seed: bytes, length: int, bits: int) -> npt.NDArray[np.unsignedinteger]:
    """``PRG(seed)`` as ``length`` little-endian words (uint32 for b <= 32, else uint64).

    PRG = the AES-256-CTR keystream of :class:`~crypto.prg.Csprng`. Only the low
    ``bits`` bits of each word are the mask value (exactly
    ``Csprng(seed).uniform_mod_pow2(length, bits=bits)``); callers add whole words,
    which wrap mod 2^32 (2^64), a multiple of 2^b, and reduce once at the end.
    """
    width = 4 if bits <= 32 else 8
    return np.frombuffer(Csprng(seed).random_bytes(width * length), dtype=f"<u{width}")


MASK_BLOCK = 1 << 16
"""Coordinates per block in :func:`apply_masks` (256 KiB of uint32: stays in L2)."""

_MIN_BLOCKS_PER_THREAD = 4
"""A thread gets at least this many blocks: below it, start-up costs more than it saves."""


def _split(size: int, block: int, threads: int | None) -> list[tuple[int, int]]:
    """``[0, size)`` as contiguous ranges of whole ``block`` s, one per thread, each of at
    least :data:`_MIN_BLOCKS_PER_THREAD` blocks (a single range when that leaves one)."""
    workers = parallel.threads() if threads is None else parallel.check_threads(threads)
    if size <= 0:
        return [(0, 0)]
    blocks = -(-size // block)
    workers = max(1, min(workers, blocks // _MIN_BLOCKS_PER_THREAD))
    per = -(-blocks // workers) * block
    return [(lo, min(lo + per, size)) for lo in range(0, size, per)]


def _run_ranges(fn: Callable[[int, int], None], ranges: list[tuple[int, int]]) -> None:
    parallel.run_all([functools.partial(fn, lo, hi) for lo, hi in ranges])


def apply_masks(
    acc: npt.NDArray[np.unsignedinteger],
    terms: Sequence[tuple[bytes, int]],
    *,
    base: npt.NDArray[np.unsignedinteger] | None = None,
    threads: int | None = None,
) -> None:
    """In place: ``acc = (base if given, else acc) + sum_i sign_i * PRG(seed_i)``
    (mod 2^32 or 2^64, by acc's dtype).

    Equal to adding :func:`expand_mask` of every seed, but computed block by block:
    each generator writes the next block of its keystream into one cache-resident
    buffer that is immediately added, so the cost stays close to the AES-CTR keystream
    itself instead of streaming a fresh 4d-byte array through memory per mask. With
    ``base`` the first addition reads ``base`` and writes ``acc`` (no copy of the input).

    With ``threads`` > 1 (default :func:`crypto.parallel.threads`) the coordinates are split into
    contiguous ranges, one per thread; a thread starts every generator at its range's
    keystream offset (:meth:`Csprng.at`: CTR mode is seekable), so the result is
    identical for every thread count. OpenSSL's AES and numpy's additions release the
    GIL, so the ranges run on separate cores.
    """
    if base is not None and (base.shape != acc.shape or base.dtype != acc.dtype):
        raise LocalProtocolError("apply_masks: base must have the shape and dtype of acc")
    size = int(acc.size)
    block = max(1, min(MASK_BLOCK, size))
    ranges = _split(size, block, threads)
    if not terms:  # acc = base: one copy, no threads
        ranges = [(0, size)]

    def part(lo: int, hi: int) -> None:
        _apply_range(acc, terms, base, lo, hi, block)

    _run_ranges(part, ranges)


def _apply_range(
    acc: npt.NDArray[np.unsignedinteger],
    terms: Sequence[tuple[bytes, int]],
    base: npt.NDArray[np.unsignedinteger] | None,
    lo: int,
    hi: int,
    block: int,
) -> None:
    """:func:`apply_masks` on coordinates ``[lo, hi)``, generators started at ``lo``."""
    width = acc.dtype.itemsize
    gens = [(Csprng.at(seed, width * lo), np.add if sign > 0 else np.subtract) for seed, sign in terms]
    scratch = bytearray(width * block + 15)  # + one AES block of slack for update_into
    full = np.frombuffer(scratch, dtype=f"<u{width}", count=block)
    for start in range(lo, hi, block):
        stop = min(start + block, hi)
        part = acc[start:stop]
        src = part if base is None else base[start:stop]
        stream = full[: stop - start]
        nbytes = width * (stop - start)
        for gen, op in gens:
            gen.keystream_into(scratch, nbytes)
            op(src, stream, out=part)
            src = part
        if src is not part:  # no terms: acc = base
            part[:] = src


def self_mask_commitment(b_seed: bytes, *, session_id: bytes, round_number: int, owner: int) -> bytes:
    """SHA-256 commitment to ``b_u`` (a uniform 256-bit value, so hiding and binding)."""
    return hashlib.sha256(
        b"secure-fl/secagg/v1/self-mask-commitment"
        + bytes([len(session_id)])
        + session_id
        + struct.pack(">II", round_number, owner)
        + b_seed
    ).digest()


def encode_share_plaintext(owner: int, holder: int, b_share: int, s_share: int) -> bytes:
    """``owner || holder || b-share || s_sk-share``: the AEAD plaintext (74 bytes)."""
    return (
        _SHARE_HEADER.pack(owner, holder)
        + b_share.to_bytes(SHARE_BYTES, "big")
        + s_share.to_bytes(SHARE_BYTES, "big")
    )


def decode_share_plaintext(raw: bytes, *, owner: int, holder: int) -> tuple[int, int]:
    """Strict inverse of :func:`encode_share_plaintext` for the expected parties."""
    if len(raw) != SHARE_PLAINTEXT_BYTES:
        raise CryptoError("share plaintext has the wrong length")
    o, h = _SHARE_HEADER.unpack_from(raw)
    if (o, h) != (owner, holder):
        raise CryptoError("share plaintext names the wrong parties")
    b = int.from_bytes(raw[8 : 8 + SHARE_BYTES], "big")
    s = int.from_bytes(raw[8 + SHARE_BYTES :], "big")
    if b >= PRIME or s >= PRIME:
        raise CryptoError("share value out of range")
    return b, s


class SecAggClient:
    """One client of one round: ``receive(server message) -> [client messages]``.

    ``rng`` supplies every random value (key pairs, ``b_u``, Shamir coefficients, AEAD
    nonces); ``identity_key`` is the Ed25519 key whose public half is
    ``config.identity_keys[index]``.

    Floors (the client's own, whatever the server announces): the client refuses a
    set-up with fewer than ``min_cohort_size`` clients, a threshold below
    ``min_threshold`` or fewer than ``min_neighbors`` neighbours, and it sizes its own
    checks for ``max(config.max_colluders, max_colluders)`` colluders, refusing a
    set-up whose ``t`` and ``k`` do not satisfy ``t > c`` and ``2t > k + 1`` for that
    ``c`` (:mod:`crypto.secagg.parameters`). Refusal raises
    :class:`~crypto.errors.RemoteProtocolError` from the constructor.
    """

    ROLE = Role.CLIENT

    def __init__(
        self,
        config: RoundConfig,
        *,
        index: int,
        identity_key: Ed25519PrivateKey,
        vector: npt.ArrayLike,
        rng: Csprng,
        min_cohort_size: int = 3,
        min_threshold: int = 2,
        min_neighbors: int = 2,
        max_colluders: int = 0,
    ) -> None:
        if not 0 <= index < config.n:
            raise LocalProtocolError(f"client index {index} is not in the cohort of {config.n}")
        if identity_key.public_key().public_bytes_raw() != config.identity_keys[index]:
            raise LocalProtocolError("identity key does not match the cohort set-up")
        self.config = config
        self.index = index
        self._c = max(config.max_colluders, max_colluders)
        self._check_floors(min_cohort_size, min_threshold, min_neighbors)
        self._identity = identity_key
        self._x = _as_field_vector(vector, config)
        self._rng = rng
        self._stage = Stage.ADVERTISE
        self._graph: tuple[frozenset[int], ...] = ()
        self._joint_seed = b""
        self._nbrs: frozenset[int] = frozenset()
        self._c_sk: Any = None
        self._s_sk: Any = None
        self._peer_keys: dict[int, AdvertiseKeys] = {}
        self._share_keys: dict[int, bytes] = {}
        self._b_seed = b""
        self._own_shares: tuple[int, int] = (0, 0)
        self._held: dict[int, tuple[int, int]] = {}
        self._mask_set: frozenset[int] = frozenset()
        self._mask_signature = b""
        self._advertisement: AdvertiseKeys | None = None
        self._consistency_signature = b""
        self._survivors: tuple[int, ...] | None = None
        self._released: dict[int, str] = {}
        self._skipped: dict[int, str] = {}
        self._handlers: dict[type[Message], Callable[[Any], list[UplinkMessage]]] = {
            RoundStart: self._on_round_start,
            KeyBroadcast: self._on_key_broadcast,
            ShareBundle: self._on_share_bundle,
            MaskRequest: self._on_mask_request,
            ConsistencyRequest: self._on_consistency_request,
            UnmaskRequest: self._on_unmask_request,
        }

    def _check_floors(self, min_n: int, min_t: int, min_k: int) -> None:
        cfg = self.config
        degree = cfg.holders_per_client - 1
        for what, value, floor in (
            ("cohort size", cfg.n, min_n),
            ("threshold", cfg.threshold, min_t),
            ("neighbour count", degree, min_k),
        ):
            if value < floor:
                raise RemoteProtocolError(
                    f"client {self.index} refuses the round: {what} {value} is below its floor {floor}"
                )
        try:
            check_parameters(cfg.n, cfg.neighbors, cfg.threshold, self._c)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(f"client {self.index} refuses the round: {exc}") from exc

    @property
    def stage(self) -> Stage:
        """The stage whose server message this client is waiting for."""
        return self._stage

    @property
    def released(self) -> dict[int, str]:
        """Owner -> "b" (self-mask share) or "s" (mask-key share) released so far."""
        return dict(self._released)

    @property
    def mask_set(self) -> frozenset[int]:
        """``M_u``: the partners this client masked its input with (empty before masking)."""
        return self._mask_set

    @property
    def skipped_peers(self) -> dict[int, str]:
        """Neighbours this client refused to share with (invalid or repeated keys), with why."""
        return dict(self._skipped)

    # -- dispatch ---------------------------------------------------------------------
    def receive(self, message: Message) -> list[UplinkMessage]:
        """Process one server message; return the replies. Errors abort the client."""
        key = (self.ROLE, self._stage, type(message))
        nxt = TRANSITIONS.get(key)
        if nxt is None:
            stage = self._stage
            self._stage = Stage.ABORTED
            raise RemoteProtocolError(
                f"illegal transition: {self.ROLE.value} {self.index} in stage {stage.value} "
                f"cannot accept {type(message).__name__}"
            )
        try:
            self._check_envelope(message)
            out = self._handlers[type(message)](message)
        except ProtocolError:
            self._stage = Stage.ABORTED
            raise
        except CryptoError as exc:
            self._stage = Stage.ABORTED
            raise RemoteProtocolError(f"client {self.index}: {exc}") from exc
        self._stage = nxt
        return out

    def _check_envelope(self, msg: Message) -> None:
        if msg.session_id != self.config.session_id or msg.round_number != self.config.round_number:
            raise RemoteProtocolError(
                f"client {self.index}: {type(msg).__name__} belongs to another session or round (replay)"
            )
        if not isinstance(msg, DownlinkMessage) or msg.recipient != self.index:
            raise RemoteProtocolError(f"client {self.index}: {type(msg).__name__} is addressed to another client")

    def _abort(self, why: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"client {self.index} refuses: {why}")

    def _header(self) -> dict[str, Any]:
        return {"session_id": self.config.session_id, "round_number": self.config.round_number, "sender": self.index}

    def _holders(self, u: int) -> frozenset[int]:
        return self._graph[u] | {u}

    # -- round 0 ----------------------------------------------------------------------
    def _on_round_start(self, msg: RoundStart) -> list[UplinkMessage]:
        self._c_sk = generate_x25519(self._rng)
        self._s_sk = generate_x25519(self._rng)
        c_pk, s_pk = public_bytes(self._c_sk), public_bytes(self._s_sk)
        payload = advertise_payload(self.config.session_id, self.config.round_number, self.index, c_pk, s_pk)
        sig = sign(self._identity, payload, context=ADVERTISE_CONTEXT)
        self._advertisement = AdvertiseKeys(**self._header(), c_pk=c_pk, s_pk=s_pk, signature=sig)
        return [self._advertisement]

    # -- round 1 ----------------------------------------------------------------------
    def _on_key_broadcast(self, msg: KeyBroadcast) -> list[UplinkMessage]:
        """Derive the graph from every advertisement; check my neighbours' (and mine).

        The joint seed hashes the whole list as received. Signatures and keys are checked
        for my own advertisement and my neighbours' only (k + 1 of n: a forged entry of
        any client is caught by that client and by its k neighbours, who then refuse).
        A neighbour's own signed key that is invalid or repeats another's is skipped,
        never a reason to fail my round; a forged signature means a lying server.
        """
        cfg = self.config
        mine = (public_bytes(self._c_sk), public_bytes(self._s_sk))
        senders = {k.sender for k in msg.keys}
        if self.index not in senders:
            raise self._abort("server omitted my key advertisement from the cohort's")
        for k in msg.keys:
            if not 0 <= k.sender < cfg.n:
                raise self._abort(f"server forwarded keys of non-member {k.sender}")
            if k.session_id != cfg.session_id or k.round_number != cfg.round_number:
                raise self._abort(f"keys of client {k.sender} are replayed from another round")
        self._joint_seed = cfg.joint_graph_seed(msg.keys)
        self._graph = cfg.graph(self._joint_seed)
        self._nbrs = self._graph[self.index]
        checked = [(pos, k) for pos, k in enumerate(msg.keys) if k.sender != self.index and k.sender in self._nbrs]
        genuine = dict(zip(
            (pos for pos, _ in checked),
            verify_all([(cfg.identity_keys[k.sender], k.signature, k.payload()) for _, k in checked],
                       context=ADVERTISE_CONTEXT),
            strict=True,
        ))
        valid: dict[int, AdvertiseKeys] = {}
        owners_of: dict[bytes, list[int]] = {}
        for pos, k in enumerate(msg.keys):
            if k.sender == self.index:  # mine: compared byte for byte, no verification needed
                sent = self._advertisement
                if sent is None or (k.c_pk, k.s_pk, k.signature) != (*mine, sent.signature):
                    raise self._abort("server forwarded an advertisement of mine that I did not send")
                continue
            if k.sender not in self._nbrs:
                continue
            if not genuine[pos]:
                raise self._abort(f"forged key advertisement for client {k.sender}")
            try:  # a peer's own signed bad key: skip that peer, never fail my round over it
                validate_x25519_public(k.c_pk)
                validate_x25519_public(k.s_pk)
            except CryptoError as exc:
                self._skipped[k.sender] = f"invalid public key: {exc}"
                continue
            valid[k.sender] = k
            for pk in (k.c_pk, k.s_pk):
                owners_of.setdefault(pk, []).append(k.sender)
        for pk, owners in owners_of.items():
            if len(owners) > 1 or pk in mine:
                for v in owners:
                    self._skipped[v] = "public key repeats another client's"
                    valid.pop(v, None)
        self._peer_keys = valid
        holders = sorted(set(self._peer_keys) | {self.index})
        floor = mask_floor(cfg.holders_per_client, cfg.threshold, self._c)
        if len(holders) < floor:
            raise RoundAbortedError(
                f"client {self.index}: {len(holders)} live share holders < min(threshold {cfg.threshold} "
                f"+ colluders {self._c}, k + 1)"
            )
        self._b_seed = self._rng.random_bytes(32)
        xs = [h + 1 for h in holders]
        b_sh = split(self._b_seed, threshold=cfg.threshold, xs=xs, rng=self._rng)
        s_sh = split(self._s_sk.private_bytes_raw(), threshold=cfg.threshold, xs=xs, rng=self._rng)
        self._own_shares = (b_sh[self.index + 1], s_sh[self.index + 1])
        cts: list[tuple[int, bytes]] = []
        for v in holders:
            if v == self.index:
                continue
            key = derive_pair_key(
                self._c_sk,
                self._peer_keys[v].c_pk,
                purpose=Purpose.SHARE_ENCRYPTION,
                session_id=cfg.session_id,
                round_number=cfg.round_number,
                me=self.index,
                peer=v,
            )
            self._share_keys[v] = key
            pt = encode_share_plaintext(self.index, v, b_sh[v + 1], s_sh[v + 1])
            ct = encrypt_share(
                key,
                pt,
                session_id=cfg.session_id,
                round_number=cfg.round_number,
                sender=self.index,
                receiver=v,
                rng=self._rng,
            )
            cts.append((v, ct))
        commitment = self_mask_commitment(
            self._b_seed, session_id=cfg.session_id, round_number=cfg.round_number, owner=self.index
        )
        return [EncryptedShares(**self._header(), commitment=commitment, ciphertexts=tuple(cts))]

    # -- round 1.5 --------------------------------------------------------------------
    def _on_share_bundle(self, msg: ShareBundle) -> list[UplinkMessage]:
        cfg = self.config
        complaints: list[int] = []
        for owner, ct in msg.ciphertexts:
            key = self._share_keys.get(owner)
            if key is None:
                if owner in self._nbrs:  # a neighbour whose keys I skipped: no valid share
                    complaints.append(owner)
                    continue
                raise self._abort(f"server forwarded shares from client {owner}, who is not my neighbour")
            try:
                pt = decrypt_share(
                    key,
                    ct,
                    session_id=cfg.session_id,
                    round_number=cfg.round_number,
                    sender=owner,
                    receiver=self.index,
                )
                self._held[owner] = decode_share_plaintext(pt, owner=owner, holder=self.index)
            except CryptoError:
                complaints.append(owner)
        return [ShareReceipt(**self._header(), complaints=tuple(complaints))]

    # -- round 2 ----------------------------------------------------------------------
    def _on_mask_request(self, msg: MaskRequest) -> list[UplinkMessage]:
        cfg = self.config
        included = frozenset(msg.included)
        if self.index not in included:
            raise self._abort("mask request does not include me")
        others = included - {self.index}
        if not others <= self._nbrs:
            raise self._abort("mask request names non-neighbours")
        if not others <= set(self._held):
            raise self._abort("mask request includes a client whose valid shares I do not hold")
        if len(included) < mask_floor(cfg.holders_per_client, cfg.threshold, self._c):
            # withdraw: with fewer than t + c - 1 partners, c colluders among them could
            # leave fewer than t - 1 honest ones (or too few holders to unmask me)
            raise RoundAbortedError(
                f"client {self.index} withdraws: {len(included)} mask partners and self < min(threshold "
                f"{cfg.threshold} + colluders {self._c}, k + 1)"
            )
        self._mask_set = others
        terms = [
            (
                derive_self_mask_seed(
                    self._b_seed, session_id=cfg.session_id, round_number=cfg.round_number, owner=self.index
                ),
                +1,
            )
        ]
        for v in sorted(others):
            s_uv = derive_pair_key(
                self._s_sk,
                self._peer_keys[v].s_pk,
                purpose=Purpose.PAIRWISE_MASK,
                session_id=cfg.session_id,
                round_number=cfg.round_number,
                me=self.index,
                peer=v,
            )
            terms.append((s_uv, +1 if v > self.index else -1))
        y = np.empty_like(self._x)
        apply_masks(y, terms, base=self._x)
        if cfg.bits not in (32, 64):
            y &= y.dtype.type((1 << cfg.bits) - 1)
        mask_set = tuple(sorted(others))
        self._mask_signature = sign(
            self._identity,
            mask_set_payload(cfg.session_id, cfg.round_number, self._joint_seed, self.index, mask_set),
            context=MASK_SET_CONTEXT,
        )
        return [
            MaskedInput(
                **self._header(), bits=cfg.bits, vector=y, mask_set=mask_set, mask_signature=self._mask_signature
            )
        ]

    # -- round 3 ----------------------------------------------------------------------
    def _on_consistency_request(self, msg: ConsistencyRequest) -> list[UplinkMessage]:
        cfg = self.config
        survivors = frozenset(msg.survivors)
        if self.index not in survivors:
            raise self._abort("survivor set omits me although I sent my masked input")
        if msg.survivors and msg.survivors[-1] >= cfg.n:
            raise self._abort("survivor set names a client outside the cohort")
        local = survivors & (self._mask_set | {self.index})
        if len(local) < cfg.threshold:
            raise RoundAbortedError(
                f"client {self.index}: {len(local)} surviving mask partners and self < threshold {cfg.threshold}"
            )
        self._survivors = msg.survivors
        payload = consistency_payload(
            cfg.session_id, cfg.round_number, self._joint_seed, msg.survivors, tuple(sorted(self._mask_set))
        )
        self._consistency_signature = sign(self._identity, payload, context=CONSISTENCY_CONTEXT)
        return [ConsistencySignature(**self._header(), signature=self._consistency_signature)]

    # -- round 4 ----------------------------------------------------------------------
    def _on_unmask_request(self, msg: UnmaskRequest) -> list[UplinkMessage]:
        """Release shares only under a survivor set S that is globally and per owner agreed.

        (a) a cohort quorum: valid signatures over (session, round, joint seed, S, M_w) by
            ``q = floor((n + c) / 2) + 1`` clients w, so no other set can have been signed
            by a quorum (two quorums share ``2q - n > c`` signers, hence an honest one,
            who signs once);
        (b) per owner ``o`` I release for: ``t`` of those signers in ``o``'s holder set;
        (c) for each surviving owner ``o`` (I release its ``b_o`` share): ``o``'s mask set
            ``M_o``, signed by ``o`` (inside its consistency signature, or with its masked
            input if ``o`` did not sign), has at least ``c + 1`` members in S, so at least
            one honest partner ``w`` of ``o`` survived; by (a) nobody releases ``s_sk_w``
            or ``s_sk_o``, so the pairwise mask ``s_ow`` hides ``x_o`` inside the sum.

        Cost: one Ed25519 verification per forwarded signature, except my own, which I
        compare byte for byte with the one I produced (Ed25519 is deterministic); they
        run as one batch on every core (:func:`~crypto.signatures.verify_all`).
        """
        cfg = self.config
        if msg.survivors != self._survivors:
            raise self._abort("server reported a different survivor set than the one I signed")
        head = consistency_prefix(cfg.session_id, cfg.round_number, self._joint_seed, msg.survivors)
        own_set = tuple(sorted(self._mask_set))
        others = [(pos, entry) for pos, entry in enumerate(msg.signatures)
                  if entry[0] != self.index and 0 <= entry[0] < cfg.n]
        genuine = dict(zip(
            (pos for pos, _ in others),
            verify_all([(cfg.identity_keys[signer], sig, head + index_list(members))
                        for _, (signer, members, sig) in others], context=CONSISTENCY_CONTEXT),
            strict=True,
        ))
        signed_sets: dict[int, tuple[int, ...]] = {}
        for pos, (signer, members, sig) in enumerate(msg.signatures):
            if not 0 <= signer < cfg.n:
                raise self._abort(f"consistency signature from non-member {signer}")
            if signer == self.index:
                if members != own_set or sig != self._consistency_signature:
                    raise self._abort("server forwarded a consistency signature of mine that I did not produce")
            elif not genuine[pos]:
                raise self._abort(f"invalid consistency signature of client {signer}")
            signed_sets[signer] = members
        signers = set(signed_sets)
        if len(signers) < cfg.quorum:
            raise RoundAbortedError(
                f"client {self.index}: only {len(signers)} consistency signatures over this survivor set "
                f"< cohort quorum {cfg.quorum}"
            )
        survivors = frozenset(msg.survivors)
        owners = sorted(self._mask_set | {self.index})
        for owner in owners:
            have = len(signers & self._holders(owner))
            if have < cfg.threshold:
                raise RoundAbortedError(
                    f"client {self.index}: only {have} consistency signatures from the holders of client "
                    f"{owner} < threshold {cfg.threshold}"
                )
        fallback = {o: (members, sig) for o, members, sig in msg.mask_sets}
        for owner in owners:
            if owner not in survivors:
                continue
            if owner == self.index:
                members = own_set
            elif owner in signed_sets:
                members = signed_sets[owner]
            else:
                if owner not in fallback:
                    raise self._abort(f"server withheld the signed mask set of surviving client {owner}")
                members, sig = fallback[owner]
                try:
                    verify(
                        cfg.identity_keys[owner],
                        sig,
                        mask_set_payload(cfg.session_id, cfg.round_number, self._joint_seed, owner, members),
                        context=MASK_SET_CONTEXT,
                    )
                except CryptoError as exc:
                    raise self._abort(f"invalid mask-set signature of client {owner}") from exc
            alive = len(set(members) & survivors)
            if alive < self._c + 1:
                raise self._abort(
                    f"client {owner} survived with only {alive} surviving mask partners (< c + 1 = "
                    f"{self._c + 1}): its self mask would expose its input"
                )
        b_out: list[tuple[int, int]] = []
        s_out: list[tuple[int, int]] = []
        for owner in owners:
            kind = "b" if owner in survivors else "s"
            self._record_release(owner, kind)
            b_share, s_share = self._own_shares if owner == self.index else self._held[owner]
            if kind == "b":
                b_out.append((owner, b_share))
            else:
                s_out.append((owner, s_share))
        return [UnmaskShares(**self._header(), self_mask_shares=tuple(b_out), key_shares=tuple(s_out))]

    def _record_release(self, owner: int, kind: str) -> None:
        """Never release both the ``b`` and the ``s_sk`` share of one owner."""
        previous = self._released.get(owner)
        if previous is not None and previous != kind:
            raise LocalProtocolError(
                f"client {self.index} refuses to release both shares of client {owner} "
                f"(already released its {previous!r} share)"
            )
        self._released[owner] = kind


def _as_field_vector(vector: npt.ArrayLike, config: RoundConfig) -> npt.NDArray[np.unsignedinteger]:
    arr = np.asarray(vector)
    if arr.ndim != 1 or arr.size != config.length:
        raise LocalProtocolError(f"input must be a 1-D vector of length {config.length}")
    if arr.dtype.kind not in "ui":
        raise LocalProtocolError(f"input must hold integers, got dtype {arr.dtype}")
    narrow = arr.dtype.kind == "u" and arr.dtype.itemsize * 8 <= config.bits  # range implied
    if arr.size and not narrow and (int(arr.min()) < 0 or int(arr.max()) >> config.bits):
        raise LocalProtocolError(f"input values must lie in [0, 2**{config.bits})")
    return arr.astype(config.mask_dtype, copy=False)
