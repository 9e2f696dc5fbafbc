"""Replay holds its promise for any history (docs/redis.md, "Guarantees").

Hypothesis draws an interleaving of publishes on two channels, trims (a history of
3, and small Redis stream nodes so that ``MAXLEN ~`` really trims), restarts (a new
``MemoryBroker``; ``FLUSHALL`` for a Redis restarted empty) and a resume position
(an id seen, one never handed out, a future one, a hostile one). The resuming
subscriber then gets two live events per channel. Whatever was drawn:

- the ids it gets strictly increase (so no duplicate), and the live events arrive;
- without the gap event first, every id is above its position and it got every
  event published after that position on its channels, trimmed or restarted away
  or not (no silent loss); with the gap, what it replays is still above a
  comparable position.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from flask_eventstream import Event, EventParser, MemoryBroker
from flask_eventstream.brokers import Broker, Subscription

from ..brokers.redis_server import RedisServer
from .conftest import is_gap, redis_broker

CHANNELS = ("p0", "p1")
HISTORY = 3
LIMIT = 2**64 - 1

# No shrinking: a failing example usually waits out a read timeout, so shrinking
# one would take minutes; the failing example is printed as drawn.
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)

publishes = st.tuples(st.just("publish"), st.sampled_from(CHANNELS), st.integers(1, 6))
operations = st.lists(publishes | st.just(("restart",)), max_size=8)
subscribed = st.sampled_from([("p0",), ("p1",), ("p0", "p1")])
positions = (
    st.tuples(st.just("seen"), st.integers(0, 1000))
    | st.tuples(st.just("unseen"), st.integers(1, 50))
    | st.just(("future", 0))
    | st.tuples(
        st.just("hostile"),
        st.sampled_from(
            [
                "99999999999999999999-0",
                "99999999999999999999",
                str(2**70),
                f"{LIMIT}-{LIMIT}",
                "0",
                "0-0",
                "garbage",
                "12-ab",
            ]
        ),
    )
)


@dataclass
class Published:
    channel: str
    id: str
    data: str


@dataclass
class Kind:
    """How one broker kind names, orders and recognises its ids."""

    key: Callable[[str], Any]
    comparable: Callable[[str], bool]
    unseen: Callable[[str, int], str]
    future: Callable[[], str]


def _redis_comparable(text: str) -> bool:
    match = re.fullmatch(r"([0-9]{1,20})-([0-9]{1,20})", text)
    return bool(match) and all(int(part) <= LIMIT for part in match.groups())


def _redis_key(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


REDIS = Kind(
    key=_redis_key,
    comparable=_redis_comparable,
    unseen=lambda seen, k: f"{_redis_key(seen)[0]}-{_redis_key(seen)[1] + 100 + k}",
    future=lambda: "9999999999999-0",
)
MEMORY = Kind(
    key=int,
    comparable=lambda text: text.isascii() and text.isdigit() and int(text) <= LIMIT,
    unseen=lambda seen, k: str(int(seen) + k),
    future=lambda: str(time.time_ns() // 1000 + 10**12),
)


@dataclass
class Run:
    """The brokers of one example and everything published through them."""

    publisher: Broker
    subscriber: Broker
    published: list[Published] = field(default_factory=list)
    count: int = 0

    def publish(self, channel: str, times: int) -> None:
        for _ in range(times):
            data = f"{channel} #{self.count}"
            self.count += 1
            sent = self.publisher.publish(channel, Event(data))
            assert sent.id is not None
            self.published.append(Published(channel, sent.id, data))


def read_until(
    sub: Subscription, wanted: list[str], timeout: float = 5.0
) -> list[Event]:
    """Parse what *sub* delivers until every data in *wanted* came, or *timeout*."""
    parser = EventParser()
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not set(wanted) <= {event.data for event in events}:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        chunk = sub.next_chunk(min(left, 0.2))
        if chunk is None:
            break
        events += parser.feed(chunk)
    return events


def position_of(
    kind: Kind, run: Run, drawn: tuple[str, Any], on: tuple[str, ...]
) -> str:
    """The Last-Event-ID the drawn position stands for."""
    how, value = drawn
    seen = [p.id for p in run.published if p.channel in on]
    if how in ("seen", "unseen"):
        assume(seen)
    if how == "seen":
        return seen[value % len(seen)]
    if how == "unseen":
        return kind.unseen(seen[-1], value)
    if how == "future":
        return kind.future()
    return str(value)


def check_resume(
    kind: Kind,
    run: Run,
    on: tuple[str, ...],
    position: str,
    sub: Subscription,
) -> None:
    """Resume at *position* (already subscribed as *sub*), publish live, check."""
    live = []
    for channel in on:
        for n in range(2):
            data = f"{channel} live {n}"
            sent = run.publisher.publish(channel, Event(data))
            assert sent.id is not None
            live.append(Published(channel, sent.id, data))
    events = read_until(sub, [p.data for p in live])
    gap = sub.missed or bool(events and is_gap(events[0]))
    body = [event for event in events if not is_gap(event)]
    got = [event.data for event in body]
    ids = [kind.key(event.id or "") for event in body]
    assert ids == sorted(set(ids)), got  # strictly increasing: no duplicate
    assert got[len(got) - len(live) :] == [p.data for p in live], got  # never silent
    backlog = body[: len(got) - len(live)]
    before = {p.data: p for p in run.published if p.channel in on}
    assert all(event.data in before for event in backlog), got
    comparable = kind.comparable(position)
    if comparable:
        above = [e.data for e in backlog if kind.key(e.id or "") <= kind.key(position)]
        assert not above, f"replayed at or below {position}: {above}"
    if not gap:
        assert comparable, f"{position!r} is no id, yet no gap event"
        assert all(key > kind.key(position) for key in ids), got
        missed = [
            p.data
            for p in run.published
            if p.channel in on and kind.key(p.id) > kind.key(position)
        ]
        assert [e.data for e in backlog] == missed, "events lost without a gap"


@pytest.fixture(scope="module")
def property_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own (FLUSHALL stands in for restarting it empty),
    with small stream nodes so that ``MAXLEN ~ 3`` trims after a few entries."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        with server.client() as client:
            client.config_set("stream-node-max-entries", 2)
        yield server


@pytest.mark.redis
@PROPERTY
@given(operations=operations, on=subscribed, drawn=positions)
def test_redis_resume_is_ordered_and_never_loses_silently(
    property_redis: RedisServer,
    operations: list[tuple[Any, ...]],
    on: tuple[str, ...],
    drawn: tuple[str, Any],
) -> None:
    """Redis broker: increasing ids above the position, or the gap; no silent loss."""
    prefix = f"prop-{uuid.uuid4().hex[:12]}:"
    options = {"key_prefix": prefix, "history": HISTORY}
    with (
        redis_broker(property_redis.url, **options) as publisher,
        redis_broker(property_redis.url, **options) as subscriber,
    ):
        run = Run(publisher, subscriber)
        for operation in operations:
            if operation[0] == "publish":
                run.publish(operation[1], operation[2])
            else:
                with property_redis.client() as client:
                    client.flushall()
                time.sleep(0.002)  # a restart takes time: the Redis clock moves on
        position = position_of(REDIS, run, drawn, on)
        with subscriber.subscribe(on, last_event_id=position) as sub:
            check_resume(REDIS, run, on, position, sub)


@PROPERTY
@given(operations=operations, on=subscribed, drawn=positions)
def test_memory_resume_is_ordered_and_never_loses_silently(
    operations: list[tuple[Any, ...]],
    on: tuple[str, ...],
    drawn: tuple[str, Any],
) -> None:
    """Memory broker: increasing ids above the position, or the gap; no silent loss."""
    broker = MemoryBroker(history=HISTORY)
    run = Run(broker, broker)
    try:
        for operation in operations:
            if operation[0] == "publish":
                run.publish(operation[1], operation[2])
            else:
                broker.close()
                time.sleep(0.001)  # a restart takes time: the clock moves on
                broker = run.publisher = run.subscriber = MemoryBroker(history=HISTORY)
        position = position_of(MEMORY, run, drawn, on)
        with broker.subscribe(on, last_event_id=position) as sub:
            check_resume(MEMORY, run, on, position, sub)
    finally:
        broker.close()
