"""Fixtures for the reliability suite: real faults, exact outcomes.

Each test gets a ``redis-server`` of its own (it may stop, kill, restart or
reconfigure it), apps served over real HTTP, and publishers in other processes.
Every wait is bounded; nothing here asserts how long something took.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from flask import Flask

from flask_eventstream import GAP_EVENT, Event, EventStream
from flask_eventstream.brokers import Broker, MemoryBroker

from ..brokers.redis_server import RedisServer, free_port
from ..conftest import LiveServer, missing
from ..helpers import StreamClient, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` for this test alone: it may be stopped, killed, restarted."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)  # a test that failed mid-stall
    server.kill()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


def redis_broker(url: str, **options: Any) -> Broker:
    """A Redis broker (the ``redis`` extra), or fail/skip if it is not installed."""
    try:
        from flask_eventstream.brokers.redis import RedisBroker
    except ImportError:
        missing("the redis package (pip install flask-eventstream[redis])")
        raise
    return RedisBroker.from_url(url, **options)


class App:
    """An app on one broker, served over real HTTP by a threaded Werkzeug server."""

    def __init__(self, broker: Broker, serve: Callable[[Flask], LiveServer]) -> None:
        self.broker = broker
        self.flask = Flask(__name__)
        self.flask.config.update(TESTING=True, EVENTSTREAM_HEARTBEAT=0.5)
        self.events = EventStream(self.flask, broker=broker)
        self.url = serve(self.flask).url

    def publish(self, data: str, channel: str, **options: Any) -> Event:
        with self.flask.app_context():
            return self.events.publish(data, channel=channel, **options)


@pytest.fixture
def make_app(serve: Callable[[Flask], LiveServer]) -> Iterator[Callable[[Broker], App]]:
    """Serves an app on the given broker; closes the broker at the end."""
    brokers: list[Broker] = []

    def make(broker: Broker) -> App:
        brokers.append(broker)
        return App(broker, serve)

    yield make
    for broker in brokers:
        broker.close()


@pytest.fixture
def redis_app(
    redis_server: RedisServer, prefix: str, make_app: Callable[[Broker], App]
) -> Callable[..., App]:
    """Serves an app on a Redis broker of this test's server and prefix."""

    def make(**options: Any) -> App:
        return make_app(redis_broker(redis_server.url, key_prefix=prefix, **options))

    return make


@pytest.fixture
def memory_app(make_app: Callable[[Broker], App]) -> Callable[..., App]:
    def make(**options: Any) -> App:
        return make_app(MemoryBroker(**options))

    return make


@pytest.fixture
def streams() -> Iterator[Callable[..., StreamClient]]:
    """Opens streaming clients (``http.client``), closed at the end."""
    clients: list[StreamClient] = []

    def open_(url: str, **kwargs: Any) -> StreamClient:
        kwargs.setdefault("timeout", 15)
        client = StreamClient(url, **kwargs)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        client.close()


_PUBLISH_MANY = """
import sys
from flask_eventstream import Event
from flask_eventstream.brokers.redis import RedisBroker

url, prefix, channel, tag, count = sys.argv[1:]
with RedisBroker.from_url(url, key_prefix=prefix) as broker:
    for n in range(int(count)):
        print(broker.publish(channel, Event(f"{tag} {n}")).id, flush=True)
"""


def publish_from_process(
    url: str, prefix: str, channel: str, tag: str, count: int
) -> list[str]:
    """Publish *count* events (data ``"<tag> <n>"``) from another Python process;
    return their ids."""
    done = subprocess.run(
        [sys.executable, "-c", _PUBLISH_MANY, url, prefix, channel, tag, str(count)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP the process *pid* for the block; SIGCONT it whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def is_gap(event: Event) -> bool:
    return event.event == GAP_EVENT


def gap_data(event: Event) -> dict[str, Any]:
    """The JSON data of a gap event, checked to be a JSON object."""
    assert is_gap(event), event
    data = json.loads(event.data)
    assert isinstance(data, dict), event.data
    return data


def assert_gaps_carry_no_id(raw: bytes) -> None:
    """Every gap event on the wire has no ``id:`` field (it must not move the
    browser's last event id)."""
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = block.split(b"\n")
        if f"event: {GAP_EVENT}".encode() in lines:
            assert not any(line.startswith(b"id") for line in lines), block


def entry_id(text: str) -> tuple[int, int]:
    """A Redis stream entry id as a comparable pair."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def data_of(events: list[Event]) -> list[str]:
    """The data of the events that are not gap events, in order."""
    return [event.data for event in events if not is_gap(event)]


def assert_increasing(ids: list[str], key: Callable[[str], Any] = entry_id) -> None:
    """Strictly increasing, hence no duplicate."""
    keys = [key(i) for i in ids]
    assert keys == sorted(set(keys)), ids


def read_until_data(client: StreamClient, data: str, timeout: float = 10.0) -> None:
    """Read *client* until an event with *data* arrived; fail after *timeout*."""
    client.read_until(lambda c: any(e.data == data for e in c.events), timeout)


def root_env(**extra: str) -> dict[str, str]:
    """This environment, with the repository on ``PYTHONPATH`` (for live apps)."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    return env


class GeventServer:
    """gunicorn with one gevent worker serving ``tests/live_apps/servers_app.py``.

    :param env: ``EVENTSTREAM_*`` settings for the app (broker URL, prefix, history).
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn",
                "--config", "python:flask_eventstream.gunicorn",
                "--bind", f"127.0.0.1:{self.port}",
                "--workers", "1",
                "--worker-class", "gevent",
                "--graceful-timeout", "5",
                "--log-level", "warning",
                "tests.live_apps.servers_app:app",
            ],
            cwd=ROOT,
            env=root_env(EVENTSTREAM_HEARTBEAT="0.5", **env),
        )  # fmt: skip
        wait_for(self._ready, timeout=30)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.process.returncode}")
        try:
            self.count()
        except OSError:
            return False
        return True

    def count(self) -> int:
        with urllib.request.urlopen(f"{self.url}/count", timeout=5) as response:
            return int(response.read())

    def worker_pid(self) -> int:
        """The pid of the (one) worker process."""
        (worker,) = psutil.Process(self.process.pid).children()
        return int(worker.pid)

    def stop(self) -> None:
        for child in psutil.Process(self.process.pid).children():
            child.send_signal(signal.SIGCONT)  # a test that failed mid-stop
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def gevent_server() -> Iterator[Callable[..., GeventServer]]:
    """Starts gunicorn gevent servers of the live app; stops them at the end."""
    for module in ("gunicorn", "gevent"):
        if importlib.util.find_spec(module) is None:
            missing(module)
    started: list[GeventServer] = []

    def start(**env: str) -> GeventServer:
        server = GeventServer(env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
