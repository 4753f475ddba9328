"""The stages of one SecAgg / SecAgg+ round, and the two roles.

Bonawitz et al. (CCS'17, Figure 4) number the rounds 0-4: AdvertiseKeys, ShareKeys,
MaskedInputCollection, ConsistencyCheck, Unmasking. We insert one short exchange,
``CHECK_SHARES``, between ShareKeys and MaskedInput: each client decrypts the shares
it was sent and reports the senders whose ciphertexts failed authentication, and the
server announces who is included in the masking. A client that sent corrupted shares
is thereby excluded *before* anyone masks with it, so the round can complete without
it (in the original protocol an honest client can only abort at unmasking time).

Stage order is the order of :class:`Stage` members; a client told to "drop at stage X"
sends nothing belonging to X or any later stage.
"""

from __future__ import annotations

import enum

__all__ = ["PROTOCOL_STAGES", "Role", "Stage"]


class Role(enum.Enum):
    """Which side of the protocol an object plays."""

    CLIENT = "client"
    SERVER = "server"


class Stage(enum.Enum):
    """Protocol stages in order, plus the two terminal states."""

    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    CHECK_SHARES = "check_shares"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"

    @property
    def order(self) -> int:
        """Position in the protocol (terminal states sort last)."""
        return _ORDER[self]


_ORDER = {stage: i for i, stage in enumerate(Stage)}

PROTOCOL_STAGES: tuple[Stage, ...] = (
    Stage.ADVERTISE,
    Stage.SHARE_KEYS,
    Stage.CHECK_SHARES,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY,
    Stage.UNMASK,
)
