"""Versioned, length-checked binary encoding of SecAgg messages.

Frame (all integers big-endian)::

    magic "SFSA" | version u8 (= VERSION) | type u8 | stage u8 | 0x00 | body_len u32 | body

Version 3: consistency signatures in ``UnmaskRequest`` are (signer, mask set,
signature) triples, each signature covering the survivor set and the signer's mask set
(:func:`~crypto.secagg.messages.consistency_payload`); version 2 sent (signer,
signature) pairs and a separately signed mask set for every surviving partner.

``body`` is a msgpack array of the message's fields (session id and round first).
For :class:`MaskedInput` the msgpack array holds (session, round, sender, bits, d,
mask set, mask-set signature) and is followed, inside the body, by the coordinates bit-packed at exactly ``b`` bits
each, little-endian bit order (coordinate ``i`` occupies bits ``[i b, (i+1) b)``), so
the upload is ``ceil(d b / 8)`` bytes plus a header of ~130 bytes and 1-5 bytes per mask partner, and the vector is
copied once on encoding and not at all on decoding. (Flower's SecAgg+ ships int64
arrays: 64 bits per coordinate.)

Decoding is strict: wrong magic/version/type/stage, a length field that disagrees with
the data, trailing bytes, wrong field counts or types, non-zero padding bits, and
anything the message's own validation refuses raise
:class:`~crypto.errors.RemoteProtocolError` (with the sender when it is known). No
decoder path raises anything else.

Bit packing is vectorised over blocks of 64 coordinates (64 coordinates at ``b`` bits
are exactly ``b`` 64-bit words), so a million coordinates pack in milliseconds.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from crypto.errors import CryptoError, RemoteProtocolError
from crypto.secagg.messages import (
    MAX_BITS,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    KeyBroadcast,
    MaskedInput,
    MaskRequest,
    Message,
    RoundStart,
    ShareBundle,
    ShareReceipt,
    UnmaskRequest,
    UnmaskShares,
)
from crypto.secagg.stages import Stage
from crypto.shamir import share_from_bytes, share_to_bytes

__all__ = ["MAGIC", "VERSION", "decode", "encode", "pack_bits", "packed_size", "unpack_bits"]

MAGIC = b"SFSA"
VERSION = 3
_HEADER = struct.Struct(">4sBBBBI")
MAX_FRAME_BYTES = 1 << 31
_PREFIX_MAX = 1 << 16  # bound on the msgpack prefix of a MaskedInput frame (mask set, signature)

_TYPES: dict[type[Message], int] = {
    RoundStart: 1,
    AdvertiseKeys: 2,
    KeyBroadcast: 3,
    EncryptedShares: 4,
    ShareBundle: 5,
    ShareReceipt: 6,
    MaskRequest: 7,
    MaskedInput: 8,
    ConsistencyRequest: 9,
    ConsistencySignature: 10,
    UnmaskRequest: 11,
    UnmaskShares: 12,
}
_BY_CODE = {code: cls for cls, code in _TYPES.items()}
_STAGE_CODE = {stage: i for i, stage in enumerate(Stage)}


# -- bit packing --------------------------------------------------------------------------
def packed_size(count: int, bits: int) -> int:
    """Bytes of ``count`` coordinates at ``bits`` bits: ``ceil(count * bits / 8)``."""
    return (count * bits + 7) // 8


def pack_bits(values: npt.NDArray[np.unsignedinteger], bits: int) -> bytes:
    """Pack non-negative integers ``< 2**bits`` at exactly ``bits`` bits each (LSB first)."""
    return bytes(_packed(values, bits))


def _packed(values: npt.NDArray[np.unsignedinteger], bits: int) -> bytes | memoryview:
    """:func:`pack_bits` without the final copy for byte-aligned widths (a view)."""
    if not 1 <= bits <= 64:
        raise CryptoError(f"bits must be in [1, 64], got {bits}")
    count = int(values.size)
    if bits in (8, 16, 32, 64):
        arr = np.ascontiguousarray(np.asarray(values).astype(f"<u{bits // 8}", copy=False))
        return memoryview(arr.data).cast("B")
    groups = -(-count // 64)
    block = np.zeros(groups * 64, dtype=np.uint64)
    block[:count] = values
    cols = np.ascontiguousarray(block.reshape(groups, 64).T)  # (64, groups)
    words = np.zeros((bits, groups), dtype=np.uint64)
    for j in range(64):
        wi, sh = divmod(j * bits, 64)
        words[wi] |= cols[j] << np.uint64(sh)
        if sh + bits > 64:
            words[wi + 1] |= cols[j] >> np.uint64(64 - sh)
    return np.ascontiguousarray(words.T).astype("<u8", copy=False).tobytes()[: packed_size(count, bits)]


def unpack_bits(data: bytes | memoryview, bits: int, count: int) -> npt.NDArray[np.unsignedinteger]:
    """Strict inverse of :func:`pack_bits` -> uint32 (bits <= 32) or uint64 array.

    Raises :class:`~crypto.errors.CryptoError` on a wrong byte length or non-zero
    padding bits (so every vector has exactly one encoding).
    """
    if not 1 <= bits <= 64:
        raise CryptoError(f"bits must be in [1, 64], got {bits}")
    if len(data) != packed_size(count, bits):
        raise CryptoError(f"packed vector must be {packed_size(count, bits)} bytes, got {len(data)}")
    out_dtype = np.uint32 if bits <= 32 else np.uint64
    if bits in (8, 16, 32, 64):
        # a read-only view of the frame: no copy (the message keeps it read-only anyway)
        return np.frombuffer(data, dtype=f"<u{bits // 8}").astype(out_dtype, copy=False)
    groups = -(-count // 64)
    buf = np.zeros(groups * bits * 8, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    words = np.ascontiguousarray(buf.view("<u8").reshape(groups, bits).T)  # (bits, groups)
    cols = np.empty((64, groups), dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1)
    for j in range(64):
        wi, sh = divmod(j * bits, 64)
        col = words[wi] >> np.uint64(sh)
        if sh + bits > 64:
            col |= words[wi + 1] << np.uint64(64 - sh)
        cols[j] = col & mask
    flat = cols.T.reshape(-1)
    if flat[count:].any():
        raise CryptoError("non-zero padding bits in packed vector")
    return flat[:count].astype(out_dtype)


# -- encoding -----------------------------------------------------------------------------
def _pairs_bytes(pairs: tuple[tuple[int, bytes], ...]) -> list[list[Any]]:
    return [[i, b] for i, b in pairs]


def _body(msg: Message) -> list[Any]:
    head: list[Any] = [msg.session_id, msg.round_number]
    if isinstance(msg, RoundStart):
        return [*head, msg.recipient]
    if isinstance(msg, AdvertiseKeys):
        return [*head, msg.sender, msg.c_pk, msg.s_pk, msg.signature]
    if isinstance(msg, KeyBroadcast):
        keys = [[k.sender, k.c_pk, k.s_pk, k.signature] for k in msg.keys]
        for k in msg.keys:
            if k.session_id != msg.session_id or k.round_number != msg.round_number:
                raise CryptoError("forwarded keys must belong to the broadcast's session and round")
        return [*head, msg.recipient, keys]
    if isinstance(msg, EncryptedShares):
        return [*head, msg.sender, msg.commitment, _pairs_bytes(msg.ciphertexts)]
    if isinstance(msg, ShareBundle):
        return [*head, msg.recipient, _pairs_bytes(msg.ciphertexts)]
    if isinstance(msg, ShareReceipt):
        return [*head, msg.sender, list(msg.complaints)]
    if isinstance(msg, MaskRequest):
        return [*head, msg.recipient, list(msg.included)]
    if isinstance(msg, MaskedInput):  # the packed vector follows the msgpack array
        return [*head, msg.sender, msg.bits, int(msg.vector.size), list(msg.mask_set), msg.mask_signature]
    if isinstance(msg, ConsistencyRequest):
        return [*head, msg.recipient, list(msg.survivors)]
    if isinstance(msg, ConsistencySignature):
        return [*head, msg.sender, msg.signature]
    if isinstance(msg, UnmaskRequest):
        return [
            *head,
            msg.recipient,
            list(msg.survivors),
            [[w, list(members), sig] for w, members, sig in msg.signatures],
            [[o, list(members), sig] for o, members, sig in msg.mask_sets],
        ]
    if isinstance(msg, UnmaskShares):
        return [
            *head,
            msg.sender,
            [[o, share_to_bytes(y)] for o, y in msg.self_mask_shares],
            [[o, share_to_bytes(y)] for o, y in msg.key_shares],
        ]
    raise CryptoError(f"cannot encode {type(msg).__name__}")


def encode(msg: Message) -> bytes:
    """Serialize a protocol message to one self-delimiting frame."""
    code = _TYPES.get(type(msg))
    if code is None:
        raise CryptoError(f"{type(msg).__name__} is not a wire message")
    body = msgpack.packb(_body(msg), use_bin_type=True)
    if isinstance(msg, MaskedInput):
        vector = _packed(msg.vector, msg.bits)
        size = len(body) + len(vector)
        return b"".join((_HEADER.pack(MAGIC, VERSION, code, _STAGE_CODE[msg.stage], 0, size), body, vector))
    return _HEADER.pack(MAGIC, VERSION, code, _STAGE_CODE[msg.stage], 0, len(body)) + body


# -- decoding -----------------------------------------------------------------------------
class _Malformed(Exception):
    pass


def _fields(obj: Any, count: int) -> tuple[Any, ...]:
    if not isinstance(obj, tuple) or len(obj) != count:
        raise _Malformed(f"expected {count} fields")
    return obj


def _pairs(obj: Any) -> tuple[tuple[int, bytes], ...]:
    if not isinstance(obj, tuple):
        raise _Malformed("expected a list of pairs")
    return tuple(_fields(p, 2) for p in obj)


def _ints(obj: Any) -> tuple[int, ...]:
    if not isinstance(obj, tuple):
        raise _Malformed("expected a list of integers")
    return obj


def _triples(obj: Any) -> tuple[tuple[int, tuple[int, ...], bytes], ...]:
    if not isinstance(obj, tuple):
        raise _Malformed("expected a list of (index, members, signature) triples")
    return tuple((m[0], _ints(m[1]), m[2]) for m in (_fields(m, 3) for m in obj))


def _share_pairs(obj: Any) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((o, share_from_bytes(y)) for o, y in _pairs(obj))
    except CryptoError as exc:
        raise _Malformed(str(exc)) from exc


def _build(cls: type[Message], f: tuple[Any, ...], trailer: memoryview | None = None) -> Message:
    s, r = f[0], f[1]
    if cls is RoundStart:
        return RoundStart(session_id=s, round_number=r, recipient=f[2])
    if cls is AdvertiseKeys:
        return AdvertiseKeys(session_id=s, round_number=r, sender=f[2], c_pk=f[3], s_pk=f[4], signature=f[5])
    if cls is KeyBroadcast:
        if not isinstance(f[3], tuple):
            raise _Malformed("expected a list of keys")
        keys = tuple(
            AdvertiseKeys(session_id=s, round_number=r, sender=k[0], c_pk=k[1], s_pk=k[2], signature=k[3])
            for k in (_fields(k, 4) for k in f[3])
        )
        return KeyBroadcast(session_id=s, round_number=r, recipient=f[2], keys=keys)
    if cls is EncryptedShares:
        return EncryptedShares(session_id=s, round_number=r, sender=f[2], commitment=f[3], ciphertexts=_pairs(f[4]))
    if cls is ShareBundle:
        return ShareBundle(session_id=s, round_number=r, recipient=f[2], ciphertexts=_pairs(f[3]))
    if cls is ShareReceipt:
        return ShareReceipt(session_id=s, round_number=r, sender=f[2], complaints=_ints(f[3]))
    if cls is MaskRequest:
        return MaskRequest(session_id=s, round_number=r, recipient=f[2], included=_ints(f[3]))
    if cls is MaskedInput:
        bits, count, packed = f[3], f[4], trailer
        if not (type(bits) is int and type(count) is int and packed is not None):
            raise _Malformed("bad masked vector fields")
        if not 1 <= bits <= MAX_BITS or count < 1:
            raise _Malformed("bad masked vector size or bit width")
        try:
            vector = unpack_bits(packed, bits, count)
        except CryptoError as exc:
            raise _Malformed(str(exc)) from exc
        return MaskedInput(
            session_id=s,
            round_number=r,
            sender=f[2],
            bits=bits,
            vector=vector,
            mask_set=_ints(f[5]),
            mask_signature=f[6],
        )
    if cls is ConsistencyRequest:
        return ConsistencyRequest(session_id=s, round_number=r, recipient=f[2], survivors=_ints(f[3]))
    if cls is ConsistencySignature:
        return ConsistencySignature(session_id=s, round_number=r, sender=f[2], signature=f[3])
    if cls is UnmaskRequest:
        return UnmaskRequest(
            session_id=s,
            round_number=r,
            recipient=f[2],
            survivors=_ints(f[3]),
            signatures=_triples(f[4]),
            mask_sets=_triples(f[5]),
        )
    if cls is UnmaskShares:
        return UnmaskShares(
            session_id=s,
            round_number=r,
            sender=f[2],
            self_mask_shares=_share_pairs(f[3]),
            key_shares=_share_pairs(f[4]),
        )
    raise _Malformed("unknown message type")


_FIELD_COUNT = {
    RoundStart: 3,
    AdvertiseKeys: 6,
    KeyBroadcast: 4,
    EncryptedShares: 5,
    ShareBundle: 4,
    ShareReceipt: 4,
    MaskRequest: 4,
    MaskedInput: 7,
    ConsistencyRequest: 4,
    ConsistencySignature: 4,
    UnmaskRequest: 6,
    UnmaskShares: 5,
}


def decode(data: bytes, *, sender: int | None = None) -> Message:
    """Parse one frame; any malformation raises RemoteProtocolError(sender=sender).

    ``sender`` is the authenticated channel peer, if the transport knows it.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError("a frame must be bytes", sender=sender)
    data = bytes(data)
    if len(data) < _HEADER.size or len(data) > MAX_FRAME_BYTES:
        raise RemoteProtocolError("truncated or oversized frame", sender=sender)
    magic, version, code, stage_code, reserved, body_len = _HEADER.unpack_from(data)
    if magic != MAGIC or reserved != 0:
        raise RemoteProtocolError("not a secure-fl SecAgg frame", sender=sender)
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported wire version {version}", sender=sender)
    cls = _BY_CODE.get(code)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {code}", sender=sender)
    if stage_code != _STAGE_CODE[cls.STAGE]:
        raise RemoteProtocolError(f"{cls.__name__} carries the wrong stage", sender=sender)
    if body_len != len(data) - _HEADER.size:
        raise RemoteProtocolError("frame length field disagrees with the data", sender=sender)
    limits: dict[str, Any] = {
        "use_list": False,
        "raw": False,
        "strict_map_key": True,
        "max_map_len": 0,
        "max_ext_len": 0,
        "max_str_len": 0,
    }
    try:
        trailer = None
        if cls is MaskedInput:
            # the msgpack prefix is small; the packed vector after it is not copied
            unpacker = msgpack.Unpacker(max_buffer_size=_PREFIX_MAX, **limits)
            unpacker.feed(data[_HEADER.size : _HEADER.size + _PREFIX_MAX])
            obj = unpacker.unpack()
            trailer = memoryview(data)[_HEADER.size + unpacker.tell() :]
        else:
            obj = msgpack.unpackb(data[_HEADER.size :], **limits)
        msg = _build(cls, _fields(obj, _FIELD_COUNT[cls]), trailer)
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(str(exc), sender=sender if sender is not None else exc.sender) from exc
    except Exception as exc:  # msgpack raises many types; none may escape unwrapped
        raise RemoteProtocolError(f"malformed {cls.__name__}: {exc}", sender=sender) from exc
    return msg
