"""What only the Redis broker does: URLs, connection count, clean-up, Redis restarts.

Everything runs against a real ``redis-server`` process; the restart tests kill it
with SIGKILL and start it again on the same port, with no persistence, as a crash of
an unpersisted Redis would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from flask_eventstream import GAP_EVENT, BrokerUnavailable, Event, EventStream
from flask_eventstream._bodies import HEARTBEAT
from flask_eventstream.brokers.redis import RedisBroker

from ..conftest import LiveServer
from ..helpers import StreamClient, wait_for
from .reading import Reader
from .redis_server import RedisServer, publish_from_subprocess

pytestmark = pytest.mark.redis


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


def _listener_threads() -> int:
    return sum(t.name == "eventstream-redis-listener" for t in threading.enumerate())


@pytest.fixture
def make_redis_broker() -> Iterator[Callable[[str], RedisBroker]]:
    made: list[RedisBroker] = []

    def make(url: str) -> RedisBroker:
        broker = RedisBroker.from_url(url, key_prefix=_prefix())
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def make_app() -> Iterator[Callable[[str], tuple[Flask, EventStream]]]:
    """Apps on the Redis broker at a URL, each with its own key prefix."""
    made: list[tuple[Flask, EventStream]] = []

    def make(url: str) -> tuple[Flask, EventStream]:
        app = Flask(__name__)
        app.config.update(
            TESTING=True,
            EVENTSTREAM_HEARTBEAT=0.5,
            EVENTSTREAM_BROKER_URL=url,
            EVENTSTREAM_REDIS_PREFIX=_prefix(),
        )
        made.append((app, EventStream(app)))
        return made[-1]

    yield make
    for app, events in made:
        with app.app_context():
            events.broker().close()


@contextlib.contextmanager
def _pool_taken(broker: RedisBroker) -> Iterator[None]:
    """Both pooled connections (publish and replay) taken, as under heavy load."""
    pool: Any = broker._pool
    held = [pool.get_connection() for _ in range(2)]
    try:
        yield
    finally:
        for connection in held:
            pool.release(connection)


def _redis_broker(app: Flask, events: EventStream) -> RedisBroker:
    with app.app_context():
        broker = events.broker()
    assert isinstance(broker, RedisBroker)
    return broker


class TestUrls:
    @pytest.mark.parametrize("scheme", ["redis", "valkey"])
    def test_tcp_urls(
        self,
        redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
        scheme: str,
    ) -> None:
        url = redis_server.url.replace("redis://", f"{scheme}://")
        broker = make_redis_broker(url)
        reader = Reader(broker.subscribe(["c"]))
        sent = broker.publish("c", Event("over tcp"))
        assert [e.id for e in reader.read(1)] == [sent.id]

    def test_unix_socket_url(
        self,
        redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
    ) -> None:
        broker = make_redis_broker(redis_server.unix_url)
        reader = Reader(broker.subscribe(["c"]))
        sent = broker.publish("c", Event("over a unix socket"))
        assert [e.id for e in reader.read(1)] == [sent.id]

    def test_bad_options_are_refused(self, redis_server: RedisServer) -> None:
        with pytest.raises(ValueError, match="history"):
            RedisBroker.from_url(redis_server.url, history=0)
        with pytest.raises(ValueError, match="not a Redis URL"):
            RedisBroker.from_url("http://localhost:6379")

    def test_key_prefix_from_config(
        self,
        redis_server: RedisServer,
        make_app: Callable[[str], tuple[Flask, EventStream]],
    ) -> None:
        app, events = make_app(redis_server.url)
        prefix = app.config["EVENTSTREAM_REDIS_PREFIX"]
        with app.app_context():
            events.publish("hello", channel="room")
        with redis_server.client() as client:
            assert set(client.keys(f"{prefix}*")) == {
                f"{prefix}{{room}}".encode(),  # the channel's history
                f"{prefix}last-id".encode(),  # the newest id given out
            }


class TestConnections:
    def test_500_subscriptions_use_at_most_3_connections(
        self,
        redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
    ) -> None:
        broker = make_redis_broker(redis_server.url)
        readers = [Reader(broker.subscribe([f"room-{n % 50}"])) for n in range(500)]
        sent = [broker.publish(f"room-{n}", Event(f"to room {n}")) for n in range(50)]
        for n, reader in enumerate(readers):
            assert [e.id for e in reader.read(1)] == [sent[n % 50].id]
        assert 1 <= len(redis_server.clients(broker.client_name)) <= 3

    def test_50_http_streams_use_at_most_3_connections(
        self,
        redis_server: RedisServer,
        make_app: Callable[[str], tuple[Flask, EventStream]],
        serve: Callable[[Flask], LiveServer],
        open_stream: Callable[..., StreamClient],
    ) -> None:
        app, events = make_app(redis_server.url)
        url = serve(app).url
        clients = [open_stream(f"{url}/stream?channel=c{n % 5}") for n in range(50)]
        with app.app_context():
            wait_for(lambda: events.subscriber_count() == 50)
            sent = [events.publish(f"to c{n}", channel=f"c{n}") for n in range(5)]
        for n, client in enumerate(clients):
            assert [e.id for e in client.read_events(1)] == [sent[n % 5].id]
        name = _redis_broker(app, events).client_name
        assert 1 <= len(redis_server.clients(name)) <= 3

    def test_nothing_left_behind(
        self,
        redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
    ) -> None:
        """Closed subscriptions leave no key but the channels' history, the last id
        given out and the store's epoch; a closed broker leaves no connection;
        the listener thread ends."""
        threads = _listener_threads()
        broker = make_redis_broker(redis_server.url)
        subs = [broker.subscribe([f"c{n % 3}"]) for n in range(30)]
        broker.publish("c0", Event("x"))
        Reader(subs[0]).read(1)
        for sub in subs:
            sub.close()
        assert broker.subscriber_count() == 0
        prefix = broker.key("")[: -len("{}")]
        kept = {
            f"{prefix}{{c0}}".encode(),
            f"{prefix}last-id".encode(),
            f"{prefix}epoch".encode(),
        }
        with redis_server.client() as client:
            # The listener removes this process's counts (<prefix>stats:...) when it
            # next wakes: within one XREAD block (5 s).
            wait_for(lambda: set(client.keys(f"{prefix}*")) == kept, timeout=15)
        broker.close()
        assert redis_server.clients(broker.client_name) == []
        wait_for(lambda: _listener_threads() == threads)


class TestBusyPool:
    """The pool of 2 (publish and replay) being busy never fails a subscription."""

    def test_joining_a_channel_read_here_needs_no_redis(
        self,
        redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        broker = make_redis_broker(redis_server.url)
        first = Reader(broker.subscribe(["c"]))
        joined: list[Reader] = []
        done = threading.Event()

        def join() -> None:
            joined.extend(Reader(broker.subscribe(["c"])) for _ in range(200))
            done.set()

        # A subscription that needed a pooled connection would wait here.
        with _pool_taken(broker):
            threading.Thread(target=join, daemon=True).start()
            assert done.wait(10)
        sent = broker.publish("c", Event("to all"))
        for reader in [first, *joined]:
            assert [e.id for e in reader.read(1)] == [sent.id]
            assert reader.idle(0)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    def test_a_channel_read_a_moment_ago_needs_no_redis_either(
        self,
        redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
    ) -> None:
        """The last subscriber leaves and one comes back (a reload, churn): the
        listener still reads the channel, so the new one joins it at once."""
        broker = make_redis_broker(redis_server.url)
        broker.subscribe(["c"]).close()
        assert broker.subscriber_count("c") == 0
        back: list[Reader] = []
        done = threading.Event()

        def rejoin() -> None:
            back.append(Reader(broker.subscribe(["c"])))
            done.set()

        with _pool_taken(broker):
            threading.Thread(target=rejoin, daemon=True).start()
            assert done.wait(10)  # it would wait for the pool (30 s) if it needed it
        sent = broker.publish("c", Event("welcome back"))
        assert [e.id for e in back[0].read(1)] == [sent.id]

    def test_many_subscribe_to_a_new_channel_at_once(
        self,
        redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """300 threads subscribe to a channel new here at the same moment: one
        reads where it starts, the others wait for it; every one gets each event
        published afterwards, once, and nothing is reported unavailable."""
        broker = make_redis_broker(redis_server.url)
        broker.publish("news", Event("before anyone listened"))
        count = 300
        barrier = threading.Barrier(count)
        readers: list[Reader] = []
        lock = threading.Lock()

        def subscribe() -> None:
            barrier.wait(10)
            reader = Reader(broker.subscribe(["news"]))
            with lock:
                readers.append(reader)

        threads = [threading.Thread(target=subscribe) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(readers) == count
        sent = [broker.publish("news", Event(f"event {n}")) for n in range(3)]
        for reader in readers:
            assert [e.id for e in reader.read(3)] == [e.id for e in sent]
            assert reader.idle(0)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert 1 <= len(redis_server.clients(broker.client_name)) <= 3

    def test_replay_waits_for_a_pooled_connection(
        self,
        redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        broker = make_redis_broker(redis_server.url)
        sent = [broker.publish("c", Event(f"event {n}")) for n in range(5)]
        subs: list[Reader] = []
        thread = threading.Thread(
            target=lambda: subs.append(
                Reader(broker.subscribe(["c"], last_event_id=sent[1].id))
            ),
            daemon=True,
        )
        with _pool_taken(broker):
            thread.start()
            time.sleep(0.3)  # not a timing assertion: lets it reach the busy pool
            assert thread.is_alive()  # waiting, not failed
        thread.join(10)
        (reader,) = subs
        assert not reader.subscription.missed
        assert [e.id for e in reader.read(3)] == [e.id for e in sent[2:]]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    def test_a_reconnect_storm_replays_every_stream_once(
        self,
        redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """300 browsers of a dead worker resume here from the same id at once,
        while events go on: each gets exactly what it missed, then live events,
        once each and in order (the history read is shared)."""
        broker = make_redis_broker(redis_server.url)
        sent = [broker.publish("chat", Event(f"event {n}")) for n in range(10)]
        count = 300
        barrier = threading.Barrier(count + 1)
        readers: list[Reader] = []
        lock = threading.Lock()

        def resume() -> None:
            barrier.wait(10)
            reader = Reader(broker.subscribe(["chat"], last_event_id=sent[3].id))
            with lock:
                readers.append(reader)

        threads = [threading.Thread(target=resume) for _ in range(count)]
        for thread in threads:
            thread.start()
        barrier.wait(10)
        during = [broker.publish("chat", Event(f"during {n}")) for n in range(5)]
        for thread in threads:
            thread.join(30)
        after = broker.publish("chat", Event("after"))
        expected = [e.id for e in sent[4:] + during + [after]]
        assert len(readers) == count
        for reader in readers:
            assert not reader.subscription.missed
            assert [e.id for e in reader.read(len(expected))] == expected
            assert reader.idle(0)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class TestChurn:
    def test_churn_leaves_only_the_brokers_own_connections(
        self,
        own_redis_server: RedisServer,
        make_app: Callable[[str], tuple[Flask, EventStream]],
        serve: Callable[[Flask], LiveServer],
        open_stream: Callable[..., StreamClient],
    ) -> None:
        """200 short HTTP streams, 10 open at a time, while events are published:
        afterwards no subscriber is left and Redis holds only this broker's own
        connections (at most 3), nothing per stream."""
        app, events = make_app(own_redis_server.url)
        url = f"{serve(app).url}/stream?channel=churn"
        stop = threading.Event()

        def ticks() -> None:
            with app.app_context():
                while not stop.wait(0.005):
                    events.publish("tick", channel="churn")

        ticker = threading.Thread(target=ticks, daemon=True)
        ticker.start()
        try:
            for _ in range(20):
                clients = [open_stream(url) for _ in range(10)]
                for client in clients:
                    client.read_events(1)
                    client.close()
        finally:
            stop.set()
            ticker.join(10)
        with app.app_context():
            wait_for(lambda: events.subscriber_count() == 0)
        name = _redis_broker(app, events).client_name
        with own_redis_server.client() as client:
            me = client.client_id()
            others = [
                entry
                for entry in client.client_list()
                if int(entry["id"]) != me and not entry.get("name", "") == name
            ]
        assert others == []
        assert 1 <= len(own_redis_server.clients(name)) <= 3


class TestPublishRetry:
    def test_a_retried_publish_is_stored_once(
        self,
        redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The reply of a stored attempt is lost: the retry, on a fresh connection,
        finds the attempt's entry and returns it, storing nothing twice."""
        broker = make_redis_broker(redis_server.url)
        reader = Reader(broker.subscribe(["r"]))
        broker.publish("r", Event("before"))
        original = Connection.read_response
        lost: list[bytes] = []

        def lose_the_first_reply(self: Connection, *args: Any, **kwargs: Any) -> Any:
            reply = original(self, *args, **kwargs)
            # The publish script's answer (an entry id), not the listener's.
            if not lost and isinstance(reply, bytes) and b"-" in reply:
                lost.append(reply)
                raise RedisConnectionError("connection reset (test)")
            return reply

        monkeypatch.setattr(Connection, "read_response", lose_the_first_reply)
        sent = broker.publish("r", Event("once"))
        monkeypatch.undo()
        broker.publish("r", Event("after"))
        assert lost and sent.id == lost[0].decode()
        assert [e.data for e in reader.read(3)] == ["before", "once", "after"]
        assert reader.idle()  # nothing more: the retry stored no second entry
        assert len(reader.events) == 3

    def test_distinct_publishes_of_equal_events_are_all_stored(
        self, redis_server: RedisServer, make_redis_broker: Callable[[str], RedisBroker]
    ) -> None:
        broker = make_redis_broker(redis_server.url)
        reader = Reader(broker.subscribe(["e"]))
        ids = {broker.publish("e", Event("same")).id for _ in range(3)}
        assert len(ids) == 3
        assert [e.data for e in reader.read(3)] == ["same"] * 3


class TestRedisDown:
    def test_publish_while_down_raises_broker_unavailable(
        self,
        own_redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
    ) -> None:
        broker = make_redis_broker(own_redis_server.url)
        broker.publish("c", Event("up"))
        own_redis_server.kill()
        with pytest.raises(BrokerUnavailable, match="unavailable.*not published"):
            broker.publish("c", Event("down"))

    def test_streams_survive_a_restart_and_are_told_of_the_gap(
        self,
        own_redis_server: RedisServer,
        make_app: Callable[[str], tuple[Flask, EventStream]],
        serve: Callable[[Flask], LiveServer],
        open_stream: Callable[..., StreamClient],
    ) -> None:
        """Redis is killed and restarted (empty) under an open stream: heartbeats go
        on, publish fails while it is down, the stream gets the gap event (what
        Redis accepted before it died may be lost), and what another process
        publishes while the listener reconnects arrives, once."""
        app, events = make_app(own_redis_server.url)
        prefix = app.config["EVENTSTREAM_REDIS_PREFIX"]
        client = open_stream(f"{serve(app).url}/stream?channel=c")
        with app.app_context():
            wait_for(lambda: events.subscriber_count() == 1)
            events.publish("one", channel="c")
            client.read_events(1)
            own_redis_server.kill()
            with pytest.raises(BrokerUnavailable):
                events.publish("lost", channel="c")
            beats = client.raw.count(HEARTBEAT)
            client.read_until(lambda c: c.raw.count(HEARTBEAT) >= beats + 2)
            own_redis_server.start()
            publish_from_subprocess(own_redis_server.url, prefix, "c", "two")
            client.read_events(3, timeout=15)
            events.publish("three", channel="c")
            client.read_events(4)
        one, gap, two, three = client.events
        assert (one.data, two.data, three.data) == ("one", "two", "three")
        assert gap.event == GAP_EVENT
        assert json.loads(gap.data)["channel"] == "c"

    def test_subscribe_while_down_gets_live_events_after(
        self,
        own_redis_server: RedisServer,
        make_redis_broker: Callable[[str], RedisBroker],
    ) -> None:
        broker = make_redis_broker(own_redis_server.url)
        sent = broker.publish("c", Event("before"))
        own_redis_server.kill()
        reader = Reader(broker.subscribe(["c"], last_event_id=sent.id))
        assert reader.subscription.missed  # history could not be read
        own_redis_server.start()
        after = broker.publish("c", Event("after"))
        assert [e.id for e in reader.read(1, timeout=15)] == [after.id]
