"""The Redis broker across processes: two server processes on one Redis, a third
process that publishes, replay on another process, connections per process.

Server processes run ``tests/live_apps/redis_app.py`` (Werkzeug, threaded); the
publisher is a separate ``python -c`` process. Every wait is bounded.
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flask_eventstream import Event
from flask_eventstream.brokers.redis import RedisBroker

from .brokers.redis_server import RedisServer, free_port, publish_from_subprocess
from .conftest import missing
from .helpers import StreamClient, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "live_apps" / "redis_app.py"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str

    @property
    def client_name_prefix(self) -> str:
        """How this process's Redis connections are named (``CLIENT SETNAME``)."""
        return f"eventstream:{socket.gethostname()}:{self.process.pid}:"

    def count(self) -> int:
        with urllib.request.urlopen(f"{self.url}/count", timeout=5) as response:
            return int(response.read())


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def start_server(
    redis_server: RedisServer, prefix: str
) -> Iterator[Callable[[], ServerProcess]]:
    """Starts ``redis_app.py`` processes on the shared Redis and key prefix."""
    started: list[subprocess.Popen[str]] = []

    def start() -> ServerProcess:
        env = dict(
            os.environ,
            EVENTSTREAM_BROKER_URL=redis_server.url,
            EVENTSTREAM_REDIS_PREFIX=prefix,
            EVENTSTREAM_HEARTBEAT="0.5",
        )
        process = subprocess.Popen(
            [sys.executable, str(APP)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=20), "server process did not start"
        line = process.stdout.readline()
        assert line.startswith("port "), line
        return ServerProcess(process, f"http://127.0.0.1:{int(line.split()[1])}")

    yield start
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def streams() -> Iterator[Callable[..., StreamClient]]:
    clients: list[StreamClient] = []

    def open_(url: str, **kwargs: object) -> StreamClient:
        client = StreamClient(url, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield open_
    for client in clients:
        client.close()


def test_publish_from_a_third_process_reaches_both_server_processes(
    redis_server: RedisServer,
    prefix: str,
    start_server: Callable[[], ServerProcess],
    streams: Callable[..., StreamClient],
) -> None:
    """25 streams on each of two processes; one publish from a third reaches all 50
    with the same id; each process holds at most 3 Redis connections; when the
    streams close, nothing stays behind (subscribers, keys)."""
    servers = [start_server(), start_server()]
    clients = [
        streams(f"{server.url}/stream?channel=news", timeout=10)
        for server in servers
        for _ in range(25)
    ]
    for server in servers:
        wait_for(lambda server=server: server.count() == 25, timeout=10)
    sent_id = publish_from_subprocess(redis_server.url, prefix, "news", "extra!")
    for client in clients:
        (event,) = client.read_events(1, timeout=10)
        assert (event.data, event.id) == ("extra!", sent_id)
    for server in servers:
        assert 1 <= len(redis_server.clients(server.client_name_prefix)) <= 3

    for client in clients:
        client.close()
    for server in servers:  # found gone at the next heartbeat write
        wait_for(lambda server=server: server.count() == 0, timeout=10)
    kept = {
        f"{prefix}{{news}}".encode(),
        f"{prefix}last-id".encode(),
        f"{prefix}epoch".encode(),
    }
    with redis_server.client() as redis:
        # Each listener removes its process's counts (<prefix>stats:...) when it
        # next wakes: within one XREAD block (5 s).
        wait_for(lambda: set(redis.keys(f"{prefix}*")) == kept, timeout=15)
    for server in servers:
        assert len(redis_server.clients(server.client_name_prefix)) <= 3


def test_replay_on_another_process(
    redis_server: RedisServer,
    prefix: str,
    start_server: Callable[[], ServerProcess],
    streams: Callable[..., StreamClient],
) -> None:
    """A client that read events on one process and reconnects to another with
    Last-Event-ID gets exactly what it missed, in order, then live events."""
    first, second = start_server(), start_server()
    with RedisBroker.from_url(redis_server.url, key_prefix=prefix) as publisher:
        client = streams(f"{first.url}/stream?channel=room", timeout=10)
        wait_for(lambda: first.count() == 1, timeout=10)
        seen = [publisher.publish("room", Event(f"seen {n}")) for n in range(3)]
        assert [e.id for e in client.read_events(3, timeout=10)] == [e.id for e in seen]
        client.close()
        missed = [publisher.publish("room", Event(f"missed {n}")) for n in range(4)]

        again = streams(
            f"{second.url}/stream?channel=room",
            headers={"Last-Event-ID": seen[-1].id or ""},
            timeout=10,
        )
        got = again.read_events(4, timeout=10)
        assert [e.id for e in got] == [e.id for e in missed]
        wait_for(lambda: second.count() == 1, timeout=10)
        live = publisher.publish("room", Event("live"))
        assert again.read_events(5, timeout=10)[-1].id == live.id
    deadline = time.monotonic() + 1.0  # no duplicate trails in
    while time.monotonic() < deadline:
        again.read_some()
    assert [e.id for e in again.events] == [e.id for e in missed + [live]]


@pytest.fixture
def gunicorn_on_redis(redis_server: RedisServer) -> Iterator[Callable[[str], str]]:
    """Starts ``tests/live_apps/servers_app.py`` under gunicorn, 2 workers of a kind,
    on the Redis broker (default key prefix); returns its base URL."""
    for module in ("gunicorn", "gevent"):
        if importlib.util.find_spec(module) is None:
            missing(module)
    started: list[subprocess.Popen[bytes]] = []

    def start(worker: str) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(
            os.environ,
            EVENTSTREAM_BROKER_URL=redis_server.url,
            EVENTSTREAM_HEARTBEAT="0.5",
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
            ),
        )
        process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn",
                "--bind", f"127.0.0.1:{port}",
                "--workers", "2",
                "--worker-class", worker,
                "--threads", "40",
                "--log-level", "warning",
                "tests.live_apps.servers_app:app",
            ],
            cwd=ROOT,
            env=env,
        )  # fmt: skip
        started.append(process)

        def ready() -> bool:
            assert process.poll() is None, "gunicorn exited"
            try:
                urllib.request.urlopen(f"{url}/count", timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(ready, timeout=30)
        return url

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize("worker", ["gevent", "gthread"])
def test_gunicorn_workers_get_events_published_elsewhere(
    redis_server: RedisServer,
    gunicorn_on_redis: Callable[[str], str],
    streams: Callable[..., StreamClient],
    worker: str,
) -> None:
    """Gunicorn with 2 workers (gevent monkey-patched, or gthread): every stream,
    whichever worker holds it, gets an event published by another process."""
    url = gunicorn_on_redis(worker)
    channel = f"g-{uuid.uuid4().hex[:8]}"
    clients = [streams(f"{url}/stream?channel={channel}") for _ in range(20)]
    for client in clients:  # the preamble is written once the stream is subscribed
        client.read_until(lambda c: bool(c.raw), timeout=10)
    sent_id = publish_from_subprocess(redis_server.url, "eventstream:", channel, "hi")
    for client in clients:
        (event,) = client.read_events(1, timeout=10)
        assert (event.data, event.id) == ("hi", sent_id)
    per_process: dict[str, int] = {}
    for entry in redis_server.clients(f"eventstream:{socket.gethostname()}:"):
        pid = entry["name"].split(":")[2]
        per_process[pid] = per_process.get(pid, 0) + 1
    assert per_process and max(per_process.values()) <= 3
