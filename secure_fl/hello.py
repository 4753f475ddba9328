"""Proof of possession at hello, and the server's screening of the nodes that answered.

Before a deployment forms its first cohort, the server sends every connected node a
fresh 32-byte challenge. A site answers with its name, identity public key, feature
shape, number of classes and of training examples, and an Ed25519 signature (context
``flower-hello``, :mod:`crypto.signatures`) over

    challenge || identity_public_key || utf8(name)

made with its identity key. Possession of the key is thereby proved for this run: a
node that copied another site's *public* key cannot sign, and an old answer cannot be
replayed against a new challenge.

:func:`screen_hellos` is the server's pure decision. A node is **excluded and logged**,
and the run goes on with the others, when it

* sends no valid proof of possession (forged, replayed or missing signature);
* presents an identity key or a site name another (earlier) node already proved;
* reports a feature shape other than the one most nodes report;
* reports more classes than the run configuration has (``num_classes`` is set by the
  run, never by the nodes: a node reporting ``10**9`` cannot size the model).

Only if no shape is reported by a strict plurality does the run stop, since the server
cannot tell which side is wrong.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.errors import CryptoError
from crypto.signatures import sign, verify
from secure_fl.errors import ProtocolError

__all__ = [
    "CHALLENGE_BYTES",
    "HELLO_CONTEXT",
    "HelloReply",
    "HelloScreen",
    "hello_message",
    "new_challenge",
    "screen_hellos",
    "sign_hello",
]

CHALLENGE_BYTES = 32
HELLO_CONTEXT = b"flower-hello"
MAX_NAME = 200


def new_challenge() -> bytes:
    """A fresh challenge from the OS CSPRNG (one per run's hello)."""
    return secrets.token_bytes(CHALLENGE_BYTES)


def hello_message(challenge: bytes, identity_key: bytes, name: str) -> bytes:
    """The bytes a site signs: ``challenge || identity_key || utf8(name)``."""
    return challenge + identity_key + name.encode("utf-8")


def sign_hello(key: Ed25519PrivateKey, challenge: bytes, *, name: str) -> bytes:
    """The site's proof of possession of ``key`` for ``challenge``."""
    if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_BYTES:
        raise ProtocolError(f"a hello challenge is {CHALLENGE_BYTES} bytes")
    return sign(key, hello_message(challenge, key.public_key().public_bytes_raw(), name), context=HELLO_CONTEXT)


@dataclass(frozen=True)
class HelloReply:
    """What one node said at hello (``node`` is its transport id)."""

    node: int
    name: str
    identity_key: bytes
    signature: bytes
    feature_shape: tuple[int, ...]
    num_classes: int
    num_train: int = 0


@dataclass(frozen=True)
class HelloScreen:
    """The outcome: accepted replies (in input order), the feature shape of the run, and
    node -> reason for every excluded node."""

    accepted: tuple[HelloReply, ...]
    feature_shape: tuple[int, ...]
    excluded: dict[int, str] = field(default_factory=dict)


def _possession(reply: HelloReply, challenge: bytes) -> str | None:
    if not reply.name or len(reply.name) > MAX_NAME:
        return f"site name must be 1..{MAX_NAME} characters"
    try:
        verify(
            reply.identity_key,
            reply.signature,
            hello_message(challenge, reply.identity_key, reply.name),
            context=HELLO_CONTEXT,
        )
    except CryptoError:
        return "no valid proof of possession of its identity key (copied or forged key, or a replayed answer)"
    return None


def screen_hellos(replies: Sequence[HelloReply], *, challenge: bytes, num_classes: int) -> HelloScreen:
    """Decide which hello replies join the run (see the module docstring)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ProtocolError(f"the run's num_classes must be an integer >= 2, got {num_classes!r}")
    excluded: dict[int, str] = {}
    proven: list[HelloReply] = []
    keys: dict[bytes, int] = {}
    names: dict[str, int] = {}
    for r in replies:
        why = _possession(r, challenge)
        if why is None and r.identity_key in keys:
            why = f"presents the identity key node {keys[r.identity_key]} already proved"
        if why is None and r.name in names:
            why = f"presents the site name {r.name!r} node {names[r.name]} already uses"
        if why is None and not 1 <= r.num_classes <= num_classes:
            why = f"reports {r.num_classes} classes; the run configuration has num_classes = {num_classes}"
        if why is None and (not r.feature_shape or any(v < 1 for v in r.feature_shape)):
            why = f"reports an invalid feature shape {list(r.feature_shape)}"
        if why is not None:
            excluded[r.node] = why
            continue
        keys[r.identity_key] = r.node
        names[r.name] = r.node
        proven.append(r)
    if not proven:
        return HelloScreen((), (), excluded)
    counts = Counter(r.feature_shape for r in proven).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        raise ProtocolError(
            f"sites disagree on the feature shape with no majority: {sorted(s for s, _ in counts)}"
        )
    shape = counts[0][0]
    accepted = []
    for r in proven:
        if r.feature_shape != shape:
            excluded[r.node] = f"reports feature shape {list(r.feature_shape)}; the other sites report {list(shape)}"
        else:
            accepted.append(r)
    return HelloScreen(tuple(accepted), shape, excluded)
