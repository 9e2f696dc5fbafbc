"""The broker contract (:class:`flask_eventstream.brokers.Broker`), on every broker.

Each test runs on the memory broker and on the Redis broker (a real ``redis-server``),
through the parametrized ``broker`` / ``make_broker`` fixtures.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask_eventstream import Broker, Event

from .reading import Reader, id_order

PublishFn = Callable[..., Event]


def publish_many(broker: Broker, count: int, channel: str = "c") -> list[Event]:
    return [broker.publish(channel, Event(f"event {n}")) for n in range(count)]


class TestFanOut:
    def test_every_subscriber_gets_every_event_in_order(self, broker: Broker) -> None:
        first = Reader(broker.subscribe(["c"]))
        second = Reader(broker.subscribe(["c"]))
        sent = publish_many(broker, 20)
        for reader in (first, second):
            got = reader.read(20)
            assert [e.data for e in got] == [e.data for e in sent]
            assert [e.id for e in got] == [e.id for e in sent]

    def test_other_channels_are_not_delivered(self, broker: Broker) -> None:
        reader = Reader(broker.subscribe(["c"]))
        broker.publish("other", Event("not for c"))
        broker.publish("c", Event("for c"))
        assert [e.data for e in reader.read(1)] == ["for c"]
        assert reader.idle()

    def test_subscriber_gets_only_events_after_it_subscribed(
        self, broker: Broker
    ) -> None:
        broker.publish("c", Event("before"))
        reader = Reader(broker.subscribe(["c"]))
        broker.publish("c", Event("after"))
        assert [e.data for e in reader.read(1)] == ["after"]
        assert reader.idle()

    def test_fields_survive_the_broker(self, broker: Broker) -> None:
        reader = Reader(broker.subscribe(["c"]))
        sent = broker.publish(
            "c", Event("line 1\nline 2\u2028 é", event="greeting", retry=2500)
        )
        (got,) = reader.read(1)
        assert (got.data, got.event, got.id) == (sent.data, "greeting", sent.id)
        assert b"retry: 2500\n" in reader.raw


class TestIds:
    def test_assigned_ids_increase(self, broker: Broker) -> None:
        reader = Reader(broker.subscribe(["c"]))
        sent = publish_many(broker, 30)
        ids = [event.id for event in sent]
        assert all(ids)
        assert sorted(ids, key=id_order) == ids
        assert len(set(ids)) == len(ids)
        assert [e.id for e in reader.read(30)] == ids

    def test_given_ids_are_kept(self, broker: Broker) -> None:
        reader = Reader(broker.subscribe(["c"]))
        sent = broker.publish("c", Event("x", id="order-7"))
        assert sent.id == "order-7"
        assert [e.id for e in reader.read(1)] == ["order-7"]


class TestReplay:
    def test_replay_after_assigned_id(self, broker: Broker) -> None:
        sent = publish_many(broker, 10)
        reader = Reader(broker.subscribe(["c"], last_event_id=sent[3].id))
        assert not reader.subscription.missed
        assert [e.id for e in reader.read(6)] == [e.id for e in sent[4:]]
        live = broker.publish("c", Event("live"))
        assert reader.read(7)[-1].id == live.id
        assert reader.idle()

    def test_replay_after_given_id(self, broker: Broker) -> None:
        broker.publish("c", Event("a", id="a"))
        broker.publish("c", Event("b", id="b"))
        later = publish_many(broker, 3)
        reader = Reader(broker.subscribe(["c"], last_event_id="b"))
        assert not reader.subscription.missed
        assert [e.id for e in reader.read(3)] == [e.id for e in later]
        assert reader.idle()

    def test_resume_from_latest_id_replays_nothing(self, broker: Broker) -> None:
        sent = publish_many(broker, 3)
        reader = Reader(broker.subscribe(["c"], last_event_id=sent[-1].id))
        assert not reader.subscription.missed
        assert reader.idle()
        live = broker.publish("c", Event("live"))
        assert [e.id for e in reader.read(1)] == [live.id]

    def test_no_gap_no_duplicate_while_publishing(self, broker: Broker) -> None:
        """Resume while another thread publishes: every event exactly once, in order."""
        total, resume_at = 300, 40
        sent: list[Event] = []
        enough = threading.Event()

        def publisher() -> None:
            for n in range(total):
                sent.append(broker.publish("c", Event(f"event {n}")))
                if n == resume_at + 20:
                    enough.set()

        thread = threading.Thread(target=publisher)
        thread.start()
        try:
            assert enough.wait(10)
            reader = Reader(broker.subscribe(["c"], last_event_id=sent[resume_at].id))
        finally:
            thread.join(30)
        expected = [e.id for e in sent[resume_at + 1 :]]
        got = reader.read(len(expected), timeout=10)
        assert [e.id for e in got] == expected
        assert reader.idle()

    def test_unknown_id_is_flagged_missed(self, broker: Broker) -> None:
        sent = publish_many(broker, 3)
        reader = Reader(broker.subscribe(["c"], last_event_id="no-such-id"))
        assert reader.subscription.missed
        # The whole retained history follows, then live events.
        assert [e.id for e in reader.read(3)] == [e.id for e in sent]
        live = broker.publish("c", Event("live"))
        assert reader.read(4)[-1].id == live.id

    def test_evicted_id_is_flagged_missed(
        self, make_broker: Callable[..., Broker]
    ) -> None:
        broker = make_broker(history=10)
        # Redis trims with MAXLEN ~ (whole nodes of 100 entries): publish well past.
        sent = publish_many(broker, 400)
        evicted = broker.subscribe(["c"], last_event_id=sent[0].id)
        kept = broker.subscribe(["c"], last_event_id=sent[-2].id)
        assert evicted.missed
        assert not kept.missed
        assert [e.id for e in Reader(kept).read(1)] == [sent[-1].id]

    def test_multi_channel_replay_and_live_merge_by_id(self, broker: Broker) -> None:
        # Channels of one group (hash tag "g" in a Redis Cluster: one slot, ids
        # comparable across them); several groups: test_redis_cluster.py.
        channels = ("g}a", "g}b")
        first = broker.publish(channels[0], Event("a0"))
        sent = [
            broker.publish(channel, Event(f"{channel}{n}"))
            for n in range(1, 6)
            for channel in channels
        ]
        reader = Reader(broker.subscribe(list(channels), last_event_id=first.id))
        assert not reader.subscription.missed
        live = [
            broker.publish(channel, Event(f"live {channel}"))
            for channel in reversed(channels)
        ]
        got = reader.read(len(sent) + 2)
        assert sorted(e.id or "" for e in got) == sorted(
            e.id or "" for e in sent + live
        )
        # Replay and live events each come in id order, every channel in its order.
        assert sorted(got[:10], key=lambda e: id_order(e.id)) == got[:10]
        for channel in channels:
            mine = [
                e.data for e in got if e.data.startswith((channel, f"live {channel}"))
            ]
            assert mine == [f"{channel}{n}" for n in range(1, 6)] + [f"live {channel}"]


class TestSlowSubscriber:
    def test_slow_subscriber_is_cut_off_and_publish_goes_on(
        self, make_broker: Callable[..., Broker]
    ) -> None:
        broker = make_broker(buffer=5)
        slow = Reader(broker.subscribe(["c"]))
        fast = Reader(broker.subscribe(["c"]))
        sent = []
        for n in range(50):
            sent.append(broker.publish("c", Event(f"event {n}")))
            fast.read(n + 1)  # keeps up
        assert [e.id for e in fast.events] == [e.id for e in sent]
        slow.read_to_end()
        assert b"fell too far behind" in slow.raw
        assert len(slow.events) <= 5
        assert broker.subscriber_count("c") == 1


class TestCount:
    def test_subscriber_count_and_cleanup(self, broker: Broker) -> None:
        one = broker.subscribe(["a"])
        two = broker.subscribe(["a", "b"])
        assert broker.subscriber_count("a") == 2
        assert broker.subscriber_count("b") == 1
        assert broker.subscriber_count() == 2
        two.close()
        two.close()  # idempotent
        assert broker.subscriber_count("b") == 0
        assert broker.subscriber_count() == 1
        one.close()
        assert broker.subscriber_count() == 0
        assert Reader(one).idle(0) is False  # ended: next_chunk gives None

    def test_close_ends_every_subscription(self, broker: Broker) -> None:
        reader = Reader(broker.subscribe(["c"]))
        broker.close()
        reader.read_to_end()
