"""Isolation: a subscriber of one channel never receives another channel's events.

Live, through replay and through multi-channel subscriptions, on every broker
(memory and a real Redis). Channel names that look like glob patterns, prefixes or
key separators must not leak into each other (a broker built on pattern
subscriptions or string-joined keys would mix them).
"""

from __future__ import annotations

import pytest

from flask_eventstream import Broker, Event

from .reading import Reader

#: Names that a careless broker could confuse with one another.
LOOKALIKES = [
    "room",
    "room*",
    "room?",
    "room[12]",
    "room1",
    "room:1",
    "room.1",
    "ROOM",
    "room\\*",
    "r\u00f6\u00f6m",
]


def read_own(reader: Reader, channel: str, count: int) -> list[Event]:
    """Read until the ``end of <channel>`` marker; then make sure nothing follows."""
    got = reader.read(count)
    assert got[-1].data == f"end of {channel}"
    assert reader.idle(0.2)
    return got


class TestLiveIsolation:
    def test_interleaved_channels_stay_apart(self, broker: Broker) -> None:
        a = Reader(broker.subscribe(["a"]))
        b = Reader(broker.subscribe(["b"]))
        for n in range(10):
            broker.publish("a", Event(f"a{n}"))
            broker.publish("b", Event(f"b{n}"))
        broker.publish("a", Event("end of a"))
        broker.publish("b", Event("end of b"))
        assert [e.data for e in read_own(a, "a", 11)][:-1] == [
            f"a{n}" for n in range(10)
        ]
        assert [e.data for e in read_own(b, "b", 11)][:-1] == [
            f"b{n}" for n in range(10)
        ]

    def test_lookalike_names_do_not_leak(self, broker: Broker) -> None:
        readers = {name: Reader(broker.subscribe([name])) for name in LOOKALIKES}
        for name in LOOKALIKES:
            broker.publish(name, Event(f"for {name}"))
        for name in LOOKALIKES:
            broker.publish(name, Event(f"end of {name}"))
        for name, reader in readers.items():
            got = read_own(reader, name, 2)
            assert [e.data for e in got] == [f"for {name}", f"end of {name}"]

    def test_multi_channel_gets_only_its_channels(self, broker: Broker) -> None:
        # One group (hash tag "g"): in a Redis Cluster, channels of several
        # groups have no order between them, and this reads up to a marker.
        a, b, c, ab = "g}a", "g}b", "g}c", "g}ab"
        reader = Reader(broker.subscribe([a, b]))
        broker.publish(c, Event(c))
        broker.publish(a, Event(a))
        broker.publish(ab, Event(ab))
        broker.publish(b, Event(b))
        broker.publish(a, Event(f"end of {a}"))
        got = read_own(reader, a, 3)
        assert sorted(e.data for e in got) == sorted([a, b, f"end of {a}"])


class TestReplayIsolation:
    def test_replay_holds_only_the_subscribed_channel(self, broker: Broker) -> None:
        first = broker.publish("a", Event("a0"))
        sent_b = [broker.publish("b", Event(f"b{n}")) for n in range(3)]
        sent_a = [broker.publish("a", Event(f"a{n}")) for n in range(1, 4)]
        assert first.id is not None
        reader = Reader(broker.subscribe(["a"], last_event_id=first.id))
        broker.publish("a", Event("end of a"))
        got = read_own(reader, "a", 4)
        assert [e.data for e in got][:-1] == [e.data for e in sent_a]
        assert not {e.data for e in got} & {e.data for e in sent_b}

    def test_resuming_from_another_channels_id_leaks_nothing(
        self, broker: Broker
    ) -> None:
        broker.publish("a", Event("a0"))
        foreign = broker.publish("b", Event("b0"))
        broker.publish("b", Event("b1"))
        broker.publish("a", Event("a1"))
        assert foreign.id is not None
        subscription = broker.subscribe(["a"], last_event_id=foreign.id)
        reader = Reader(subscription)
        broker.publish("a", Event("end of a"))
        got = reader.read(1)
        while got[-1].data != "end of a":
            got = reader.read(len(got) + 1)
        assert reader.idle(0.2)
        assert all(e.data.startswith(("a", "end of a")) for e in got)

    @pytest.mark.parametrize("name", LOOKALIKES[1:5])
    def test_replay_of_lookalike_names(self, broker: Broker, name: str) -> None:
        start = broker.publish("room", Event("start"))
        broker.publish(name, Event("lookalike"))
        broker.publish("room", Event("own"))
        assert start.id is not None
        reader = Reader(broker.subscribe(["room"], last_event_id=start.id))
        broker.publish("room", Event("end of room"))
        got = read_own(reader, "room", 2)
        assert [e.data for e in got] == ["own", "end of room"]

    def test_multi_channel_replay_skips_other_channels(self, broker: Broker) -> None:
        # One group (hash tag "g": one Redis Cluster slot), so that a resume of
        # both channels is exact there too; the other channel shares the slot.
        a, b, c = "g}a", "g}b", "g}c"
        start = broker.publish(a, Event("start"))
        for channel in (c, a, b, c, b):
            broker.publish(channel, Event(channel))
        assert start.id is not None
        reader = Reader(broker.subscribe([a, b], last_event_id=start.id))
        broker.publish(a, Event(f"end of {a}"))
        got = read_own(reader, a, 4)
        assert sorted(e.data for e in got) == sorted([a, b, b, f"end of {a}"])
