"""The per-worker listener under faults (docs/redis.md, "Guarantees").

A listener that fell behind past the history, or whose Redis came back empty,
tells every open stream with one inline gap event and goes on live; a write
Redis refuses (out of memory) does not pause delivery.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from flask_eventstream import Event
from flask_eventstream.signals import broker_reconnected

from ..brokers.redis_server import RedisServer
from ..helpers import StreamClient, wait_for
from .conftest import (
    App,
    GeventServer,
    assert_gaps_carry_no_id,
    assert_increasing,
    data_of,
    entry_id,
    gap_data,
    is_gap,
    read_until_data,
    redis_broker,
    stopped,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_worker_stopped_past_the_history_gets_an_inline_gap(
    redis_server: RedisServer,
    gevent_server: Callable[..., GeventServer],
    prefix: str,
    streams: Callable[..., StreamClient],
) -> None:
    """Stopped worker, 300 events past a history of 20: one inline GAP at the hole."""
    server = gevent_server(
        EVENTSTREAM_BROKER_URL=redis_server.url,
        EVENTSTREAM_REDIS_PREFIX=prefix,
        EVENTSTREAM_HISTORY="20",
    )
    client = streams(f"{server.url}/stream?channel=busy", timeout=20)
    wait_for(lambda: server.count() == 1, timeout=10)
    with redis_broker(redis_server.url, key_prefix=prefix, history=20) as publisher:
        before = [publisher.publish("busy", Event(f"before {n}")) for n in range(3)]
        read_until_data(client, "before 2")
        with stopped(server.worker_pid()):
            for n in range(300):
                publisher.publish("busy", Event(f"hole {n}"))
            with redis_server.client() as redis:
                first = redis.xinfo_stream(f"{prefix}{{busy}}")["first-entry"][0]
            # Entries the listener has not read were trimmed.
            assert entry_id(first.decode()) > entry_id(before[-1].id or "")
        after = [publisher.publish("busy", Event(f"after {n}")) for n in range(5)]
    read_until_data(client, "after 4", timeout=20)

    # The listener may have read the first entries of the hole before it stopped:
    # the gap comes where entries went missing, before the first one after them.
    events = client.events
    gaps = [n for n, event in enumerate(events) if is_gap(event)]
    assert len(gaps) == 1, data_of(events)
    assert gap_data(events[gaps[0]])["channel"] == "busy"
    head, tail = data_of(events[: gaps[0]]), data_of(events[gaps[0] + 1 :])
    read = len(head) - 3
    assert head == [f"before {n}" for n in range(3)] + [
        f"hole {n}" for n in range(read)
    ]
    assert tail[-5:] == [e.data for e in after]
    holes = [int(data.removeprefix("hole ")) for data in tail[:-5]]
    assert tail[:-5] == [f"hole {n}" for n in holes]  # what was retained, if any
    assert all(n >= read for n in holes)
    assert_increasing([e.id or "" for e in events if not is_gap(e)])
    assert_gaps_carry_no_id(bytes(client.raw))


@pytest.fixture
def reconnected(redis_app: Callable[..., App]) -> Iterator[tuple[App, threading.Event]]:
    """An app on Redis, and an event set when its listener is back after a loss."""
    app = redis_app()
    back = threading.Event()

    def receiver(sender: object) -> None:
        back.set()

    broker_reconnected.connect(receiver, sender=app.broker)
    yield app, back
    broker_reconnected.disconnect(receiver, sender=app.broker)


def test_open_streams_get_one_gap_when_redis_restarts_empty(
    reconnected: tuple[App, threading.Event],
    redis_server: RedisServer,
    streams: Callable[..., StreamClient],
) -> None:
    """Redis SIGKILLed and restarted empty: one GAP per open stream, then live."""
    app, back = reconnected
    clients = {
        "news": [streams(f"{app.url}/stream?channel=news") for _ in range(2)],
        "other": [streams(f"{app.url}/stream?channel=other")],
    }
    wait_for(lambda: app.broker.subscriber_count() == 3)
    for channel, group in clients.items():
        app.publish(f"{channel} before", channel)
        for client in group:
            read_until_data(client, f"{channel} before")

    redis_server.kill()
    redis_server.start()
    assert back.wait(timeout=15), "the listener did not reconnect"
    for channel in clients:
        for n in range(3):
            app.publish(f"{channel} live {n}", channel)

    for channel, group in clients.items():
        for client in group:
            read_until_data(client, f"{channel} live 2")
            before, gap, *rest = client.events
            assert before.data == f"{channel} before"
            assert gap_data(gap)["channel"] == channel
            assert [e.data for e in rest] == [f"{channel} live {n}" for n in range(3)]
            assert_increasing([e.id or "" for e in (before, *rest)])
            assert_gaps_carry_no_id(bytes(client.raw))


#: Appends events without the library's publish (which Redis refuses when out of
#: memory): a script whose first write (PEXPIRE, which Redis does not refuse) lets
#: its later writes through, as Redis lets a script that has written finish.
_ADD_UNDER_OOM = """
redis.call('PEXPIRE', KEYS[2], 600000)
for i = 1, #ARGV do
    redis.call('XADD', KEYS[1], '*', 'd', ARGV[i])
end
return #ARGV
"""


def test_refused_stats_write_does_not_pause_delivery(
    redis_app: Callable[..., App],
    redis_server: RedisServer,
    prefix: str,
    streams: Callable[..., StreamClient],
) -> None:
    """Counts write refused for OOM: 20 events stored meanwhile arrive within 3 s."""
    app = redis_app(stats_interval=0.1)
    client = streams(f"{app.url}/stream?channel=oom")
    wait_for(lambda: app.broker.subscriber_count("oom") == 1)
    app.publish("before", "oom")
    read_until_data(client, "before")
    with redis_server.client() as redis:
        wait_for(lambda: bool(redis.keys(f"{prefix}stats:*")))  # counts written
        redis.set(f"{prefix}pinned", "1")
        refused = redis.info("errorstats").get("errorstat_OOM", {}).get("count", 0)
        redis.config_set("maxmemory-policy", "noeviction")
        redis.config_set("maxmemory", "1")
        try:

            def stats_refused() -> bool:
                stats = redis.info("errorstats").get("errorstat_OOM", {})
                return int(stats.get("count", 0)) > refused

            wait_for(stats_refused, timeout=10)
            sent = [f"oom {n}" for n in range(20)]
            redis.eval(_ADD_UNDER_OOM, 2, f"{prefix}{{oom}}", f"{prefix}pinned", *sent)
            read_until_data(client, "oom 19", timeout=3)
        finally:
            redis.config_set("maxmemory", "0")
    assert data_of(client.events) == ["before", *sent]
