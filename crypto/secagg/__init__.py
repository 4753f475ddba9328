"""Pairwise-masking secure aggregation: SecAgg (Bonawitz et al., CCS'17) on the
SecAgg+ sparse graph (Bell et al., CCS'20), as sans-I/O state machines.

Entry points:

* :func:`simulate_round` -- run the real client and server objects in memory over a
  list of integer vectors and return the sum mod 2^b of the survivors' inputs;
* :class:`SecAggClient`, :class:`SecAggServer` -- the state machines
  (``receive(message) -> [messages]``) for a real transport;
* :mod:`crypto.secagg.wire` -- the byte encoding (``encode``/``decode``);
* :func:`default_neighbors` -- the default SecAgg+ degree for ``n`` clients;
* :func:`secagg_parameters` -- (k, t, cohort quorum) sized for ``c`` colluders.
"""

from __future__ import annotations

from crypto.secagg.client import SecAggClient, expand_mask
from crypto.secagg.graph import default_neighbors, neighbor_graph
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
)
from crypto.secagg.parameters import (
    SecAggParameters,
    check_parameters,
    consistency_quorum,
    secagg_parameters,
)
from crypto.secagg.server import SecAggServer
from crypto.secagg.simulate import (
    DROP_STAGES,
    Interceptor,
    RoundResult,
    TranscriptRecord,
    simulate_round,
)
from crypto.secagg.stages import PROTOCOL_STAGES, Role, Stage
from crypto.secagg.wire import decode, encode, pack_bits, unpack_bits

__all__ = [
    "DROP_STAGES",
    "PROTOCOL_STAGES",
    "TRANSITIONS",
    "AdvertiseKeys",
    "ConsistencyRequest",
    "ConsistencySignature",
    "Deadline",
    "DownlinkMessage",
    "EncryptedShares",
    "Interceptor",
    "KeyBroadcast",
    "MaskRequest",
    "MaskedInput",
    "Message",
    "Role",
    "RoundConfig",
    "RoundResult",
    "RoundStart",
    "SecAggClient",
    "SecAggParameters",
    "SecAggServer",
    "ShareBundle",
    "ShareReceipt",
    "Stage",
    "TranscriptRecord",
    "UnmaskRequest",
    "UnmaskShares",
    "UplinkMessage",
    "check_parameters",
    "consistency_quorum",
    "decode",
    "default_neighbors",
    "encode",
    "expand_mask",
    "neighbor_graph",
    "pack_bits",
    "secagg_parameters",
    "simulate_round",
    "unpack_bits",
]
