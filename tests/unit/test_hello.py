"""Proof of possession at hello (issue 14, problem 2): one bad node is excluded, the rest go on."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fl.errors import ProtocolError
from secure_fl.hello import HelloReply, new_challenge, screen_hellos, sign_hello


def _reply(node: int, key: Ed25519PrivateKey, challenge: bytes, *, name: str | None = None,
           shape: tuple[int, ...] = (6,), classes: int = 2) -> HelloReply:
    name = name or f"site-{node}"
    return HelloReply(node, name, key.public_key().public_bytes_raw(), sign_hello(key, challenge, name=name),
                      shape, classes)


@pytest.fixture
def honest() -> tuple[bytes, list[Ed25519PrivateKey], list[HelloReply]]:
    challenge = new_challenge()
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    return challenge, keys, [_reply(i, k, challenge) for i, k in enumerate(keys)]


def test_honest_nodes_pass(honest: tuple[bytes, list[Ed25519PrivateKey], list[HelloReply]]) -> None:
    challenge, _, replies = honest
    screen = screen_hellos(replies, challenge=challenge, num_classes=2)
    assert [r.node for r in screen.accepted] == [0, 1, 2] and screen.excluded == {} and screen.feature_shape == (6,)


def test_copied_identity_key_is_excluded_and_the_others_continue(
    honest: tuple[bytes, list[Ed25519PrivateKey], list[HelloReply]],
) -> None:
    challenge, keys, replies = honest
    thief = Ed25519PrivateKey.generate()
    copied = HelloReply(9, "site-9", replies[0].identity_key, sign_hello(thief, challenge, name="site-9"), (6,), 2)
    # the copier answers first: without the private key it still cannot prove possession
    screen = screen_hellos([copied, *replies], challenge=challenge, num_classes=2)
    assert [r.node for r in screen.accepted] == [0, 1, 2]
    assert "no valid proof of possession" in screen.excluded[9]
    # the same site started twice (both hold the key): the later one is excluded
    twin = _reply(7, keys[1], challenge, name="site-1-again")
    screen = screen_hellos([*replies, twin], challenge=challenge, num_classes=2)
    assert "identity key node 1 already proved" in screen.excluded[7]


def test_replayed_answer_to_an_old_challenge_is_excluded(
    honest: tuple[bytes, list[Ed25519PrivateKey], list[HelloReply]],
) -> None:
    _, keys, replies = honest
    fresh = new_challenge()
    screen = screen_hellos(replies, challenge=fresh, num_classes=2)
    assert screen.accepted == () and len(screen.excluded) == 3


def test_wrong_shape_and_absurd_num_classes_are_excluded(
    honest: tuple[bytes, list[Ed25519PrivateKey], list[HelloReply]],
) -> None:
    challenge, _, replies = honest
    odd = _reply(5, Ed25519PrivateKey.generate(), challenge, shape=(7,))
    huge = _reply(6, Ed25519PrivateKey.generate(), challenge, classes=10**9)
    screen = screen_hellos([*replies, odd, huge], challenge=challenge, num_classes=2)
    assert [r.node for r in screen.accepted] == [0, 1, 2]
    assert "feature shape [7]" in screen.excluded[5]
    assert "1000000000 classes" in screen.excluded[6] and "num_classes = 2" in screen.excluded[6]


def test_shape_tie_stops_the_run() -> None:
    challenge = new_challenge()
    a = _reply(0, Ed25519PrivateKey.generate(), challenge, shape=(6,))
    b = _reply(1, Ed25519PrivateKey.generate(), challenge, shape=(7,))
    with pytest.raises(ProtocolError, match="no majority"):
        screen_hellos([a, b], challenge=challenge, num_classes=2)
