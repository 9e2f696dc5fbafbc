"""Samples in docs/ that use Redis, run as written on a real ``redis-server``.

The pages write ``redis://localhost:6379/0``; the tests' Redis listens on a free
port, so that address (only) is replaced by the test server's.
"""

from __future__ import annotations

import itertools
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flask_eventstream import EventStream
from flask_eventstream.cli import eventstream

from .brokers.redis_server import RedisServer
from .conftest import LiveServer
from .docs_blocks import ROOT, code_block
from .helpers import StreamClient, wait_for

pytestmark = pytest.mark.redis

_names = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def run_sample(
    redis_server: RedisServer,
) -> Iterator[Callable[..., dict[str, Any]]]:
    """``run_sample(code, **names)``: *code* with the test Redis's URL, in a
    namespace with an ``app`` (own key prefix) and *names*; brokers closed after."""
    made: list[dict[str, Any]] = []

    def run(code: str, **names: Any) -> dict[str, Any]:
        app = Flask(f"redis_sample_{next(_names)}")
        app.config.update(
            TESTING=True,
            EVENTSTREAM_HEARTBEAT=0.5,
            EVENTSTREAM_REDIS_PREFIX=f"docs-{uuid.uuid4().hex[:8]}:",
        )
        namespace: dict[str, Any] = {"app": app, "EventStream": EventStream, **names}
        code = code.replace("redis://localhost:6379/0", redis_server.url)
        code = code.replace('"redis://localhost"', repr(redis_server.url))
        exec(code, namespace)  # noqa: S102 - the documentation's own code
        made.append(namespace)
        return namespace

    yield run
    for namespace in made:
        state = namespace["app"].extensions.get("eventstream")
        if state is not None:
            state.broker.close()


def _published_once_arrives(
    namespace: dict[str, Any],
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> StreamClient:
    app: Flask = namespace["app"]
    events: EventStream = namespace["events"]
    stream = open_stream(f"{serve(app).url}/stream/news", timeout=10)
    stream.read_until(lambda s: len(s.raw) > 0, timeout=10)
    with app.app_context():
        events.publish("through Redis", channel="news")
    (event,) = stream.read_events(1, timeout=10)
    assert event.data == "through Redis"
    assert type(events.broker()).__name__ == "RedisBroker"
    return stream


def test_configuration_first_sample_uses_redis_and_its_settings(
    run_sample: Callable[..., dict[str, Any]],
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    namespace = run_sample(
        code_block("configuration.md", "python", "EVENTSTREAM_RETRY=5000")
    )
    stream = _published_once_arrives(namespace, serve, open_stream)
    assert b"retry: 5000\n" in stream.raw
    assert namespace["app"].config["EVENTSTREAM_HEARTBEAT"] == 15


def test_redis_page_first_sample_changes_nothing_else(
    run_sample: Callable[..., dict[str, Any]],
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    namespace = run_sample(
        code_block("redis.md", "python", "nothing else in the app changes")
    )
    _published_once_arrives(namespace, serve, open_stream)


def test_redis_broker_alone_publishes_to_the_apps_channels(
    run_sample: Callable[..., dict[str, Any]],
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    """A script with no app reaches the app's browsers (same URL, same prefix)."""
    app = run_sample(
        'app.config["EVENTSTREAM_REDIS_PREFIX"] = "eventstream:"\n'
        'app.config["EVENTSTREAM_BROKER_URL"] = "redis://localhost:6379/0"\n'
        "events = EventStream(app)\n"
    )["app"]
    stream = open_stream(f"{serve(app).url}/stream/chat", timeout=10)
    stream.read_until(lambda s: len(s.raw) > 0, timeout=10)
    run_sample(code_block("redis.md", "python", "RedisBroker.from_url("))
    (event,) = stream.read_events(1, timeout=10)
    assert event.data == "the nightly export is ready"


def test_publish_uncertain_sample_stores_a_retried_event_once(
    run_sample: Callable[..., dict[str, Any]],
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    namespace = run_sample(
        'app.config["EVENTSTREAM_BROKER_URL"] = "redis://localhost:6379/0"\n'
        "events = EventStream(app)\n"
    )
    app: Flask = namespace["app"]
    stream = open_stream(f"{serve(app).url}/stream/orders", timeout=10)
    stream.read_until(lambda s: len(s.raw) > 0, timeout=10)
    retries: list[str] = []
    sample = code_block("redis.md", "python", "except PublishUncertain")
    with app.app_context():
        for _ in range(2):  # the first try, and a retry with the same key
            namespace.update(
                order={"total": 42}, order_id=7, queue_retry=retries.append
            )
            exec(sample, namespace)  # noqa: S102
        namespace["events"].publish("marker", channel="orders")
    events = stream.read_events(2, timeout=10)
    assert [event.data for event in events] == ['{"total": 42}', "marker"]
    assert retries == []


def test_sentinel_sample_is_a_url_the_broker_takes(
    run_sample: Callable[..., dict[str, Any]],
) -> None:
    namespace = run_sample(
        code_block("redis.md", "python", "redis+sentinel://")
        + "events = EventStream(app)\n"
    )
    with namespace["app"].app_context():
        broker = namespace["events"].broker()
    # Where the broker will look (no connection is made before the first use).
    where = str(broker._where)
    assert "service 'mymaster' of Sentinel" in where, where
    assert "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379" in where, where


def test_stats_output_looks_as_the_page_shows(
    run_sample: Callable[..., dict[str, Any]],
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    shown = code_block("redis.md", "", "eventstream stats")
    command, *lines = shown.splitlines()
    assert command == "$ flask --app chat eventstream stats"
    namespace = run_sample(
        'app.config["EVENTSTREAM_BROKER_URL"] = "redis://localhost:6379/0"\n'
        "events = EventStream(app)\n"
    )
    app: Flask = namespace["app"]
    url = serve(app).url
    for channel, count in (("chat", 2), ("news", 1)):
        for _ in range(count):
            stream = open_stream(f"{url}/stream/{channel}", timeout=10)
            stream.read_until(lambda s: len(s.raw) > 0, timeout=10)
    # The page's numbers stand for any: each line as a pattern, digits for digits.
    patterns = [re.sub(r"\\d+|\d+", r"\\d+", re.escape(line)) for line in lines]
    output: list[str] = []

    def matches() -> bool:
        result = app.test_cli_runner().invoke(eventstream, ["stats"])
        assert result.exit_code == 0, result.output
        output[:] = result.output.splitlines()
        return output[-2:] == ["  chat\t2", "  news\t1"]

    wait_for(matches, timeout=15)
    assert len(output) == len(patterns), output
    for pattern, line in zip(patterns, output, strict=True):
        assert re.fullmatch(pattern, line), (pattern, line)


def test_migration_sample_greets_through_the_flask_sse_drop_in(
    run_sample: Callable[..., dict[str, Any]],
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    sample = code_block("migration.md", "python", "def send_message")
    namespace = run_sample(sample, __name__="migration_sample")
    app: Flask = namespace["app"]
    app.config["TESTING"] = True
    url = serve(app).url
    stream = open_stream(f"{url}/stream", timeout=10)
    stream.read_until(lambda s: len(s.raw) > 0, timeout=10)
    assert app.test_client().get("/send").get_data(as_text=True) == "Message sent!"
    (event,) = stream.read_events(1, timeout=10)
    assert (event.event, event.data) == ("greeting", '{"message": "Hello!"}')


def test_the_diagrams_connections_are_all_a_process_opens(
    run_sample: Callable[..., dict[str, Any]],
    redis_server: RedisServer,
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    """One listener and a pool of two: README's "at most 3 Redis connections per
    process whatever the number of browsers", under publishers in many threads."""
    diagram = code_block("redis.md", "", "listener thread")
    (pool,) = re.findall(r"pool \((\d+)\)", diagram)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "At most 3 Redis connections per process" in readme
    namespace = run_sample(
        'app.config["EVENTSTREAM_BROKER_URL"] = "redis://localhost:6379/0"\n'
        "events = EventStream(app)\n"
    )
    app: Flask = namespace["app"]
    events: EventStream = namespace["events"]
    url = serve(app).url
    streams = [open_stream(f"{url}/stream/c{n % 5}", timeout=10) for n in range(30)]
    for stream in streams:
        stream.read_until(lambda s: len(s.raw) > 0, timeout=10)

    def publish(number: int) -> None:
        with app.app_context():
            for _ in range(10):
                events.publish(f"burst {number}", channel=f"c{number % 5}")

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for stream in streams:  # each of its channel's 40 events arrived
        stream.read_events(40, timeout=15)
    with app.app_context():
        name = events.broker().client_name  # type: ignore[attr-defined]
    connections = redis_server.clients(name)
    assert 1 <= len(connections) <= 1 + int(pool) == 3, connections
