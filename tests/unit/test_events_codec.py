"""JSON codec of DP events: exact round trip for every type (nested too), strict decoding."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest

from audits.errors import EventCodecError
from audits.events_codec import EVENT_TAGS, MAX_DEPTH, decode_event, encode_event
from audits.ledger import canonical_json
from privacy.events import (
    ComposedEvent,
    DiscreteGaussianSumEvent,
    DPEvent,
    GaussianEvent,
    NonPrivateEvent,
    NoOpEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    SkellamSumEvent,
)

DGAUSS = DiscreteGaussianSumEvent(
    sigma=12.5, num_clients=7, l2_sensitivity=3.25, l1_sensitivity=40.0, dimension=1024
)
EVENTS: list[DPEvent] = [
    NoOpEvent(),
    NonPrivateEvent(),
    GaussianEvent(noise_multiplier=0.1 + 0.2),
    DGAUSS,
    DiscreteGaussianSumEvent(sigma=1.0, num_clients=2, l2_sensitivity=1.0, l1_sensitivity=1.0),
    SkellamSumEvent(mu=1e-7, num_clients=100, l2_sensitivity=2.5, l1_sensitivity=1e12),
    PoissonSampledEvent(sample_rate=0.01, event=GaussianEvent(1.1)),
    SelfComposedEvent(event=DGAUSS, count=500),
    ComposedEvent(events=()),
    ComposedEvent(
        events=(
            PoissonSampledEvent(0.5, SelfComposedEvent(SkellamSumEvent(2.0, 3, 1.0, 1.0), 3)),
            NoOpEvent(),
            ComposedEvent((GaussianEvent(2.0), NonPrivateEvent())),
        )
    ),
]


def test_every_event_type_has_a_tag() -> None:
    assert set(typing.get_args(DPEvent)) == set(EVENT_TAGS)
    assert len(set(EVENT_TAGS.values())) == len(EVENT_TAGS)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_round_trip_through_json(event: DPEvent) -> None:
    encoded = encode_event(event)
    assert isinstance(encoded["type"], str)
    text = canonical_json(encoded)
    decoded = decode_event(json.loads(text))
    assert decoded == event
    assert type(decoded) is type(event)
    assert canonical_json(encode_event(decoded)) == text  # stable bytes, so ledger hashes match


def test_float_fields_round_trip_bit_exact() -> None:
    value = 0.1 + 0.2
    decoded = decode_event(json.loads(json.dumps(encode_event(GaussianEvent(value)))))
    assert isinstance(decoded, GaussianEvent)
    assert decoded.noise_multiplier.hex() == value.hex()


def test_encoding_shape() -> None:
    assert encode_event(PoissonSampledEvent(0.01, GaussianEvent(1.1))) == {
        "type": "poisson_sampled",
        "sample_rate": 0.01,
        "event": {"type": "gaussian", "noise_multiplier": 1.1},
    }
    assert encode_event(ComposedEvent((NoOpEvent(),))) == {
        "type": "composed",
        "events": [{"type": "noop"}],
    }


def test_defaulted_field_may_be_absent() -> None:
    data = {
        "type": "discrete_gaussian_sum",
        "sigma": 1.0,
        "num_clients": 2,
        "l2_sensitivity": 1.0,
        "l1_sensitivity": 1.0,
    }
    decoded = decode_event(data)
    assert isinstance(decoded, DiscreteGaussianSumEvent) and decoded.dimension is None


@pytest.mark.parametrize(
    ("data", "location"),
    [
        ({"type": "laplace", "b": 1.0}, "$.type"),
        ({"noise_multiplier": 1.0}, "$.type"),
        ({"type": 3}, "$.type"),
        ({"type": "gaussian"}, "$.noise_multiplier"),
        ({"type": "gaussian", "noise_multiplier": 1.0, "extra": 1}, "$"),
        ({"type": "gaussian", "noise_multiplier": "1.0"}, "$.noise_multiplier"),
        ({"type": "gaussian", "noise_multiplier": True}, "$.noise_multiplier"),
        ({"type": "gaussian", "noise_multiplier": float("inf")}, "$.noise_multiplier"),
        ({"type": "self_composed", "event": {"type": "noop"}, "count": 2.0}, "$.count"),
        ({"type": "self_composed", "event": {"type": "noop"}, "count": True}, "$.count"),
        (
            {"type": "poisson_sampled", "sample_rate": 0.1, "event": {"type": "nope"}},
            "$.event.type",
        ),
        ({"type": "composed", "events": {"type": "noop"}}, "$.events"),
        (
            {"type": "composed", "events": [{"type": "noop"}, {"type": "gaussian"}]},
            "$.events[1].noise_multiplier",
        ),
        (
            {
                "type": "discrete_gaussian_sum",
                "sigma": 1.0,
                "num_clients": 2,
                "l2_sensitivity": 1.0,
                "l1_sensitivity": 1.0,
                "dimension": 1.5,
            },
            "$.dimension",
        ),
        ([], "$"),
    ],
)
def test_decoding_is_strict(data: Any, location: str) -> None:
    with pytest.raises(EventCodecError) as info:
        decode_event(data)
    assert info.value.location == location


def test_encoding_rejects_unknown_or_invalid_events() -> None:
    class Laplace:
        pass

    with pytest.raises(EventCodecError):
        encode_event(Laplace())  # type: ignore[arg-type]
    with pytest.raises(EventCodecError) as info:
        encode_event(ComposedEvent((GaussianEvent(float("nan")),)))
    assert info.value.location == "$.events[0].noise_multiplier"
    with pytest.raises(EventCodecError):
        encode_event(SelfComposedEvent(GaussianEvent(1.0), count=True))


def test_nesting_depth_is_bounded() -> None:
    data: dict[str, Any] = {"type": "noop"}
    for _ in range(MAX_DEPTH + 1):
        data = {"type": "self_composed", "event": data, "count": 1}
    with pytest.raises(EventCodecError, match="deeper"):
        decode_event(data)
