"""FlowerTransport over a scripted Grid: timeouts, error replies, arrival order, drops.

The grid is fake (no SuperLink) but speaks Flower's ``Message``/``RecordDict``; a virtual
clock makes the deadlines exact without sleeping."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("flwr")

from flwr.app import Error, Message  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402

from secure_fl.engine.transport import (  # noqa: E402
    EVALUATE,
    HELLO,
    PROTOCOL,
    SETUP,
    Envelope,
    Exchange,
    NextReply,
    Post,
    drive,
)
from secure_fl.transport.flower.codec import pack, unpack  # noqa: E402
from secure_fl.transport.flower.grid import FlowerTransport, kind_of, message_type  # noqa: E402
from secure_fl.transport.flower.settings import DeploymentSettings  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 1e-3)


class ScriptedGrid(Grid):
    """Each node answers after ``delay[node]`` virtual seconds (``None``: never); a node
    in ``fail`` answers with a Flower error; ``garbage`` answers with foreign records."""

    def __init__(self, clock: Clock, delay: dict[int, float | None], *, fail: set[int] | None = None,
                 garbage: set[int] | None = None) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.clock, self.delay = clock, delay
        self.fail, self.garbage = fail or set(), garbage or set()
        self.ready: dict[str, tuple[float, Message]] = {}
        self.pushed: list[tuple[int, str, Envelope]] = []
        self._next = 0

    def set_run(self, run: Any) -> None:  # pragma: no cover - unused
        pass

    @property
    def run(self) -> Any:  # pragma: no cover - unused
        return None

    def create_message(self, content: Any, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # pragma: no cover - unused
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> list[int]:
        return list(self.delay)

    def push_messages(self, messages: Any) -> list[str]:
        ids = []
        for msg in messages:
            self._next += 1
            mid = f"m{self._next}"
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            env = unpack(msg.content)
            self.pushed.append((node, msg.metadata.message_type, env))
            ids.append(mid)
            d = self.delay[node]
            if d is None:
                continue
            if node in self.fail:
                reply = Message(Error(code=0, reason="ValueError: bad data"), reply_to=msg)
            elif node in self.garbage:
                from flwr.app import ConfigRecord, RecordDict

                reply = Message(RecordDict({"smuggled": ConfigRecord({"x": 1})}), reply_to=msg)
            else:
                reply = Message(pack(fields={"site": f"s{node}", "echo": env.fields.get("n", 0)}), reply_to=msg)
            self.ready[mid] = (self.clock.t + d, reply)
        return ids

    def pull_messages(self, message_ids: Any) -> list[Message]:
        out = []
        for mid in list(message_ids):
            if mid in self.ready and self.ready[mid][0] <= self.clock.t:
                out.append(self.ready.pop(mid)[1])
        return out

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:  # pragma: no cover
        raise NotImplementedError


def _transport(grid: ScriptedGrid, clock: Clock, **kw: Any) -> FlowerTransport:  # noqa: D103
    settings = DeploymentSettings(train_timeout=30.0, stage_timeout=5.0, poll_interval=0.1)
    return FlowerTransport(grid, settings, sleep=clock.sleep, clock=clock, **kw)


def test_kinds_map_to_flower_message_types_and_back() -> None:
    assert message_type(SETUP) == "train.secure_fl_setup"
    assert message_type(EVALUATE) == "evaluate.secure_fl_evaluate"
    assert message_type(HELLO).startswith("query.") and message_type(PROTOCOL).startswith("query.")
    for kind in (SETUP, EVALUATE, HELLO, PROTOCOL):
        assert kind_of(message_type(kind)) == kind
    with pytest.raises(ValueError, match="unknown engine message kind"):
        message_type("train")


def test_exchange_waits_for_replies_until_the_timeout_and_reports_failures() -> None:
    clock = Clock()
    grid = ScriptedGrid(clock, {1: 0.5, 2: 3.0, 3: None, 4: 0.2, 5: 0.1}, fail={4}, garbage={5})
    tr = _transport(grid, clock)
    msgs = {a: (PROTOCOL, Envelope(fields={"n": a})) for a in (1, 2, 3, 4, 5)}
    replies = tr.exchange(Exchange(msgs, stage="share_keys", timeout=2.0))
    assert set(replies) == {1, 4, 5}  # 2 is too slow, 3 never answers
    assert replies[1].fields["echo"] == 1
    assert replies[4].fields["refusal"] == "error" and "bad data" in str(replies[4].fields["refused"])
    assert replies[5].fields["refusal"] == "error" and "unexpected records" in str(replies[5].fields["refused"])
    assert 2.0 <= clock.t < 2.2  # gave up at the deadline, not before
    assert {t for _, t, _ in grid.pushed} == {"query.secure_fl_protocol"}


def test_exchange_default_timeout_is_train_timeout_for_setup() -> None:
    clock = Clock()
    grid = ScriptedGrid(clock, {1: 20.0})
    tr = _transport(grid, clock)
    assert set(tr.exchange(Exchange({1: (SETUP, Envelope())}, stage="setup"))) == {1}
    assert set(tr.exchange(Exchange({1: (HELLO, Envelope())}, stage="hello"))) == set()  # stage timeout 5 s
    assert grid.pushed[0][1] == "train.secure_fl_setup"


def test_posted_replies_arrive_one_at_a_time_in_arrival_order() -> None:
    clock = Clock()
    grid = ScriptedGrid(clock, {1: 3.0, 2: 1.0, 3: 2.0, 4: None})
    tr = _transport(grid, clock)
    tr.post(Post({a: (SETUP, Envelope()) for a in (1, 2, 3, 4)}, stage="train"))
    order = []
    for _ in range(3):
        got = tr.next_reply(NextReply(timeout=10.0))
        assert got is not None
        order.append(got[0])
    assert order == [2, 3, 1]
    assert [a.address for a in tr.arrivals] == [2, 3, 1]
    assert [a.name for a in tr.arrivals] == ["s2", "s3", "s1"]
    t0 = clock.t
    assert tr.next_reply(NextReply(timeout=1.5)) is None  # node 4 is silent: the deadline
    assert 1.5 <= clock.t - t0 < 1.7
    assert tr.now() == pytest.approx(clock.t)


def test_next_reply_returns_none_when_nothing_is_outstanding() -> None:
    clock = Clock()
    tr = _transport(ScriptedGrid(clock, {1: 0.1}), clock)
    assert tr.next_reply(NextReply()) is None
    tr.post(Post({1: (SETUP, Envelope())}, stage="train"))
    assert tr.next_reply(NextReply()) is not None
    assert tr.next_reply(NextReply()) is None


def test_a_silent_posted_party_expires_instead_of_blocking_forever() -> None:
    clock = Clock()
    tr = _transport(ScriptedGrid(clock, {1: None}), clock)
    tr.post(Post({1: (SETUP, Envelope())}, stage="train"))
    assert tr.next_reply(NextReply(timeout=None)) is None  # expired after train-timeout + TTL margin
    assert clock.t >= 30.0


def test_drop_plan_silences_a_named_party_from_its_stage_on_within_the_aggregation() -> None:
    from secure_fl.transport.dropouts import DropPlan

    clock = Clock()
    grid = ScriptedGrid(clock, {1: 0.1, 2: 0.1})
    tr = _transport(grid, clock, drops=DropPlan({1: {"s2": "share_keys"}}, protocol="secagg"))

    def ex(kind: str, stage: str, version: int | None = None) -> set[int]:
        env = Envelope(fields={"version": version} if version is not None else {})
        return set(tr.exchange(Exchange({a: (kind, env) for a in (1, 2)}, stage=stage)))

    assert ex(HELLO, "hello") == {1, 2}  # names are learnt from hello replies
    assert ex(SETUP, "train", 1) == {1, 2}
    assert ex(PROTOCOL, "advertise") == {1, 2}
    assert ex(PROTOCOL, "share_keys") == {1}
    assert ex(PROTOCOL, "unmask") == {1}  # silent for the rest of aggregation 1
    assert ex(HELLO, "witness") == {1, 2}  # not a protocol stage
    assert ex(SETUP, "train", 2) == {1, 2}
    assert ex(PROTOCOL, "share_keys") == {1, 2}


def test_drive_runs_an_engine_generator_over_the_flower_transport() -> None:
    clock = Clock()
    tr = _transport(ScriptedGrid(clock, {7: 0.1, 8: 0.2}), clock)

    def engine() -> Any:
        replies = yield Exchange({a: (HELLO, Envelope(fields={"n": a})) for a in tr.reachable()}, stage="hello")
        return sorted((a, r.fields["site"]) for a, r in replies.items())

    assert drive(engine(), tr) == [(7, "s7"), (8, "s8")]
