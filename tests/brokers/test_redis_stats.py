"""The Redis broker across processes: subscriber counts kept in Redis, and reconnects.

Each process's listener writes its subscribers per channel into an expiring hash;
``cluster_subscriber_counts()`` (and ``flask eventstream stats``) adds them up. The
reconnect tests kill and restart a real ``redis-server`` under an open subscription.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_eventstream import GAP_EVENT, Event, EventStream, metrics
from flask_eventstream.brokers.redis import RedisBroker
from flask_eventstream.cli import eventstream
from flask_eventstream.signals import broker_reconnected

from ..helpers import wait_for
from .reading import Reader
from .redis_server import RedisServer

pytestmark = pytest.mark.redis

#: Seconds between two writes of a process's counts here; they expire after three.
INTERVAL = 0.2

MakeBroker = Callable[..., RedisBroker]


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def make_broker(prefix: str) -> Iterator[MakeBroker]:
    """Brokers on one key prefix, as the worker processes of one app would be."""
    made: list[RedisBroker] = []

    def make(url: str, **options: Any) -> RedisBroker:
        options.setdefault("stats_interval", INTERVAL)
        broker = RedisBroker.from_url(url, key_prefix=prefix, **options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def stats_keys(server: RedisServer, prefix: str) -> list[bytes]:
    with server.client() as client:
        return list(client.scan_iter(match=f"{prefix}stats:*"))


class TestClusterSubscriberCounts:
    def test_counts_add_up_across_brokers(
        self, redis_server: RedisServer, make_broker: MakeBroker, prefix: str
    ) -> None:
        """Two processes' subscribers, seen from a third that only publishes."""
        first, second, onlooker = (make_broker(redis_server.url) for _ in range(3))
        first.subscribe(["a"])
        first.subscribe(["a", "b"])
        second.subscribe(["a"])
        second.subscribe(["c"])
        expected = {"a": 3, "b": 1, "c": 1}
        wait_for(lambda: onlooker.cluster_subscriber_counts() == expected)
        assert first.cluster_subscriber_counts() == expected
        assert len(stats_keys(redis_server, prefix)) == 2

    def test_counts_follow_subscriptions_and_vanish_when_none_is_left(
        self, redis_server: RedisServer, make_broker: MakeBroker, prefix: str
    ) -> None:
        broker = make_broker(redis_server.url)
        subs = [broker.subscribe(["a"]) for _ in range(3)]
        wait_for(lambda: broker.cluster_subscriber_counts() == {"a": 3})
        subs.pop().close()
        wait_for(lambda: broker.cluster_subscriber_counts() == {"a": 2})
        for sub in subs:
            sub.close()
        wait_for(lambda: stats_keys(redis_server, prefix) == [])
        assert broker.cluster_subscriber_counts() == {}

    def test_a_closed_broker_drops_out_at_once(
        self, redis_server: RedisServer, make_broker: MakeBroker, prefix: str
    ) -> None:
        staying, leaving = make_broker(redis_server.url), make_broker(redis_server.url)
        staying.subscribe(["a"])
        leaving.subscribe(["a"])
        leaving.subscribe(["b"])
        wait_for(lambda: staying.cluster_subscriber_counts() == {"a": 2, "b": 1})
        leaving.close()
        # close() deletes the hash itself: no waiting for the expiry.
        assert staying.cluster_subscriber_counts() == {"a": 1}
        assert len(stats_keys(redis_server, prefix)) == 1

    def test_a_killed_process_drops_out_after_the_expiry(
        self, redis_server: RedisServer, make_broker: MakeBroker, prefix: str
    ) -> None:
        """A process that dies without close() (SIGKILL) leaves a hash that expires
        after three intervals; the survivors keep theirs fresh."""
        survivor = make_broker(redis_server.url)
        survivor.subscribe(["a"])
        with subprocess.Popen(
            [sys.executable, "-c", _SUBSCRIBE, redis_server.url, prefix, "a"],
            stdin=subprocess.PIPE,
        ) as process:
            try:
                wait_for(lambda: survivor.cluster_subscriber_counts() == {"a": 2}, 30)
            finally:
                process.kill()  # SIGKILL: no close(), no clean-up
                process.wait(timeout=10)
        with redis_server.client() as client:
            assert all(0 < client.pttl(key) for key in stats_keys(redis_server, prefix))
        wait_for(lambda: survivor.cluster_subscriber_counts() == {"a": 1})
        assert len(stats_keys(redis_server, prefix)) == 1

    def test_memory_broker_counts_this_process(self) -> None:
        from flask_eventstream.brokers import MemoryBroker

        with MemoryBroker() as broker:
            broker.subscribe(["a", "b"])
            broker.subscribe(["a"])
            assert broker.cluster_subscriber_counts() == {"a": 2, "b": 1}

    def test_stats_interval_must_be_positive(self, redis_server: RedisServer) -> None:
        with pytest.raises(ValueError, match="stats_interval"):
            RedisBroker.from_url(redis_server.url, stats_interval=0)


#: A worker process with one subscriber, killed by the test (stdin keeps it alive).
_SUBSCRIBE = """
import sys
from flask_eventstream.brokers.redis import RedisBroker

url, prefix, channel = sys.argv[1:]
broker = RedisBroker.from_url(url, key_prefix=prefix, stats_interval=0.2)
subscription = broker.subscribe([channel])
sys.stdin.read()
"""


class TestStatsCommand:
    def test_stats_adds_up_every_process(
        self, redis_server: RedisServer, make_broker: MakeBroker
    ) -> None:
        """``flask eventstream stats`` in a process with no subscriber of its own
        shows those of two worker processes."""
        for _ in range(2):
            worker = make_broker(redis_server.url)
            worker.subscribe(["chat"])
            worker.subscribe(["chat", "news"])
        app = Flask(__name__)
        EventStream(app, broker=make_broker(redis_server.url))
        runner = app.test_cli_runner()

        def stats() -> dict[str, Any]:
            result = runner.invoke(eventstream, ["stats", "--json"])
            assert result.exit_code == 0, result.output
            return json.loads(result.stdout)  # type: ignore[no-any-return]

        wait_for(lambda: stats()["channels"] == {"chat": 4, "news": 2})
        assert stats() == {
            "broker": "RedisBroker",
            "channels_of": "all processes",
            "channels": {"chat": 4, "news": 2},
            "open_streams": 0,
            "subscribers": 0,
        }
        text = runner.invoke(eventstream, ["stats"]).stdout
        assert "subscribers per channel, all processes:" in text
        assert "  chat\t4" in text and "  news\t2" in text

    def test_stats_while_redis_is_down_is_a_clear_error(
        self, own_redis_server: RedisServer, make_broker: MakeBroker
    ) -> None:
        app = Flask(__name__)
        EventStream(app, broker=make_broker(own_redis_server.url))
        own_redis_server.kill()
        result = app.test_cli_runner().invoke(eventstream, ["stats"])
        assert result.exit_code == 1
        assert "unavailable" in result.output and "Traceback" not in result.output


class TestReconnects:
    def test_a_restart_is_logged_signalled_counted_and_delivery_resumes(
        self,
        own_redis_server: RedisServer,
        make_broker: MakeBroker,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Kill Redis under a subscription: one warning; start it again (empty): one
        INFO, one ``broker_reconnected`` (sender: the broker), the metric counts
        one (once, though two apps share the broker), one warning that entries
        were lost, the gap event, and events flow again."""
        caplog.set_level(logging.DEBUG, logger="flask_eventstream.brokers.redis")
        broker = make_broker(own_redis_server.url)
        registry = CollectorRegistry()
        for name in ("one", "two"):
            app = Flask(name)
            EventStream(app, broker=broker)
            metrics.install(app, registry=registry)
        senders: list[object] = []
        reader = Reader(broker.subscribe(["c"]))
        wait_for(lambda: broker.cluster_subscriber_counts() == {"c": 1})

        def received(sender: object, **extra: Any) -> None:
            senders.append(sender)

        with broker_reconnected.connected_to(received, sender=broker):
            own_redis_server.kill()
            wait_for(lambda: "lost its connection" in caplog.text)
            own_redis_server.start()
            wait_for(lambda: senders == [broker], timeout=15)
            after = broker.publish("c", Event("after"))
            gap, event = reader.read(2, timeout=15)
            assert gap.event == GAP_EVENT and event.id == after.id

        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        infos = [r for r in caplog.records if "reconnected to" in r.getMessage()]
        assert len(warnings) == 2
        assert "lost its connection" in warnings[0].message
        assert "lost entries" in warnings[1].message
        assert len(infos) == 1 and infos[0].levelno == logging.INFO
        reconnects = registry.get_sample_value("eventstream_broker_reconnects_total")
        assert reconnects == 1
        # Redis came back empty: the listener wrote this process's counts again.
        wait_for(lambda: broker.cluster_subscriber_counts() == {"c": 1})

    def test_a_failing_receiver_does_not_stop_delivery(
        self,
        own_redis_server: RedisServer,
        make_broker: MakeBroker,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        broker = make_broker(own_redis_server.url)
        reader = Reader(broker.subscribe(["c"]))
        wait_for(lambda: broker.cluster_subscriber_counts() == {"c": 1})

        def broken(sender: object, **extra: Any) -> None:
            raise RuntimeError("receiver bug")

        with broker_reconnected.connected_to(broken, sender=broker):
            own_redis_server.kill()
            own_redis_server.start()
            wait_for(lambda: "receiver failed" in caplog.text, timeout=15)
            after = broker.publish("c", Event("after"))
            assert reader.read(2, timeout=15)[1].id == after.id
