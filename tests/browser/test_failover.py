"""The chat example behind nginx on two server processes: the page survives a crash.

Two ``flask run`` processes serve ``examples/chat/app.py`` on one real
``redis-server`` (the Redis broker, same ``SECRET_KEY``, so a session cookie works on
both); a real nginx in front load-balances them, configured as ``docs/deploying.md``
recommends (no proxy buffering, HTTP/1.1 upstream) plus ``proxy_next_upstream
error timeout``, so a refused connection moves on to the other process. Chromium
opens the chat through nginx; the process that holds its event stream is killed
with SIGKILL. The browser reconnects after ``retry`` (C5, C8), nginx passes the new
request to the other process, and that process replays from ``Last-Event-ID`` (C11)
what Redis kept: every message posted in between appears once, no earlier one twice.

nginx adds ``X-Upstream: $upstream_addr`` and ``X-Last-Event-ID`` (the header it
received and passed on) to each response, so the test knows which process holds the
stream and what the browser resumed from. While the browser is disconnected, its
reconnection request is held in the browser (Playwright's router) until the
messages are posted: they can then reach the page only by replay, never live.
Every wait is bounded; every process is ended even when the test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import expect

from ..brokers.redis_server import RedisServer, free_port
from ..conftest import missing
from ..helpers import wait_for
from .conftest import TIMEOUT_MS
from .test_chat import open_chat, say, shown

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Response, Route

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHAT_APP = ROOT / "examples" / "chat" / "app.py"
NGINX = "/usr/sbin/nginx"
#: Seconds a server process may take to answer its first request.
START_TIMEOUT = 20.0


class ChatBackend:
    """``flask run`` serving the chat example on a free port, its output in a file."""

    def __init__(
        self, workdir: Path, env: dict[str, str], port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = workdir / f"backend-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "flask", "--app", str(CHAT_APP),
                    "run", "--host", "127.0.0.1", "--port", str(self.port),
                    "--no-reload",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.address} exited:\n{self.log()}")
        try:
            urllib.request.urlopen(f"http://{self.address}/", timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no clean end for any stream."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


# One process (master_process off), so ending it leaves no worker behind.
NGINX_CONF = """\
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format upstream '"$request" $status upstream=$upstream_addr '
                        'last_event_id="$http_last_event_id"';
    access_log {prefix}/access.log upstream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream chat {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://chat;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The chat's /post compares Origin with its own host: keep the browser's.
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_connect_timeout 1s;
            proxy_read_timeout 1h;
            # A dead process refuses the connection: try the next one (POST too,
            # since nothing was sent to the dead one).
            proxy_next_upstream error timeout;
            # What the test cannot see from Playwright: which process served a
            # response, and the Last-Event-ID the browser sent (Chromium does not
            # report that header to Playwright).
            add_header X-Upstream $upstream_addr always;
            add_header X-Last-Event-ID $http_last_event_id always;
        }}
    }}
}}
"""


class Nginx:
    """A real nginx on a free port in front of *upstreams*, in the foreground."""

    def __init__(self, prefix: Path, upstreams: list[str]) -> None:
        binary = shutil.which("nginx") or NGINX
        self.prefix = prefix
        self.url = f"http://127.0.0.1:{free_port()}"
        conf = prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                prefix=prefix,
                port=self.url.rsplit(":", 1)[1],
                servers="\n".join(f"        server {up};" for up in upstreams),
            )
        )
        self.process = subprocess.Popen(
            [
                binary,
                "-p",
                str(prefix),
                "-e",
                str(prefix / "error.log"),
                "-c",
                str(conf),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"nginx exited:\n{self.log()}")
        try:
            urllib.request.urlopen(f"{self.url}/", timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        logs = [self.prefix / "access.log", self.prefix / "error.log"]
        return "\n".join(p.read_text(errors="replace") for p in logs if p.exists())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def pump_until(page: Page, condition: Callable[[], bool], what: str) -> None:
    """Let Playwright deliver its events until *condition()* holds (bounded)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        page.wait_for_timeout(20)


#: Records ``[lastEventId, data]`` of every message the page's EventSource fires
#: (``source`` is the chat page's own global), beside the page's own handler.
RECORD_MESSAGES = """() => {
    window.seen = [];
    source.addEventListener("message", (e) => {
        window.seen.push([e.lastEventId, e.data]);
    });
}"""


#: The chat page's event stream URL (``/stream/chat``).
STREAM = re.compile(r"/stream(?:/|\?|$)")


def is_stream(response: Response) -> bool:
    return STREAM.search(response.url) is not None


def upstream(response: Response) -> str:
    """The process that served *response*: after a refused try, nginx's
    ``$upstream_addr`` lists each server it tried, the last one served."""
    return response.headers["x-upstream"].split(", ")[-1]


def seen(page: Page) -> list[tuple[str, str]]:
    return [(event_id, data) for event_id, data in page.evaluate("window.seen")]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def backends(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[ChatBackend]]:
    """Two chat processes on one Redis, one key prefix and one ``SECRET_KEY``."""
    env = dict(
        os.environ,
        SECRET_KEY=uuid.uuid4().hex,
        FLASK_EVENTSTREAM_BROKER_URL=redis_server.url,
        FLASK_EVENTSTREAM_REDIS_PREFIX=f"failover-{uuid.uuid4().hex[:12]}:",
        FLASK_EVENTSTREAM_RETRY="500",  # reconnect after 0.5 s, not 3 s (C10)
        FLASK_EVENTSTREAM_HEARTBEAT="0.5",
        PYTHONUNBUFFERED="1",
    )
    started: list[ChatBackend] = []
    try:
        for _ in range(2):
            started.append(ChatBackend(tmp_path, env))
        for backend in started:
            wait_for(backend.answers, timeout=START_TIMEOUT)
        yield started
    finally:
        for backend in started:
            backend.stop()
        for backend in started:
            print(f"--- {backend.address} ---\n{backend.log()}")  # shown on failure


@pytest.fixture
def nginx(tmp_path: Path, backends: list[ChatBackend]) -> Iterator[Nginx]:
    if not (shutil.which("nginx") or os.access(NGINX, os.X_OK)):
        missing("nginx")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    proxy = Nginx(prefix, [backend.address for backend in backends])
    try:
        wait_for(proxy.answers, timeout=START_TIMEOUT)
        yield proxy
    finally:
        proxy.stop()
        print(f"--- nginx ---\n{proxy.log()}")  # shown on failure


def test_page_resumes_on_the_other_process_when_its_process_is_killed(
    nginx: Nginx,
    backends: list[ChatBackend],
    new_context: Callable[[], BrowserContext],
) -> None:
    ada = open_chat(new_context(), nginx.url, "ada")
    # Reload, to know the response of the stream this page holds (the stream of
    # the page before the login redirect was another one).
    with ada.expect_response(is_stream, timeout=TIMEOUT_MS) as first:
        ada.reload()
    expect(ada.locator("#status")).to_have_text("live", timeout=TIMEOUT_MS)
    ada.evaluate(RECORD_MESSAGES)
    say(ada, "before one")
    say(ada, "before two")
    shown(ada, "ada: before one", "ada: before two")

    (victim,) = [b for b in backends if b.address == upstream(first.value)]
    (survivor,) = [b for b in backends if b is not victim]
    last_before = seen(ada)[-1][0]
    assert last_before, "the chat's events carry ids (needed for replay)"

    held: list[Route] = []
    ada.route(STREAM, lambda route: held.append(route))
    victim.kill()
    expect(ada.locator("#status")).to_have_text("reconnecting", timeout=TIMEOUT_MS)
    pump_until(ada, lambda: bool(held), "the browser's reconnection request")
    # The page has no stream now: these reach it only by replay from Redis.
    say(ada, "during one")
    say(ada, "during two")
    with ada.expect_response(is_stream, timeout=TIMEOUT_MS) as resumed:
        for route in held:
            route.continue_()
    ada.unroute(STREAM)
    # The badge counts what the other process replayed.
    expect(ada.locator("#status")).to_have_text("replayed 2 missed", timeout=TIMEOUT_MS)
    say(ada, "after")
    lines = ["before one", "before two", "during one", "during two", "after"]
    shown(ada, *(f"ada: {line}" for line in lines))
    # Once each, in order, each id once, across both processes.
    assert [data.split("] ", 1)[1] for _, data in seen(ada)] == [
        f"ada: {line}" for line in lines
    ]
    ids = [event_id for event_id, _ in seen(ada)]
    assert len(set(ids)) == len(ids)
    # The stream was resumed through nginx by the process still alive.
    assert resumed.value.status == 200
    assert upstream(resumed.value) == survivor.address
    # The browser sent the id of the last event it had seen (C11), through nginx.
    assert resumed.value.headers.get("x-last-event-id") == last_before
    assert victim.process.returncode == -signal.SIGKILL
