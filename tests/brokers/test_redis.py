"""What only the Redis broker does: URLs, connection count, clean-up, Redis restarts.

Everything runs against a real ``redis-server`` process; the restart tests kill it
with SIGKILL and start it again on the same port, with no persistence, as a crash of
an unpersisted Redis would.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from flask_eventstream import BrokerUnavailable, Event, EventStream
from flask_eventstream.brokers.redis import RedisBroker
from flask_eventstream.stream import HEARTBEAT

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
        """Closed subscriptions leave no key but the channels' history; a closed
        broker leaves no connection; the listener thread ends."""
        threads = _listener_threads()
        broker = make_redis_broker(redis_server.url)
        subs = [broker.subscribe([f"c{n % 3}"]) for n in range(30)]
        broker.publish("c0", Event("x"))
        Reader(subs[0]).read(1)
        for sub in subs:
            sub.close()
        assert broker.subscriber_count() == 0
        prefix = broker.key("")[: -len("{}")]
        kept = {f"{prefix}{{c0}}".encode(), f"{prefix}last-id".encode()}
        with redis_server.client() as client:
            # The listener removes this process's counts (<prefix>stats:...) when it
            # next wakes: within one XREAD block (5 s).
            wait_for(lambda: set(client.keys(f"{prefix}*")) == kept, timeout=15)
        broker.close()
        assert redis_server.clients(broker.client_name) == []
        wait_for(lambda: _listener_threads() == threads)


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

    def test_streams_survive_a_restart_and_miss_nothing(
        self,
        own_redis_server: RedisServer,
        make_app: Callable[[str], tuple[Flask, EventStream]],
        serve: Callable[[Flask], LiveServer],
        open_stream: Callable[..., StreamClient],
    ) -> None:
        """Redis is killed and restarted (empty) under an open stream: heartbeats go
        on, publish fails while it is down, and what another process publishes
        while the listener reconnects arrives, once."""
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
            client.read_events(2, timeout=15)
            events.publish("three", channel="c")
            client.read_events(3)
        assert [e.data for e in client.events] == ["one", "two", "three"]

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
