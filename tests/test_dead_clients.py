"""Dead, stalled and flooded clients, on real servers: what each holds, and how long.

Gunicorn (``gevent`` and ``gthread`` workers) runs ``tests/live_apps/servers_app.py``
in a subprocess; Werkzeug's threaded server runs in this process. A client that
vanishes does so for real: it runs in a network namespace joined to this one by a
veth pair, whose link is then cut, so the server hears nothing at all (root and
``iproute2`` needed; in CI their absence fails the test). Bounds are generous
multiples of the heartbeat: before these bounds existed a vanished client was
held for about 15 minutes, and a client cut off for not reading until it closed.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flask_eventstream.brokers._subscription import TOO_SLOW

from .conftest import missing
from .helpers import StreamClient, wait_for
from .test_servers import ROOT, Gunicorn, _free_port, gunicorn  # noqa: F401

pytestmark = pytest.mark.slow

HEARTBEAT = 2.0
#: A vanished client must be freed within two heartbeats; the rest is slack for
#: a loaded machine.
VANISHED_BOUND = 2 * HEARTBEAT + 4

SERVERS = pytest.mark.parametrize("server", ["gevent", "gthread", "werkzeug"])

# Run by a client inside the network namespace: open the stream, say so once the
# first bytes came, then keep reading (a healthy client) until killed.
_CLIENT = """\
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
sock = socket.create_connection((host, port), timeout=30)
sock.sendall(f"GET /stream HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n".encode())
data = b""
while b"\\r\\n\\r\\n" not in data:
    data += sock.recv(65536)
print("open", flush=True)
while sock.recv(65536):
    pass
"""


class Island:
    """A network namespace joined to this one by a veth pair, whose link can be cut.

    ``host_ip`` is this side's address (servers bind to it); processes started
    with :meth:`run` live on the other side.
    """

    _made = itertools.count()

    def __init__(self) -> None:
        index = next(self._made)
        tag = f"{os.getpid() % 100_000}x{index}"
        self.name = f"es13-{tag}"
        self._host_if, self._peer_if = f"esh{tag}", f"esp{tag}"
        subnet = f"10.{200 + index % 50}.{os.getpid() % 250}"
        self.host_ip, self.peer_ip = f"{subnet}.1", f"{subnet}.2"
        self._ip("netns", "add", self.name)
        try:
            self._ip(
                "link", "add", self._host_if, "type", "veth",
                "peer", "name", self._peer_if, "netns", self.name,
            )  # fmt: skip
            self._ip("addr", "add", f"{self.host_ip}/24", "dev", self._host_if)
            self._ip("link", "set", self._host_if, "up")
            self._ip("-n", self.name, "addr", "add", f"{self.peer_ip}/24", "dev",
                     self._peer_if)  # fmt: skip
            self._ip("-n", self.name, "link", "set", self._peer_if, "up")
            self._ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    def run(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv],
            stdout=subprocess.PIPE,
            text=True,
        )

    def cut(self) -> None:
        """Drop the link: from now on, nothing crosses in either direction."""
        self._ip("-n", self.name, "link", "set", self._peer_if, "down")

    def remove(self) -> None:
        # The pair first: a socket still closing in the namespace keeps it alive.
        for args in (["link", "del", self._host_if], ["netns", "del", self.name]):
            subprocess.run(["ip", *args], capture_output=True, timeout=10)


@pytest.fixture
def island() -> Iterator[Island]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing("root and iproute2 (network namespaces)")
    try:
        made = Island()
    except subprocess.CalledProcessError as exc:
        missing(f"network namespaces ({exc.stderr.decode().strip()})")
    yield made
    made.remove()


class Served:
    """One server of a kind, with what its streams hold (``stats()``)."""

    def __init__(
        self, kind: str, url: str, stats: Callable[[], dict[str, Any]]
    ) -> None:
        self.kind = kind
        self.url = url
        self.stats = stats

    def publish(self, count: int, size: int = 0) -> None:
        request = urllib.request.Request(
            f"{self.url}/burst?count={count}&size={size}", data=b"", method="POST"
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.read().decode() == str(count)


class Werkzeug:
    """Werkzeug's threaded development server running the live app, in a
    subprocess (so that the test's clients do not share its interpreter)."""

    def __init__(self, host: str, environ: dict[str, str]) -> None:
        port = _free_port()
        self.url = f"http://{host}:{port}"
        env = dict(os.environ, **environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), env.get("PYTHONPATH")])
        )
        code = (
            "import sys; from werkzeug.serving import run_simple; "
            "from tests.live_apps.servers_app import app; "
            "run_simple(sys.argv[1], int(sys.argv[2]), app, threaded=True)"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, host, str(port)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._ready, timeout=30)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"werkzeug exited with {self.process.returncode}")
        try:
            urllib.request.urlopen(f"{self.url}/count", timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def serve(
    gunicorn: Callable[..., Gunicorn],  # noqa: F811
) -> Iterator[Callable[..., Served]]:
    """Starts a server: ``serve(kind, host=..., heartbeat=..., buffer=...)``."""
    werkzeugs: list[Werkzeug] = []

    def start(
        kind: str,
        *,
        host: str = "127.0.0.1",
        heartbeat: float = HEARTBEAT,
        buffer: int = 1000,
        buffer_bytes: int | None = None,
    ) -> Served:
        environ = {"EVENTSTREAM_BUFFER": str(buffer)}
        if buffer_bytes is not None:
            environ["EVENTSTREAM_BUFFER_BYTES"] = str(buffer_bytes)
        server: Werkzeug | Gunicorn
        if kind == "werkzeug":
            environ["EVENTSTREAM_HEARTBEAT"] = str(heartbeat)
            server = Werkzeug(host, environ)
            werkzeugs.append(server)
        else:
            server = gunicorn(kind, heartbeat=heartbeat, host=host, environ=environ)
        url = server.url

        def stats() -> dict[str, Any]:
            with urllib.request.urlopen(f"{url}/stats", timeout=5) as response:
                found: dict[str, Any] = json.load(response)
                return found

        return Served(kind, url, stats)

    yield start
    for server in werkzeugs:
        server.stop()


def _wait_until(
    served: Served, holds: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> None:
    """Wait until ``holds(served.stats())``; fail with the last stats."""
    deadline = time.monotonic() + timeout
    while not holds(stats := served.stats()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {stats}")
        time.sleep(0.05)


def _holds_nothing_more(
    served: Served, before: dict[str, Any], *, streams: int = 0
) -> Callable[[dict[str, Any]], bool]:
    """Whether *served* holds *streams* streams, and no more fds, greenlets and
    (on Werkzeug, a thread per request) threads than *before* and those need.

    A stream holds an fd and a greenlet or thread; the first one also starts the
    heartbeat ticker (a greenlet or thread). gthread's pool keeps its threads.
    """
    extra = streams + (1 if streams else 0)

    def holds(now: dict[str, Any]) -> bool:
        return (
            now["subscribers"] == now["streams"] == streams
            and now["fds"] <= before["fds"] + streams
            and now["greenlets"] <= before["greenlets"] + extra
            and (
                served.kind != "werkzeug" or now["threads"] <= before["threads"] + extra
            )
        )

    return holds


@SERVERS
def test_a_client_that_vanished_is_freed_within_two_heartbeats(
    serve: Callable[..., Served], island: Island, server: str
) -> None:
    served = serve(server, host=island.host_ip)
    before = served.stats()
    port = served.url.rsplit(":", 1)[1]
    client = island.run(sys.executable, "-c", _CLIENT, island.host_ip, port)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "open"
        wait_for(lambda: served.stats()["subscribers"] == 1, timeout=10)
        island.cut()  # no FIN, no RST, no ACK will ever come back
    finally:
        client.kill()
        client.communicate(timeout=10)
    _wait_until(served, _holds_nothing_more(served, before), timeout=VANISHED_BOUND)


def _open_raw(url: str) -> socket.socket:
    """Opens a stream over a raw socket with a tiny receive window: the stream
    stalls as soon as its client stops reading."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def _read_until(sock: socket.socket, last: bytes, got: list[bytes]) -> None:
    """Read *sock* as fast as it can until *last* came; put what came in *got*."""
    sock.settimeout(30)
    received = bytearray()
    while last not in received[-100_000:]:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        received += chunk
    got.append(bytes(received))


@SERVERS
def test_a_client_cut_off_for_not_reading_is_freed_at_once(
    serve: Callable[..., Served], server: str
) -> None:
    """Its write is ended: thread or greenlet, fd, slot and memory come back.

    The healthy client reads a 12.8 MB burst: the byte limit is set above it, so
    that on a busy machine it is not cut off for lagging (by bytes, whatever
    its progress) while the stalled ones are (by count, with no progress).
    """
    served = serve(server, heartbeat=30, buffer=100, buffer_bytes=64 * 2**20)
    served.publish(1000, size=32_000)  # fills the history: memory at its level
    before = served.stats()
    stuck = [_open_raw(served.url) for _ in range(5)]  # gthread: 8 threads
    healthy = _open_raw(served.url)
    got: list[bytes] = []
    reading = threading.Thread(target=_read_until, args=(healthy, b"data: 399 ", got))
    try:
        _wait_until(served, lambda now: now["subscribers"] == 6)
        reading.start()
        # Past what the kernel buffers (MBs on loopback), and 100 events behind.
        served.publish(400, size=32_000)
        # Cut off at once, not when the clients close: they still hold their end.
        _wait_until(served, lambda now: now["subscribers"] == now["streams"] == 1)
        _wait_until(served, _holds_nothing_more(served, before, streams=1))
        assert served.stats()["rss"] < before["rss"] + 32 * 2**20
        reading.join(timeout=60)
        assert got, "the healthy client did not get the last event"
        assert TOO_SLOW not in got[0]
    finally:
        healthy.close()
        for sock in stuck:
            sock.close()


@pytest.mark.parametrize("server", ["gevent", "gthread"])
def test_a_burst_in_one_request_reaches_readers_that_keep_up(
    serve: Callable[..., Served], server: str
) -> None:
    """Ten times EVENTSTREAM_BUFFER events, published in one loop: none cut off."""
    served = serve(server, heartbeat=30, buffer=1000)
    count = 10_000
    clients = [StreamClient(f"{served.url}/stream", timeout=60) for _ in range(3)]
    wait_for(lambda: served.stats()["subscribers"] == 3, timeout=10)
    errors: list[BaseException] = []

    def read(client: StreamClient) -> None:
        try:
            client.read_events(count, timeout=90)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read, args=(c,)) for c in clients]
    for reader in readers:
        reader.start()
    served.publish(count)
    for reader in readers:
        reader.join(timeout=120)
    try:
        assert not errors, errors[0]
        for client in clients:
            assert [e.data for e in client.events] == [f"{n} " for n in range(count)]
            assert TOO_SLOW not in client.raw
        assert served.stats()["subscribers"] == 3
    finally:
        for client in clients:
            client.close()


@SERVERS
def test_heartbeats_are_at_most_one_interval_apart_on_the_wire(
    serve: Callable[..., Served], server: str
) -> None:
    """The first within one heartbeat of opening, each next within one of the last."""
    served = serve(server, heartbeat=HEARTBEAT)
    opened = time.monotonic()
    client = StreamClient(f"{served.url}/stream", timeout=10)
    arrivals: list[float] = []
    try:
        client.read_until(lambda c: len(c.raw) > 0)  # the preamble
        while time.monotonic() - opened < 5 * HEARTBEAT:
            if b"heartbeat" in client.read_some():
                arrivals.append(time.monotonic())
    finally:
        client.close()
    gaps = [b - a for a, b in zip([opened, *arrivals], arrivals, strict=False)]
    assert len(gaps) >= 4, gaps
    # Slack for a loaded machine; they used to come up to two intervals apart.
    assert max(gaps) < 1.3 * HEARTBEAT, gaps
    assert min(gaps) > 0.5 * HEARTBEAT, gaps


@pytest.mark.skipif(
    not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's"
)
@pytest.mark.parametrize(
    ("config", "milliseconds"),
    [
        ({"EVENTSTREAM_HEARTBEAT": 10}, 5000),  # the default: half the heartbeat
        ({"EVENTSTREAM_HEARTBEAT": 0.5}, 1000),  # ... at least 1 s
        ({"EVENTSTREAM_HEARTBEAT": 10, "EVENTSTREAM_CLIENT_TIMEOUT": 3}, 3000),
    ],
    ids=["half-the-heartbeat", "at-least-1s", "configured"],
)
def test_client_timeout_bounds_unacknowledged_bytes_as_documented(
    config: dict[str, float], milliseconds: int
) -> None:
    """docs/configuration.md: ``EVENTSTREAM_CLIENT_TIMEOUT`` is set on the stream's
    socket (``TCP_USER_TIMEOUT``); ``None`` is half the heartbeat, at least 1 s."""
    from flask import Flask

    from flask_eventstream import EventStream

    from .conftest import LiveServer

    app = Flask(__name__)
    app.config.update(TESTING=True, **config)
    events = EventStream(app)
    sockets: list[socket.socket] = []
    inner = app.wsgi_app

    def keep_socket(environ: dict[str, Any], start_response: Any) -> Any:
        sockets.append(environ["werkzeug.socket"])
        return inner(environ, start_response)

    app.wsgi_app = keep_socket  # type: ignore[method-assign]
    server = LiveServer(app)
    stream = StreamClient(f"{server.url}/stream/news")
    try:
        stream.read_until(lambda s: len(s.raw) > 0)
        (sock,) = sockets
        set_to = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        assert set_to == milliseconds
    finally:
        stream.close()
        events.broker().close()
        server.stop()
