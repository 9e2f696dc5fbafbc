"""The local fan-out every broker shares: heartbeats, bounded writes and buffers,
drop callbacks outside the lock. Runs on the memory and the Redis broker."""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Flask

from flask_eventstream import Event, EventParser, EventStream
from flask_eventstream.brokers import Broker, Fanout, Subscription
from flask_eventstream.brokers._fanout import fanout_dropped
from flask_eventstream.brokers._subscription import TOO_SLOW, WRITE_SIZE
from flask_eventstream.signals import subscriber_dropped

from ..helpers import wait_for
from .reading import Reader

MakeBroker = Callable[..., Broker]


def _tickers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "eventstream-heartbeats"]


def _fanout(broker: Broker) -> Fanout:
    fanout = getattr(broker, "fanout", None)
    assert isinstance(fanout, Fanout)
    return fanout


class TestHeartbeats:
    def test_every_idle_reader_is_told_to_write_a_heartbeat(
        self, broker: Broker
    ) -> None:
        # O4, O9: an idle stream writes a comment so a gone client is noticed.
        subs = [broker.subscribe([f"idle{n}"]) for n in range(20)]
        got: list[bytes | None] = []

        def read(sub: Subscription) -> None:
            got.append(sub.next_chunk(0.1))

        readers = [threading.Thread(target=read, args=(sub,)) for sub in subs]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=5)
        assert got == [b""] * 20
        for sub in subs:
            sub.close()

    def test_one_ticker_per_fanout_which_ends_with_the_last_subscriber(
        self, broker: Broker
    ) -> None:
        before = set(_tickers())  # other tests' tickers may still be ending
        subs = [broker.subscribe(["ticks"]) for _ in range(5)]
        for sub in subs:
            assert sub.next_chunk(0.05) == b""
        (ticker,) = set(_tickers()) - before
        for sub in subs:
            sub.close()
        ticker.join(timeout=5)
        assert not ticker.is_alive()

    def test_an_event_wakes_a_reader_before_its_heartbeat(self, broker: Broker) -> None:
        sub = broker.subscribe(["soon"])
        got: list[bytes | None] = []
        reader = threading.Thread(target=lambda: got.append(sub.next_chunk(30)))
        reader.start()
        broker.publish("soon", Event("now"))
        reader.join(timeout=5)
        assert not reader.is_alive()
        assert got and got[0] is not None and b"data: now" in got[0]
        sub.close()

    def test_a_reader_polling_without_waiting_gets_nothing_at_once(
        self, broker: Broker
    ) -> None:
        with broker.subscribe(["poll"]) as sub:
            assert sub.next_chunk(0) == b""
            broker.publish("poll", Event("x"))
            wait_for(lambda: b"data: x" in (sub.next_chunk(0) or b""))


class TestBoundedWrites:
    def test_a_long_queue_is_returned_in_pieces_in_order(
        self, make_broker: MakeBroker
    ) -> None:
        broker = make_broker(buffer=1000)
        _fanout(broker).buffer_bytes = 10 * 2**20
        with broker.subscribe(["big"]) as sub:
            for n in range(40):
                broker.publish("big", Event(f"{n}:" + "x" * 8000))
            wait_for(lambda: broker.subscriber_count("big") == 1)
            parser, events, sizes = EventParser(), [], []
            while len(events) < 40:
                chunk = sub.next_chunk(2)
                assert chunk, "the events did not arrive"
                sizes.append(len(chunk))
                events += parser.feed(chunk)
        assert [e.data.split(":")[0] for e in events] == [str(n) for n in range(40)]
        assert len(sizes) > 1
        assert max(sizes) <= WRITE_SIZE

    def test_one_event_larger_than_a_write_is_returned_whole(
        self, broker: Broker
    ) -> None:
        with broker.subscribe(["huge"]) as sub:
            broker.publish("huge", Event("y" * (WRITE_SIZE * 2)))
            events = Reader(sub).read(1)
        assert events[0].data == "y" * (WRITE_SIZE * 2)


class TestBufferBytes:
    def test_a_reader_too_many_bytes_behind_is_cut_off(
        self, make_broker: MakeBroker
    ) -> None:
        broker = make_broker(buffer=1000)
        _fanout(broker).buffer_bytes = 20_000
        slow = broker.subscribe(["bytes"])
        fast = Reader(broker.subscribe(["bytes"]))
        for n in range(5):
            broker.publish("bytes", Event(f"{n}:" + "z" * 8000))
            fast.read(n + 1)
        reader = Reader(slow)
        reader.read_to_end()
        assert reader.raw.endswith(TOO_SLOW)
        assert broker.subscriber_count("bytes") == 1
        fast.subscription.close()

    def test_one_event_larger_than_the_buffer_still_reaches_an_empty_queue(
        self, make_broker: MakeBroker
    ) -> None:
        broker = make_broker()
        _fanout(broker).buffer_bytes = 100
        with broker.subscribe(["one"]) as sub:
            broker.publish("one", Event("w" * 1000))
            assert Reader(sub).read(1)[0].data == "w" * 1000

    def test_the_config_key_bounds_each_subscriber(self) -> None:
        app = Flask(__name__)
        app.config["EVENTSTREAM_BUFFER_BYTES"] = 10_000
        events = EventStream(app)
        with app.app_context():
            sub = events.broker().subscribe(["cfg"])  # never read
            events.publish("a" * 6000, channel="cfg")
            events.publish("b" * 6000, channel="cfg")
            assert events.subscriber_count("cfg") == 0
            Reader(sub).read_to_end()


class TestDropCallbacks:
    def test_a_dropped_receiver_may_publish(self) -> None:
        app = Flask(__name__)
        app.config["EVENTSTREAM_BUFFER"] = 2
        events = EventStream(app)

        def on_dropped(sender: Flask, channels: tuple[str, ...]) -> None:
            events.publish(",".join(channels), channel="audit")

        def publish_until_dropped() -> None:
            with app.app_context():
                for n in range(3):
                    events.publish(str(n), channel="busy")

        with app.app_context(), subscriber_dropped.connected_to(on_dropped, app):
            audit = Reader(events.broker().subscribe(["audit"]))
            busy = events.broker().subscribe(["busy"])  # never read
            publisher = threading.Thread(target=publish_until_dropped, daemon=True)
            publisher.start()
            publisher.join(timeout=5)
            assert not publisher.is_alive(), "publishing from the receiver deadlocked"
            assert [e.data for e in audit.read(1)] == ["busy"]
            busy.close()
            audit.subscription.close()

    def test_a_failing_callback_does_not_stop_delivery(self, broker: Broker) -> None:
        fanout = _fanout(broker)
        calls: list[tuple[str, ...]] = []

        def fail(sender: Fanout, subscription: Subscription) -> None:
            calls.append(subscription.channels)
            raise RuntimeError("receiver bug")

        fanout_dropped.connect(fail, sender=fanout)
        fanout.buffer = 1
        slow = broker.subscribe(["fail"])
        fast = Reader(broker.subscribe(["fail"]))
        for n in range(3):
            broker.publish("fail", Event(str(n)))
            fast.read(n + 1)
        fanout_dropped.disconnect(fail, sender=fanout)
        assert calls == [("fail",)]
        slow.close()
        fast.subscription.close()


class TestCutOffMeasuresLag:
    """The event-count cut-off spares a reader that had no chance to run, and
    catches one stalled on its client even when nothing more is published."""

    def test_a_reader_woken_but_not_yet_run_is_not_cut_off(self) -> None:
        fanout = Fanout(buffer=10)
        with fanout.lock:
            sub = fanout.subscribe(["c"])
        reader = Reader(sub)
        waiting = threading.Thread(target=reader.read, args=(30,))
        waiting.start()
        wait_for(lambda: sub.reading)
        with fanout.lock:  # the reader, woken by the first, cannot take any yet
            for n in range(30):
                fanout.deliver("c", Event(str(n)).encode())
        waiting.join(timeout=5)
        assert [e.data for e in reader.events] == [str(n) for n in range(30)]
        assert not sub.cut_off
        sub.close()

    def test_a_reader_stalled_in_a_write_is_cut_off_without_more_publishing(
        self,
    ) -> None:
        fanout = Fanout(buffer=10)
        aborted = threading.Event()
        with fanout.lock:
            sub = fanout.subscribe(["c"])
        sub.on_cut_off = aborted.set
        with fanout.lock:
            fanout.deliver("c", b"data: first\n\n")
        assert sub.next_chunk(5) == b"data: first\n\n"  # then it "writes" forever
        with fanout.lock:
            for n in range(10):
                fanout.deliver("c", Event(str(n)).encode())
        assert not sub.cut_off  # it took its last chunk a moment ago
        with fanout.lock:  # a reader whose waits keep the heartbeat ticker going
            idle = fanout.subscribe(["c"])
        ticking = threading.Thread(target=idle.next_chunk, args=(0.2,))
        ticking.start()
        assert aborted.wait(timeout=5), "the stalled reader was not cut off"
        assert sub.cut_off
        assert sub.next_chunk(0) == TOO_SLOW
        ticking.join(timeout=5)
        idle.close()
