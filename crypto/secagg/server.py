"""The SecAgg / SecAgg+ server: a sans-I/O state machine with a streaming accumulator.

Bonawitz et al. CCS'17 (Fig. 4) with the SecAgg+ graph of Bell et al. CCS'20. The
server relays keys and ciphertexts, sums masked inputs *as they arrive* into one
``d``-word accumulator (memory O(d), never O(n d)), and at the end removes the masks:

    z = sum_{u in U3} y_u - sum_{u in U3} PRG(b_u)
        + sum_{u in D} sum_{v in N(u) ∩ U3} sign(u, v) PRG(s_uv)       (mod 2^b)

with ``D`` the included clients that did not deliver a masked input, and
``sign(u, v) = -1`` if ``u > v`` (``y_v`` carries ``+PRG(s_uv)``), ``+1`` otherwise.
``b_u`` is rebuilt from ``t`` Shamir shares released by survivors and checked against
``u``'s commitment; ``s_sk_u`` of a dropped ``u`` from ``t`` shares, checked against
its advertised ``s_pk_u``. The server never sees an unmasked individual vector: each
``y_u`` is masked by ``PRG(b_u)``, whose seed is only reconstructed after ``y_u`` has
been folded into the sum.

Stage completion: the server advances when every client it waits for has answered,
or on a :class:`~crypto.secagg.messages.Deadline` event from the transport (no
clocks here). Before each advance it checks that every live client keeps at least
``t`` live share holders in ``N(u) ∪ {u}``; otherwise it raises
:class:`~crypto.errors.RoundAbortedError`.

Misbehaving clients (forged signatures, invalid or re-used X25519 keys, replays, wrong
stage, duplicates, malformed vectors, a mask set other than the one assigned,
non-members, wrong unmasking shares) are refused with
:class:`~crypto.errors.RemoteProtocolError` (or named by the robust reconstruction)
and excluded, i.e. treated as dropped; an excluded client whose masked input was
already accumulated stays a survivor (its input is in the sum and its self mask must
be removed) but is asked for nothing more. A complaint in CHECK_SHARES (a neighbour's
ciphertext failed to decrypt) cannot be verified, so it removes only the edge between
accuser and accused: a false complaint costs the accuser the same edge, and c
colluders cannot strip an honest client of its honest partners (removing the accused
would let them: issue 13, attack 2). Clients left with fewer than min(t + c, k + 1) - 1
partners withdraw.

The graph is drawn from the joint seed over every signed advertisement
(:meth:`~crypto.secagg.messages.RoundConfig.joint_graph_seed`), which the server
broadcasts whole. At the consistency stage it needs a cohort quorum of signatures (each
over the survivor set and the signer's mask set) and forwards to each signer a quorum
covering ``t`` holders of each owner it will release for, which includes the signing
surviving owners, so their mask sets come authenticated with no extra verification
(see the client's release rules).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from crypto.errors import CryptoError, LocalProtocolError, RemoteProtocolError, RoundAbortedError
from crypto.key_agreement import (
    Purpose,
    derive_pair_key,
    derive_self_mask_seed,
    public_bytes,
    validate_x25519_public,
    x25519_private_from_bytes,
)
from crypto.secagg.client import (
    ADVERTISE_CONTEXT,
    CONSISTENCY_CONTEXT,
    MASK_SET_CONTEXT,
    apply_masks,
    self_mask_commitment,
)
from crypto.secagg.messages import (
    TRANSITIONS,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    Deadline,
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
    consistency_payload,
    mask_set_payload,
)
from crypto.secagg.parameters import mask_floor
from crypto.secagg.stages import Role, Stage
from crypto.shamir import lagrange_coefficients_at_zero, robust_reconstruct
from crypto.signatures import verify

__all__ = ["SecAggServer"]

class SecAggServer:
    """The aggregator of one round: ``start()``, then ``receive(msg) -> [messages]``."""

    ROLE = Role.SERVER

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self._stage = Stage.ADVERTISE
        self._started = False
        self._expected: set[int] = set(range(config.n))
        self._replied: set[int] = set()
        self._excluded: dict[int, str] = {}
        self._withdrawn: set[int] = set()
        self._keys: dict[int, AdvertiseKeys] = {}
        self._joint_seed = b""
        self._graph: tuple[frozenset[int], ...] = ()
        self._commitments: dict[int, bytes] = {}
        self._ciphertexts: dict[int, dict[int, bytes]] = {}
        self._complaints: dict[int, tuple[int, ...]] = {}
        self._included: frozenset[int] = frozenset()
        self._mask_sets: dict[int, frozenset[int]] = {}
        self._signed_mask_sets: dict[int, tuple[tuple[int, ...], bytes]] = {}
        self._acc: npt.NDArray[np.unsignedinteger] = np.zeros(config.length, dtype=config.mask_dtype)
        self._survivors: tuple[int, ...] = ()
        self._signatures: dict[int, bytes] = {}
        self._b_shares: dict[int, dict[int, int]] = {}
        self._s_shares: dict[int, dict[int, int]] = {}
        self._total: npt.NDArray[np.unsignedinteger] | None = None
        self._handlers: dict[type[Message], Callable[[Any], None]] = {
            AdvertiseKeys: self._on_advertise,
            EncryptedShares: self._on_encrypted_shares,
            ShareReceipt: self._on_share_receipt,
            MaskedInput: self._on_masked_input,
            ConsistencySignature: self._on_consistency_signature,
            UnmaskShares: self._on_unmask_shares,
        }
        self._finishers: dict[Stage, Callable[[], list[DownlinkMessage]]] = {
            Stage.ADVERTISE: self._finish_advertise,
            Stage.SHARE_KEYS: self._finish_share_keys,
            Stage.CHECK_SHARES: self._finish_check_shares,
            Stage.MASKED_INPUT: self._finish_masked_input,
            Stage.CONSISTENCY: self._finish_consistency,
            Stage.UNMASK: self._finish_unmask,
        }

    # -- public state -------------------------------------------------------------------
    @property
    def stage(self) -> Stage:
        """The stage whose client messages the server is collecting."""
        return self._stage

    @property
    def excluded(self) -> dict[int, str]:
        """Cohort members refused for misbehaviour, with the reason."""
        return dict(self._excluded)

    @property
    def withdrawn(self) -> frozenset[int]:
        """Clients left with fewer than ``t + c`` mask partners (they withdraw; not blamed)."""
        return frozenset(self._withdrawn)

    @property
    def survivors(self) -> tuple[int, ...]:
        """U3: sorted indices of the clients whose masked input was accumulated."""
        return self._survivors

    @property
    def graph(self) -> tuple[frozenset[int], ...]:
        """The SecAgg+ graph of the round (empty before the advertisements are in)."""
        return self._graph

    @property
    def mask_sets(self) -> dict[int, frozenset[int]]:
        """``M_u`` of every included client (after the share check)."""
        return dict(self._mask_sets)

    @property
    def total(self) -> npt.NDArray[np.unsignedinteger]:
        """The unmasked sum mod 2^b of the survivors' inputs (after the round is done)."""
        if self._total is None:
            raise LocalProtocolError(f"server in stage {self._stage.value} has no result yet")
        return self._total

    @property
    def waiting_for(self) -> frozenset[int]:
        """Clients whose message for the current stage has not arrived yet."""
        return frozenset(self._expected - self._replied - set(self._excluded))

    # -- driving ------------------------------------------------------------------------
    def start(self) -> list[DownlinkMessage]:
        """Open the round: invite every cohort member to advertise its keys."""
        if self._started:
            raise LocalProtocolError("server: the round was already started")
        self._started = True
        return [RoundStart(**self._header(v)) for v in range(self.config.n)]

    def receive(self, message: Message) -> list[DownlinkMessage]:
        """Process one client message or a Deadline; return messages to send."""
        if not self._started:
            raise LocalProtocolError("server: start() the round before receiving messages")
        nxt = TRANSITIONS.get((self.ROLE, self._stage, type(message)))
        if isinstance(message, Deadline):
            if nxt is None or message.waiting_for is not self._stage:
                raise LocalProtocolError(
                    f"illegal transition: server in stage {self._stage.value} cannot accept "
                    f"Deadline for stage {message.waiting_for.value}"
                )
            return self._advance(nxt)
        sender = message.party if isinstance(message, UplinkMessage) else None
        if sender is None or not 0 <= sender < self.config.n:
            raise RemoteProtocolError(
                f"server: {type(message).__name__} from {sender!r}, who is not in the cohort", sender=sender
            )
        if sender in self._excluded:
            raise RemoteProtocolError(
                f"server: client {sender} is excluded ({self._excluded[sender]})", sender=sender
            )
        if nxt is None:
            raise self._refuse(
                sender,
                f"illegal transition: server in stage {self._stage.value} cannot accept "
                f"{type(message).__name__} from client {sender}",
            )
        if message.session_id != self.config.session_id or message.round_number != self.config.round_number:
            raise self._refuse(sender, f"{type(message).__name__} from another session or round (replay)")
        if sender in self._replied:
            raise self._refuse(sender, f"duplicate {type(message).__name__} (replay)")
        if sender not in self._expected:
            raise self._refuse(sender, f"unexpected {type(message).__name__}: not a participant of this stage")
        self._handlers[type(message)](message)
        self._replied.add(sender)
        if not self.waiting_for:
            return self._advance(nxt)
        return []

    def exclude(self, client: int, reason: str) -> None:
        """Treat ``client`` as dropped from now on (transport-detected misbehaviour)."""
        if 0 <= client < self.config.n:
            self._excluded.setdefault(client, reason)

    # -- helpers ------------------------------------------------------------------------
    def _header(self, recipient: int) -> dict[str, Any]:
        return {
            "session_id": self.config.session_id,
            "round_number": self.config.round_number,
            "recipient": recipient,
        }

    def _refuse(self, sender: int, why: str) -> RemoteProtocolError:
        self.exclude(sender, why)
        return RemoteProtocolError(f"server refuses client {sender}: {why}", sender=sender)

    def _live(self, group: set[int]) -> set[int]:
        return group - set(self._excluded)

    def _holders(self, u: int) -> frozenset[int]:
        return self._graph[u] | {u}

    def _masked_with(self, u: int) -> frozenset[int]:
        """``M_u ∪ {u}``: the clients holding valid shares of ``u`` that ``u`` masked with."""
        return self._mask_sets.get(u, frozenset()) | {u}

    def _check_live(self, live: set[int], what: str, *, groups: Callable[[int], frozenset[int]] | None = None) -> None:
        t = self.config.threshold
        group = groups or self._holders
        if not live:
            raise RoundAbortedError(f"round aborted after {what}: no live clients remain")
        for v in sorted(live):
            have = len(group(v) & live)
            if have < t:
                raise RoundAbortedError(
                    f"round aborted after {what}: client {v} has {have} live share holders "
                    f"< threshold {t}"
                )

    def _advance(self, nxt: Stage) -> list[DownlinkMessage]:
        try:
            out = self._finishers[self._stage]()
        except RoundAbortedError:
            self._stage = Stage.ABORTED
            raise
        self._stage = nxt
        self._replied = set()
        return out

    # -- round 0 ------------------------------------------------------------------------
    def _on_advertise(self, msg: AdvertiseKeys) -> None:
        try:
            verify(self.config.identity_keys[msg.sender], msg.signature, msg.payload(), context=ADVERTISE_CONTEXT)
        except CryptoError as exc:
            raise self._refuse(msg.sender, "forged key advertisement (bad signature)") from exc
        for name, pk in (("c_pk", msg.c_pk), ("s_pk", msg.s_pk)):
            try:
                validate_x25519_public(pk)
            except CryptoError as exc:
                raise self._refuse(msg.sender, f"advertised an invalid X25519 {name}: {exc}") from exc
        used = {k for a in self._keys.values() for k in (a.c_pk, a.s_pk)}
        if msg.c_pk in used or msg.s_pk in used:
            raise self._refuse(msg.sender, "re-uses another client's public key")
        self._keys[msg.sender] = msg

    def _finish_advertise(self) -> list[DownlinkMessage]:
        u1 = self._live(set(self._keys))
        ads = tuple(self._keys[u] for u in sorted(u1))
        self._joint_seed = self.config.joint_graph_seed(ads)
        self._graph = self.config.graph(self._joint_seed)
        self._check_live(u1, "advertise")
        self._expected = u1
        return [KeyBroadcast(**self._header(v), keys=ads) for v in sorted(u1)]

    # -- round 1 ------------------------------------------------------------------------
    def _on_encrypted_shares(self, msg: EncryptedShares) -> None:
        u1 = self._expected
        want = self._graph[msg.sender] & u1
        got = {v for v, _ in msg.ciphertexts}
        if got != want:
            raise self._refuse(msg.sender, "shares not addressed to exactly its live neighbours")
        self._commitments[msg.sender] = msg.commitment
        self._ciphertexts[msg.sender] = dict(msg.ciphertexts)

    def _finish_share_keys(self) -> list[DownlinkMessage]:
        u2 = self._live(set(self._ciphertexts))
        self._check_live(u2, "share_keys")
        self._expected = u2
        out: list[DownlinkMessage] = [
            ShareBundle(
                **self._header(v),
                ciphertexts=tuple((u, self._ciphertexts[u][v]) for u in sorted(self._graph[v] & u2)),
            )
            for v in sorted(u2)
        ]
        self._ciphertexts.clear()  # relayed; the server has no use for them
        return out

    # -- round 1.5 ----------------------------------------------------------------------
    def _on_share_receipt(self, msg: ShareReceipt) -> None:
        allowed = self._graph[msg.sender] & self._expected
        if not set(msg.complaints) <= allowed:
            raise self._refuse(msg.sender, "complains about clients that sent it no shares")
        self._complaints[msg.sender] = msg.complaints

    def _finish_check_shares(self) -> list[DownlinkMessage]:
        """Complaints remove the accuser-accused edge, never only the accused.

        A complaint cannot be verified (only the accuser holds the key), so removing the
        accused would let c colluders strip an honest client of its honest partners
        (issue 13, attack 2). Removing the edge costs the accuser as much as the accused.
        Then every client left with fewer than ``min(t + c, k + 1) - 1`` partners withdraws (its
        partners lose that edge too), until no one else falls below.
        """
        cfg = self.config
        receipts = self._live(set(self._complaints))
        self._check_live(receipts, "check_shares")
        removed = {frozenset((a, v)) for a in receipts for v in self._complaints[a]}
        included = set(receipts)
        floor = mask_floor(cfg.holders_per_client, cfg.threshold, cfg.max_colluders)
        left: dict[int, int] = {}  # withdrawn client -> mask partners it had left
        while True:
            masks = {
                v: frozenset(w for w in self._graph[v] & included if frozenset((v, w)) not in removed)
                for v in included
            }
            short = {v for v, m in masks.items() if len(m) + 1 < floor}
            if not short:
                break
            left.update({v: len(masks[v]) for v in short})
            included -= short
            self._withdrawn |= short
        if not included and left:
            raise RoundAbortedError(
                f"round aborted after check_shares: clients {sorted(left)} withdrew, left with at most "
                f"{max(left.values())} mask partner(s) each, fewer than min(threshold {cfg.threshold} + "
                f"max_colluders {cfg.max_colluders}, k + 1) - 1 = {floor - 1}: masking with fewer, a "
                "client's input could be exposed by the colluders"
            )
        self._check_live(included, "check_shares")
        self._mask_sets = masks
        self._included = frozenset(included)
        self._expected = included
        return [MaskRequest(**self._header(v), included=tuple(sorted(masks[v] | {v}))) for v in sorted(included)]

    # -- round 2 ------------------------------------------------------------------------
    def _on_masked_input(self, msg: MaskedInput) -> None:
        v = msg.vector
        cfg = self.config
        if msg.bits != cfg.bits:
            raise self._refuse(msg.sender, f"masked vector at {msg.bits} bits, expected {cfg.bits}")
        if not isinstance(v, np.ndarray) or v.ndim != 1 or v.size != cfg.length:
            raise self._refuse(msg.sender, f"masked vector of wrong length (expected {cfg.length})")
        if v.dtype != self._acc.dtype or (cfg.bits not in (32, 64) and int(v.max()) >> cfg.bits):
            raise self._refuse(msg.sender, f"masked vector outside Z_2^{cfg.bits}")
        if msg.mask_set != tuple(sorted(self._mask_sets[msg.sender])):
            raise self._refuse(msg.sender, "masked with a different partner set than it was asked to")
        try:
            verify(
                cfg.identity_keys[msg.sender],
                msg.mask_signature,
                mask_set_payload(cfg.session_id, cfg.round_number, self._joint_seed, msg.sender, msg.mask_set),
                context=MASK_SET_CONTEXT,
            )
        except CryptoError as exc:
            raise self._refuse(msg.sender, "invalid mask-set signature") from exc
        np.add(self._acc, v, out=self._acc)  # streaming: the vector is not kept
        self._signed_mask_sets[msg.sender] = (msg.mask_set, msg.mask_signature)
        self._survivors = tuple(sorted({*self._survivors, msg.sender}))

    def _finish_masked_input(self) -> list[DownlinkMessage]:
        u3 = set(self._survivors)
        self._check_live(u3, "masked_input", groups=self._masked_with)
        self._expected = self._live(u3)
        return [ConsistencyRequest(**self._header(v), survivors=self._survivors) for v in sorted(self._expected)]

    # -- round 3 ------------------------------------------------------------------------
    def _on_consistency_signature(self, msg: ConsistencySignature) -> None:
        cfg = self.config
        payload = consistency_payload(
            cfg.session_id, cfg.round_number, self._joint_seed, self._survivors, self._mask_tuple(msg.sender)
        )
        try:
            verify(cfg.identity_keys[msg.sender], msg.signature, payload, context=CONSISTENCY_CONTEXT)
        except CryptoError as exc:
            raise self._refuse(msg.sender, "invalid consistency signature") from exc
        self._signatures[msg.sender] = msg.signature

    def _mask_tuple(self, u: int) -> tuple[int, ...]:
        """``M_u`` sorted (the list ``u`` signed)."""
        return tuple(sorted(self._mask_sets[u]))

    def _finish_consistency(self) -> list[DownlinkMessage]:
        """Forward to each signer a quorum of signatures covering t holders of each of its owners.

        Every signature forwarded costs the recipient one Ed25519 verification, so the
        selection starts from the recipient itself (free: it compares its own signature)
        and its signing mask partners (their signatures also carry the mask sets the
        recipient needs for its release rule), tops up ``t`` signing holders of each
        owner it releases for (greedy, in index order), then fills up to the quorum.
        Mask sets of surviving partners that did not sign are forwarded with the
        signature they came with in the masked input.
        """
        cfg = self.config
        u4 = frozenset(self._live(set(self._signatures)))
        t, q = cfg.threshold, cfg.quorum
        if len(u4) < q:
            raise RoundAbortedError(
                f"round aborted after consistency: {len(u4)} consistency signatures < cohort quorum {q}"
            )
        survivors = frozenset(self._survivors)
        pools: dict[int, frozenset[int]] = {}
        entry = {w: (w, self._mask_tuple(w), self._signatures[w]) for w in u4}
        by_index = sorted(u4)
        out: list[DownlinkMessage] = []
        for v in by_index:
            owners = sorted(self._masked_with(v))
            chosen = set(self._masked_with(v) & u4)
            for owner in owners:
                pool = pools.get(owner)
                if pool is None:
                    pool = pools[owner] = self._holders(owner) & u4
                if len(pool) < t:
                    raise RoundAbortedError(
                        f"round aborted after consistency: client {owner} has {len(pool)} signing "
                        f"holders < threshold {t}"
                    )
                have = len(pool & chosen)
                if have < t:
                    chosen.update(sorted(pool - chosen)[: t - have])
            if len(chosen) < q:
                chosen.update([w for w in by_index if w not in chosen][: q - len(chosen)])
            sigs = tuple(entry[w] for w in sorted(chosen))
            masks = tuple(
                (o, *self._signed_mask_sets[o])
                for o in owners
                if o != v and o in survivors and o not in chosen
            )
            out.append(UnmaskRequest.from_server(**self._header(v), survivors=self._survivors, signatures=sigs,
                                                 mask_sets=masks))
        self._expected = set(u4)
        return out

    # -- round 4 ------------------------------------------------------------------------
    def _on_unmask_shares(self, msg: UnmaskShares) -> None:
        w = msg.sender
        mine = self._masked_with(w)
        survivors = set(self._survivors)
        if {o for o, _ in msg.self_mask_shares} != mine & survivors or {o for o, _ in msg.key_shares} != mine - survivors:
            raise self._refuse(w, "released the wrong set of shares")
        for owner, y in msg.self_mask_shares:
            self._b_shares.setdefault(owner, {})[w + 1] = y
        for owner, y in msg.key_shares:
            self._s_shares.setdefault(owner, {})[w + 1] = y

    def _shares_of(self, table: dict[int, dict[int, int]], owner: int, what: str) -> list[tuple[int, int]]:
        live = {w + 1 for w in self._live(self._replied)}
        pts = sorted((x, y) for x, y in table.get(owner, {}).items() if x in live)
        if len(pts) < self.config.threshold:
            raise RoundAbortedError(
                f"round aborted at unmasking: {len(pts)} shares of {what} of client {owner} "
                f"< threshold {self.config.threshold}"
            )
        return pts

    def _finish_unmask(self) -> list[DownlinkMessage]:
        """Rebuild every needed secret from all shares that arrived, correcting wrong ones.

        :func:`crypto.shamir.robust_reconstruct` interpolates the first ``t`` shares and
        checks the result (commitment for ``b_u``, advertised ``s_pk`` for ``s_sk_u``);
        if that fails it decodes all ``m`` shares with Berlekamp-Welch (up to
        ``floor((m - t) / 2)`` wrong shares), names the holders whose shares disagree
        with the decoded polynomial and excludes them. The round completes unless a
        secret has more wrong shares than its spares can correct.
        """
        cfg = self.config
        t = cfg.threshold
        lagrange: dict[tuple[int, ...], list[int]] = {}

        def rebuild(pts: list[tuple[int, int]], check: Callable[[bytes], bool], what: str) -> bytes:
            xs = tuple(x for x, _ in pts[:t])
            if xs not in lagrange:
                lagrange[xs] = lagrange_coefficients_at_zero(xs)
            try:
                secret, bad = robust_reconstruct(pts, threshold=t, check=check, coefficients=lagrange[xs])
            except CryptoError as exc:
                raise RoundAbortedError(f"round aborted at unmasking: {what}: {exc}") from exc
            for x in sorted(bad):
                self.exclude(x - 1, f"released a wrong share of {what}")
            return secret

        survivors = set(self._survivors)
        dropped = sorted(u for u in self._included - survivors if self._mask_sets[u] & survivors)
        seeds: list[bytes] = []
        keys: dict[int, Any] = {}
        for u in self._survivors:

            def commits(b: bytes, u: int = u) -> bool:
                return (
                    self_mask_commitment(b, session_id=cfg.session_id, round_number=cfg.round_number, owner=u)
                    == self._commitments[u]
                )

            b = rebuild(self._shares_of(self._b_shares, u, "the self-mask seed"), commits, f"client {u}'s self-mask seed")
            seeds.append(derive_self_mask_seed(b, session_id=cfg.session_id, round_number=cfg.round_number, owner=u))
        for u in dropped:

            def matches(raw: bytes, u: int = u) -> bool:
                return public_bytes(x25519_private_from_bytes(raw)) == self._keys[u].s_pk

            raw = rebuild(self._shares_of(self._s_shares, u, "the mask key"), matches, f"client {u}'s mask key")
            keys[u] = x25519_private_from_bytes(raw)
        terms = [(seed, -1) for seed in seeds]
        for u in dropped:
            for v in sorted(self._mask_sets[u] & survivors):
                s_uv = derive_pair_key(
                    keys[u],
                    self._keys[v].s_pk,
                    purpose=Purpose.PAIRWISE_MASK,
                    session_id=cfg.session_id,
                    round_number=cfg.round_number,
                    me=u,
                    peer=v,
                )
                # y_v carries +PRG(s_uv) if u > v, -PRG(s_uv) if u < v: remove it
                terms.append((s_uv, -1 if u > v else +1))
        acc = self._acc
        apply_masks(acc, terms)
        if cfg.bits not in (32, 64):
            acc &= acc.dtype.type((1 << cfg.bits) - 1)
        self._total = acc
        self._b_shares.clear()
        self._s_shares.clear()
        return []
