"""A channel's shared tail against a model: what each subscription reads is what
was queued for it, once and in order, whether it reads the tail or its own queue,
through notices, backlogs, pieces of ``WRITE_SIZE`` and closes; and a tail reader
is cut off at the same event as a subscription queued one event at a time."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from flask_eventstream.brokers import Fanout, Subscription
from flask_eventstream.brokers._subscription import TOO_SLOW, WRITE_SIZE

CHANNELS = ("a", "b")

# Sizes around WRITE_SIZE too, so that reads come in pieces.
chunk_sizes = st.sampled_from([1, 7, 100, WRITE_SIZE // 3, WRITE_SIZE + 1])


class TailMachine(RuleBasedStateMachine):
    """Random publishes, reads, notices and closes on one fan-out, with one and
    two-channel subscriptions; each subscription's expected bytes are modelled."""

    subs = Bundle("subs")

    def __init__(self) -> None:
        super().__init__()
        self.fanout = Fanout()  # buffers far above what a run queues: no cut-off
        self.expected: dict[Subscription, bytearray] = {}
        self.read: dict[Subscription, bytearray] = {}
        self.serial = 0

    def _chunk(self, size: int) -> bytes:
        self.serial += 1
        head = b"%d:" % self.serial
        return head + b"x" * max(0, size - len(head))

    @rule(
        target=subs,
        channels=st.sampled_from([("a",), ("b",), ("a", "b")]),
        backlog=st.lists(chunk_sizes, max_size=3),
    )
    def subscribe(self, channels: tuple[str, ...], backlog: list[int]) -> Subscription:
        chunks = [self._chunk(size) for size in backlog]
        with self.fanout.lock:
            sub = self.fanout.subscribe(channels, chunks)
        self.expected[sub] = bytearray(b"".join(chunks))
        self.read[sub] = bytearray()
        return sub

    @rule(channel=st.sampled_from(CHANNELS), size=chunk_sizes)
    def publish(self, channel: str, size: int) -> None:
        chunk = self._chunk(size)
        with self.fanout.lock:
            self.fanout.deliver(channel, chunk)
        for sub, expected in self.expected.items():
            if channel in sub.channels and not sub.ended:
                expected += chunk

    @rule(channel=st.sampled_from(CHANNELS))
    def notice(self, channel: str) -> None:
        chunk = self._chunk(10)
        with self.fanout.lock:
            self.fanout.notify([channel], chunk)
        for sub, expected in self.expected.items():
            if channel in sub.channels and not sub.ended:
                expected += chunk

    @rule(sub=subs)
    def take(self, sub: Subscription) -> None:
        got = sub.next_chunk(0)
        if got:
            self.read[sub] += got
            assert len(got) <= WRITE_SIZE or got.count(b":") == 1

    @rule(sub=consumes(subs))
    def close_and_drain(self, sub: Subscription) -> None:
        sub.close()
        while (got := sub.next_chunk(0)) is not None:
            self.read[sub] += got
        assert self.read.pop(sub) == self.expected.pop(sub)

    @invariant()
    def reads_are_a_prefix_of_what_was_queued(self) -> None:
        for sub, read in self.read.items():
            assert self.expected[sub].startswith(read)

    @invariant()
    def a_tail_keeps_nothing_every_reader_has_read_at_a_check(self) -> None:
        for tail in self.fanout._tails.values():
            assert tail.subs, "a tail nobody reads is forgotten"

    def teardown(self) -> None:
        for sub in list(self.expected):
            self.close_and_drain(sub)


TestTail = TailMachine.TestCase
TestTail.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize("limit_bytes", [35, 10**9])
def test_a_tail_reader_is_cut_off_at_the_same_event_as_a_queued_one(
    limit_bytes: int,
) -> None:
    # The same events on "a" for a reader of the tail ("a" only) and for one
    # queued event by event ("a" and "b"); neither reads (stalled at once).
    fanout = Fanout(buffer=5, buffer_bytes=limit_bytes)
    with fanout.lock:
        shared = fanout.subscribe(["a"])
        queued = fanout.subscribe(["a", "b"])
    cut_at: dict[str, int] = {}
    for n in range(1, 20):
        with fanout.lock:
            fanout.deliver("a", b"data: %02d\n\n" % n)
        for name, sub in (("shared", shared), ("queued", queued)):
            if sub.cut_off:
                cut_at.setdefault(name, n)
    assert cut_at["shared"] == cut_at["queued"]
    # 10 bytes each: past 35 bytes at the 4th; past 5 events at the 6th.
    assert cut_at["shared"] == (6 if limit_bytes > 1000 else 4)
    for sub in (shared, queued):
        chunks = []
        while (got := sub.next_chunk(0)) is not None:
            chunks.append(got)
        assert chunks == [TOO_SLOW]


def test_a_publish_queues_an_event_once_for_every_tail_reader() -> None:
    fanout = Fanout()
    with fanout.lock:
        subs = [fanout.subscribe(["a"]) for _ in range(100)]
        fanout.deliver("a", b"data: 1\n\n")
        (tail,) = fanout._tails.values()
    assert tail.chunks == [b"data: 1\n\n"]
    assert all(sub.next_chunk(0) == b"data: 1\n\n" for sub in subs)
    for sub in subs:
        sub.close()
    assert not fanout._tails


def test_a_tail_keeps_little_that_every_reader_has_read() -> None:
    fanout = Fanout()
    with fanout.lock:
        one = fanout.subscribe(["solo"])
        pair = [fanout.subscribe(["a"]) for _ in range(2)]
    longest = 0
    for n in range(1000):
        with fanout.lock:
            fanout.deliver("solo", b"data: %d\n\n" % n)
            fanout.deliver("a", b"data: %d\n\n" % n)
        assert one.next_chunk(0) == b"data: %d\n\n" % n
        for sub in pair:
            assert sub.next_chunk(0) == b"data: %d\n\n" % n
        with fanout.lock:
            assert not fanout._tails["solo"].chunks  # a channel of one: nothing
            longest = max(longest, len(fanout._tails["a"].chunks))
    assert longest <= 65  # trimmed at each check, every 64 events or so
    for sub in (one, *pair):
        sub.close()
