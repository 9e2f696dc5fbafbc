"""The stream endpoint under production servers, over real HTTP.

Gunicorn runs ``tests/live_apps/servers_app.py`` in a subprocess with the ``gevent``
worker and with the ``gthread`` worker (Werkzeug's threaded server is covered by
the other test files); one test puts a real nginx in front, configured as
``docs/deploying.md`` recommends. No timing assertions: every wait is bounded, and
a test fails only when something does not arrive at all.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_eventstream import Event, EventParser

from .conftest import missing
from .helpers import StreamClient, wait_for

ROOT = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


def wait_until_serving(
    process: subprocess.Popen[bytes], url: str, log: Path | None = None
) -> None:
    """Wait until *url* answers (a server *process* started); fail at once if the
    process exits, with its *log* if it has one."""

    def ready() -> bool:
        if process.poll() is not None:
            said = f": {log.read_text()}" if log is not None else ""
            raise AssertionError(f"server exited with {process.returncode}{said}")
        try:
            _get(url, timeout=1)
        except OSError:
            return False
        return True

    wait_for(ready, timeout=30)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server *process* and wait; SIGKILL it if it takes over 30 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _publish(base: str, data: str, channel: str = "sse") -> str:
    request = urllib.request.Request(
        f"{base}/publish?channel={channel}", data=data.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def _raise_fd_limit(wanted: int) -> None:
    """Let this process (and the servers it starts) open *wanted* sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


class Gunicorn:
    """``gunicorn`` serving the live app on a free port, one worker.

    It uses ``flask_eventstream.gunicorn`` as its configuration module, as
    ``docs/deploying.md`` recommends, so SIGTERM ends open streams cleanly.
    """

    def __init__(
        self,
        worker: str,
        *,
        heartbeat: float = 0.5,
        host: str = "127.0.0.1",
        environ: dict[str, str] | None = None,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://{host}:{self.port}"
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:flask_eventstream.gunicorn",
            "--bind",
            f"{host}:{self.port}",
            "--workers",
            "1",
            "--worker-class",
            worker,
            # Long enough that a test passing proves the streams ended by themselves.
            "--graceful-timeout",
            "60",
            "--log-level",
            "warning",
        ]
        if worker == "gevent":
            args += ["--worker-connections", "2000"]
        else:
            args += ["--threads", "8"]
        env = dict(os.environ, EVENTSTREAM_HEARTBEAT=str(heartbeat), **environ or {})
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), env.get("PYTHONPATH")])
        )
        self.process = subprocess.Popen(
            [*args, "tests.live_apps.servers_app:app"], cwd=ROOT, env=env
        )
        wait_until_serving(self.process, f"{self.url}/count")

    def count(self) -> int:
        return int(_get(f"{self.url}/count"))

    def fds(self) -> int:
        return int(_get(f"{self.url}/fds"))

    def publish(self, data: str, channel: str = "sse") -> str:
        return _publish(self.url, data, channel)

    def stop(self) -> None:
        stop_server(self.process)


@pytest.fixture
def gunicorn() -> Iterator[Callable[..., Gunicorn]]:
    if importlib.util.find_spec("gunicorn") is None:
        missing("gunicorn")
    if importlib.util.find_spec("gevent") is None:
        missing("gevent")
    servers: list[Gunicorn] = []

    def start(worker: str, **kwargs: Any) -> Gunicorn:
        server = Gunicorn(worker, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


WORKERS = pytest.mark.parametrize("worker", ["gevent", "gthread"])


@WORKERS
def test_two_subscribers_receive_every_event_in_order(
    gunicorn: Callable[..., Gunicorn],
    open_stream: Callable[..., StreamClient],
    worker: str,
) -> None:
    server = gunicorn(worker)
    clients = [open_stream(f"{server.url}/stream?channel=news") for _ in range(2)]
    wait_for(lambda: server.count() == 2, timeout=10)
    sent = [f"event {n}" for n in range(20)]
    for data in sent:
        server.publish(data, channel="news")
    for client in clients:
        assert client.status == 200
        assert client.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert [e.data for e in client.read_events(len(sent), timeout=10)] == sent


@WORKERS
def test_closed_connections_are_cleaned_up(
    gunicorn: Callable[..., Gunicorn],
    open_stream: Callable[..., StreamClient],
    worker: str,
) -> None:
    """A client that goes away is unsubscribed within about a heartbeat (O9)."""
    server = gunicorn(worker, heartbeat=0.3)
    fds_before = server.fds()
    clients = [open_stream(f"{server.url}/stream") for _ in range(5)]
    wait_for(lambda: server.count() == 5, timeout=10)
    for client in clients:
        client.close()
    wait_for(lambda: server.count() == 0, timeout=15)
    wait_for(lambda: server.fds() <= fds_before, timeout=15)


@WORKERS
def test_the_worker_freezes_what_it_loaded_at_start(
    gunicorn: Callable[..., Gunicorn], worker: str
) -> None:
    """The config module's hook calls gc.freeze() (short full collections)."""
    server = gunicorn(worker)
    assert int(_get(f"{server.url}/gc-frozen")) > 10_000  # modules, the app


@WORKERS
def test_sigterm_ends_open_streams_cleanly(
    gunicorn: Callable[..., Gunicorn],
    open_stream: Callable[..., StreamClient],
    worker: str,
) -> None:
    """SIGTERM ends each body with its final chunk, so browsers reconnect (S11)."""
    server = gunicorn(worker, heartbeat=30)
    clients = [open_stream(f"{server.url}/stream", timeout=20) for _ in range(3)]
    wait_for(lambda: server.count() == 3, timeout=10)
    server.publish("before shutdown")
    server.process.send_signal(signal.SIGTERM)
    for client in clients:
        # http.client raises IncompleteRead if the chunked body is cut off.
        client.read_to_end(timeout=20)
        assert [e.data for e in client.events] == ["before shutdown"]
        assert b": eventstream: this server is shutting down" in client.raw
    assert server.process.wait(timeout=30) == 0


# 1,000 subscribers, read by one asyncio client over raw sockets.


class _ChunkedBody:
    """Decodes an HTTP/1.1 chunked body incrementally."""

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0  # bytes of the current chunk still to come, then CRLF
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while self._buffer and not self.ended:
            if self._left:
                piece = self._buffer[: self._left]
                out += piece
                self._left -= len(piece)
                self._buffer = self._buffer[len(piece) :]
                continue
            line, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                break
            if not line:  # the CRLF after a chunk's data
                self._buffer = rest
                continue
            size = int(line.split(b";")[0], 16)
            self._buffer = rest
            if size == 0:
                self.ended = True
            self._left = size
        return bytes(out)


async def _subscribe_and_read(
    port: int, path: str, count: int, subscribed: asyncio.Queue[None]
) -> list[Event]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"chunked" in head.lower(), head
        subscribed.put_nowait(None)
        body, parser = _ChunkedBody(), EventParser()
        events: list[Event] = []
        while len(events) < count and not body.ended:
            data = await reader.read(65536)
            if not data:
                break
            events += parser.feed(body.feed(data))
        return events
    finally:
        writer.close()


async def _fan_out(
    server: Gunicorn, subscribers: int, sent: list[str]
) -> list[list[str]]:
    subscribed: asyncio.Queue[None] = asyncio.Queue()
    readers = [
        asyncio.create_task(
            _subscribe_and_read(
                server.port, "/stream?channel=many", len(sent), subscribed
            )
        )
        for _ in range(subscribers)
    ]
    for _ in range(subscribers):
        await asyncio.wait_for(subscribed.get(), timeout=60)
    await asyncio.to_thread(wait_for, lambda: server.count() == subscribers, 30)
    for data in sent:
        await asyncio.to_thread(server.publish, data, "many")
    results = await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
    return [[event.data for event in events] for events in results]


def test_a_thousand_subscribers_on_gevent_all_receive_every_event(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    _raise_fd_limit(4096)
    server = gunicorn("gevent", heartbeat=5)
    sent = ["first", "second", "third"]
    received = asyncio.run(_fan_out(server, 1000, sent))
    assert len(received) == 1000
    assert all(got == sent for got in received)
    wait_for(lambda: server.count() == 0, timeout=30)


# nginx in front, as docs/deploying.md recommends.

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream app {{ server 127.0.0.1:{upstream}; }}
    server {{
        listen 127.0.0.1:{port};
        location /stream {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
        }}
        location / {{
            proxy_pass http://app;
        }}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path: Path, gunicorn: Callable[..., Gunicorn]) -> Iterator[str]:
    """Base URL of nginx proxying to the live app on gunicorn gevent."""
    if not (shutil.which("nginx") or os.access(NGINX, os.X_OK)):
        missing("nginx")
    upstream = gunicorn("gevent", heartbeat=60)
    port = _free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(prefix=tmp_path, upstream=upstream.port, port=port)
    )
    binary = shutil.which("nginx") or NGINX
    process = subprocess.Popen(
        [binary, "-p", str(tmp_path), "-e", "stderr", "-c", str(conf)]
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited with {process.returncode}")
        try:
            _get(f"{url}/count", timeout=1)
        except OSError:
            return False
        return True

    try:
        wait_for(ready, timeout=15)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_nginx_passes_each_event_through_at_once(
    nginx: str, open_stream: Callable[..., StreamClient]
) -> None:
    """Each event arrives long before the next heartbeat (60 s) could push it (O1)."""
    client = open_stream(f"{nginx}/stream?channel=proxied", timeout=10)
    assert client.status == 200
    assert client.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    wait_for(lambda: _get(f"{nginx}/count") == "1", timeout=10)
    for n in range(3):
        _publish(nginx, f"through nginx {n}", channel="proxied")
        events = client.read_events(n + 1, timeout=10)
        assert events[n].data == f"through nginx {n}"
