"""Fixtures that start real things: a threaded Werkzeug server, streaming clients."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from flask import Flask
from werkzeug.serving import make_server

from flask_eventstream import EventStream

from .helpers import StreamClient

if TYPE_CHECKING:
    from .brokers.redis_server import RedisServer

#: In CI a missing server, browser or tool is a failure, never a skip.
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(what: str) -> None:
    """Fail in CI, skip elsewhere, when a real dependency is not installed."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI (CI=true); run `make test` as root")
    pytest.skip(f"{what} is not installed")


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=True, EVENTSTREAM_HEARTBEAT=0.5)
    return app


@pytest.fixture
def events(app: Flask) -> EventStream:
    return EventStream(app)


class LiveServer:
    """A threaded Werkzeug server on a free port, in a thread of this process."""

    def __init__(self, app: Flask) -> None:
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def serve() -> Iterator[Callable[[Flask], LiveServer]]:
    servers: list[LiveServer] = []

    def start(app: Flask) -> LiveServer:
        server = LiveServer(app)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live(app: Flask, events: EventStream, serve: Callable[[Flask], LiveServer]) -> str:
    """Base URL of *app* (with *events* set up) served over real HTTP."""
    return serve(app).url


@pytest.fixture
def open_stream() -> Iterator[Callable[..., StreamClient]]:
    clients: list[StreamClient] = []

    def open_(url: str, **kwargs: object) -> StreamClient:
        client = StreamClient(url, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield open_
    for client in clients:
        client.close()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` for one test, which may kill and restart it."""
    from .brokers.redis_server import RedisServer  # it imports missing() from here

    with RedisServer(tmp_path) as server:
        yield server
