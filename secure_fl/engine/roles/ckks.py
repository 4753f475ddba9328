"""CKKS aggregation (``protocol = "ckks"``): clients, server and the key-holder party.

The key holder is its own party (role ``"key-holder"``, a separate simulated party
in-process, a dedicated SuperNode on Flower): the server never holds the secret key.
One aggregation:

1. ``SETUP`` to the key holder: it generates a fresh key pair for this aggregation
   (:meth:`crypto.ckks.KeyHolder.generate`, members = the identity keys of *its own*
   roster, never the server's list) and answers the public context signed with its
   identity (:class:`crypto.ckks.SignedContext`);
2. ``SETUP`` to each client with that signed context: the client accepts it only under
   the key-holder identity it pins, encrypts ``u + N(0, (z C')^2 / P)`` (its Gaussian
   share, :class:`privacy.mechanisms.gaussian.GaussianShare`; without DP ``[u, w]``) and
   signs a receipt over the upload bytes (:class:`crypto.ckks.UploadReceipt`);
3. the server adds the ciphertexts with the public context only
   (:class:`crypto.ckks.Aggregator`, memory O(d));
4. ``CKKS_DECRYPT`` to the key holder with the summed ciphertext and the receipts: it
   counts the distinct members' valid receipts itself and decrypts once.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from crypto.ckks import (
    Aggregator,
    CkksClient,
    CkksParams,
    EncryptedAggregate,
    KeyHolder,
    PublicContext,
    SignedContext,
    UploadReceipt,
)
from crypto.errors import CryptoError, ProtocolError
from crypto.prg import Csprng
from secure_fl.engine.transport import (
    CKKS_DECRYPT,
    HELLO,
    SETUP,
    Command,
    Envelope,
    Exchange,
)
from secure_fl.errors import RemoteProtocolError

__all__ = ["CkksSum", "KeyHolderEngine", "ckks_sum", "client_upload", "encoding_bound"]


def encoding_bound(mech: Any, clip: float) -> float:
    """The bound of encoded values: ``max(C', 1)`` (``|w u_j| <= C'``, weight ``w <= 1``),
    plus ``8`` local noise standard deviations under DP."""
    bound = max(clip, 1.0)
    if mech is not None:
        bound += 8.0 * float(mech.local_std)
    return bound


def client_upload(
    env: Envelope, u: npt.NDArray[np.float64], *, weight: float, mech: Any, site: Any, rng: Csprng, version: int
) -> Envelope:
    """Encrypt the client's vector under the pinned key holder's context; frames are
    (ciphertext, receipt)."""
    pinned = site.rules.key_holder
    if pinned is None:
        raise RemoteProtocolError("this site pins no CKKS key holder (site rules key_holder)")
    params = CkksParams(poly_modulus_degree=env.get("poly_modulus_degree", int))
    signed = SignedContext.from_bytes(env.get("ckks_context", bytes))
    try:
        client = CkksClient(signed, key_holder=pinned, identity_key=site.identity_key, params=params)
    except CryptoError as exc:
        raise RemoteProtocolError(f"refused the CKKS context: {exc}") from exc
    vec = mech.client_encode(u, rng=rng) if mech is not None else np.concatenate([u, [weight]])
    clip = env.get("clip", float)
    blob, receipt = client.encrypt(vec, bound=encoding_bound(mech, _mech_clip(env, clip)), round=version)
    return Envelope(frames=(blob, receipt.to_bytes()))


def _mech_clip(env: Envelope, clip: float) -> float:
    kappa = env.fields.get("kappa")
    k = float(kappa) if isinstance(kappa, float) else 0.0
    return float(np.sqrt(clip**2 + k**2 / 4.0))


# -- the key holder party ---------------------------------------------------------------------------
class KeyHolderEngine:
    """The CKKS key holder's engine: ``handle(kind, envelope, state) -> Envelope``.

    ``members`` are the identity keys whose receipts count (the federation roster);
    the secret key of each aggregation stays in this object (a process that restarts
    between ``SETUP`` and ``CKKS_DECRYPT`` loses it, and the aggregation aborts).
    """

    def __init__(self, *, name: str, identity_key: Any, members: list[bytes], min_summands: int = 2) -> None:
        self.name = name
        self.identity_key = identity_key
        self.members = list(members)
        self.min_summands = min_summands
        self._holders: dict[int, KeyHolder] = {}

    def handle(self, kind: str, env: Envelope, state: Any) -> Envelope:
        from secure_fl.hello import sign_hello

        try:
            if kind == HELLO:
                return Envelope(fields={
                    "site": self.name, "role": "key-holder",
                    "identity_key": self.identity_key.public_key().public_bytes_raw(),
                    "signature": sign_hello(self.identity_key, env.get("challenge", bytes), name=self.name),
                    "feature_shape": [1], "num_classes": 2, "num_train": 0,
                })
            if kind == SETUP:
                version = env.get("version", int)
                params = CkksParams(poly_modulus_degree=env.get("poly_modulus_degree", int))
                holder = KeyHolder.generate(
                    params, members=self.members, identity_key=self.identity_key,
                    min_summands=max(self.min_summands, 1),
                )
                self._holders = {version: holder}  # one live key: the newest aggregation's
                return Envelope(frames=(holder.signed_context().to_bytes(),), fields={"site": self.name})
            if kind == CKKS_DECRYPT:
                version = env.get("version", int)
                if version not in self._holders:
                    raise RemoteProtocolError(f"no CKKS key for aggregation {version} (already used, or never made)")
                holder = self._holders.pop(version)
                if len(env.frames) != 1:
                    raise RemoteProtocolError("CKKS_DECRYPT carries exactly one aggregate")
                total = holder.decrypt_aggregate(EncryptedAggregate.from_bytes(env.frames[0]))
                return Envelope(fields={"site": self.name}, arrays={"total": np.asarray(total, dtype=np.float64)})
            raise RemoteProtocolError(f"the key holder does not handle {kind!r} messages")
        except (CryptoError, ProtocolError, RemoteProtocolError, ValueError) as exc:
            return Envelope(fields={"refused": f"{type(exc).__name__}: {exc}"[:1000], "refusal": "error",
                                    "site": self.name})


# -- server half -----------------------------------------------------------------------------------
@dataclass
class CkksSum:
    """What the server learned: the decrypted sum (``None`` when aborted) and digests."""

    total: npt.NDArray[np.float64] | None
    survivors: tuple[int, ...]
    excluded: dict[int, str]
    dropped: dict[str, list[int]]
    refused: dict[int, str]
    refusal_kind: dict[int, str]
    transcript: list[tuple[int, str, int, str]]
    upload_bytes: dict[int, int]
    download_bytes: dict[int, int]
    first_replies: dict[int, Envelope] = field(default_factory=dict)
    aborted: str | None = None
    aggregate_bytes: int = 0


def ckks_sum(
    *,
    addresses: list[int],
    key_holder: int,
    version: int,
    params: CkksParams,
    dim: int,
    bound: float,
    first_message: Any,
    key_setup: Envelope,
    first_timeout: float | None,
    stage_timeout: float | None,
) -> Generator[Command, Any, CkksSum]:
    """One CKKS aggregation with ``addresses[i]`` as member ``i`` (see the module docstring)."""
    import hashlib

    n = len(addresses)
    out = CkksSum(None, (), {}, {}, {}, {}, [], {}, {})
    replies: dict[int, Envelope] = yield Exchange({key_holder: (SETUP, key_setup)}, stage="key_setup",
                                                  timeout=stage_timeout)
    kh = replies.get(key_holder)
    if kh is None or "refused" in kh.fields or len(kh.frames) != 1:
        why = "no answer" if kh is None else str(kh.fields.get("refused", "no signed context"))
        out.aborted = f"the CKKS key holder did not set up the aggregation: {why}"
        return out
    signed_bytes = kh.frames[0]
    try:
        signed = SignedContext.from_bytes(signed_bytes)
        ctx = PublicContext.from_bytes(signed.context, params)
    except CryptoError as exc:
        out.aborted = f"the key holder's context is unreadable: {exc}"
        return out
    agg = Aggregator(ctx, dim, bound=bound, round=version, session_id=signed.session_id)
    messages = {addresses[i]: (SETUP, first_message(i, signed_bytes)) for i in range(n)}
    out.download_bytes = {i: len(signed_bytes) for i in range(n)}
    replies = yield Exchange(messages, stage="upload", timeout=first_timeout)
    for i, address in enumerate(addresses):
        env = replies.get(address)
        if env is None:
            out.dropped.setdefault("upload", []).append(i)
            continue
        out.first_replies[i] = env
        if "refused" in env.fields:
            out.refused[i] = str(env.fields["refused"])
            out.refusal_kind[i] = str(env.fields.get("refusal", "error"))
            continue
        if len(env.frames) != 2:
            out.excluded[i] = "a CKKS upload is (ciphertext, receipt)"
            continue
        blob, receipt = env.frames
        out.upload_bytes[i] = len(blob) + len(receipt)
        out.transcript.append((i, "upload", len(blob), hashlib.sha256(blob).hexdigest()))
        try:
            agg.add(blob, sender=i, receipt=UploadReceipt.from_bytes(receipt))
        except (CryptoError, ProtocolError) as exc:
            out.excluded[i] = str(exc)
    if agg.count == 0:
        out.aborted = "no CKKS upload arrived"
        return out
    result = agg.result().to_bytes()
    out.aggregate_bytes = len(result)
    replies = yield Exchange(
        {key_holder: (CKKS_DECRYPT, Envelope(frames=(result,), fields={"version": version}))},
        stage="decrypt", timeout=stage_timeout,
    )
    dec = replies.get(key_holder)
    total = dec.arrays.get("total") if dec is not None else None
    if dec is None or total is None:
        why = "no answer" if dec is None else str(dec.fields.get("refused", "no total"))
        out.aborted = f"the CKKS key holder refused to decrypt: {why}"
        return out
    out.total = np.asarray(total, dtype=np.float64)
    out.survivors = tuple(sorted(agg.senders))
    return out
