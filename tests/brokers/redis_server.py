"""A real ``redis-server`` process for tests: start on a free port, kill, restart.

No persistence (``--save "" --appendonly no``): a restart loses every key, as a
crash of an unpersisted Redis would. Every wait is bounded.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from ..conftest import missing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The system ``redis-server`` (``make test`` installs it), or fail/skip."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        missing("redis-server")
        raise AssertionError("unreachable")  # missing() fails or skips
    return found


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 and a unix socket in *workdir*."""

    def __init__(
        self, workdir: Path, port: int | None = None, *, args: tuple[str, ...] = ()
    ) -> None:
        self.binary = redis_server_binary()
        self.workdir = workdir
        self.port = port or free_port()
        self.socket_path = workdir / "redis.sock"
        self.args = args  # more command-line options (``--replicaof``, ...)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def client(self) -> redis.Redis:
        """A plain client for inspecting the server (not counted by the tests)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700",
                "--dir", str(self.workdir),
                "--logfile", str(self.workdir / "redis.log"),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                if self.process.poll() is not None:
                    log = (self.workdir / "redis.log").read_text(errors="replace")
                    raise AssertionError(
                        f"redis-server exited at start:\n{log[-2000:]}"
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"redis-server did not answer in {timeout}s")
                time.sleep(0.02)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL, like a crash); wait for it to go."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def clients(self, name_prefix: str) -> list[dict[str, str]]:
        """``CLIENT LIST`` entries whose name starts with *name_prefix*."""
        with self.client() as client:
            return [
                entry
                for entry in client.client_list()
                if entry.get("name", "").startswith(name_prefix)
            ]


_PUBLISH = """
import sys
from flask_eventstream import Event
from flask_eventstream.brokers.redis import RedisBroker

url, prefix, channel, data = sys.argv[1:]
with RedisBroker.from_url(url, key_prefix=prefix) as broker:
    print(broker.publish(channel, Event(data)).id)
"""


def publish_from_subprocess(url: str, prefix: str, channel: str, data: str) -> str:
    """Publish one event from a separate Python process; return its id."""
    done = subprocess.run(
        [sys.executable, "-c", _PUBLISH, url, prefix, channel, data],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
