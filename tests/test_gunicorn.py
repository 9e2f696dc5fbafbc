"""The gunicorn configuration module's start-up checks, under a real gunicorn.

(Its SIGTERM hook is exercised by ``tests/test_servers.py``.)
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import missing
from .helpers import wait_for
from .test_servers import ROOT, _free_port, stop_server, wait_until_serving

pytestmark = pytest.mark.slow

WARNING = "each run their own memory broker"


class Server:
    """gunicorn (gthread) serving the live app, its log in a file."""

    def __init__(self, workers: int, log: Path) -> None:
        self.port = _free_port()
        self.log = log
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), env.get("PYTHONPATH")])
        )
        command = [
            sys.executable, "-m", "gunicorn",
            "-c", "python:flask_eventstream.gunicorn",
            "--bind", f"127.0.0.1:{self.port}",
            "--worker-class", "gthread",
            "--workers", str(workers),
            "--threads", "4",
            "tests.live_apps.servers_app:app",
        ]  # fmt: skip
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until_serving(
            self.process, f"http://127.0.0.1:{self.port}/count", self.log
        )

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        stop_server(self.process)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[[int], Server]]:
    if importlib.util.find_spec("gunicorn") is None:
        missing("gunicorn")
    servers: list[Server] = []

    def start(workers: int) -> Server:
        server = Server(workers, tmp_path / f"gunicorn-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class TestMemoryBrokerWarning:
    def test_two_workers_on_the_memory_broker_warn_at_start(
        self, gunicorn: Callable[[int], Server]
    ) -> None:
        server = gunicorn(2)
        wait_for(lambda: server.text().count(WARNING) == 2, timeout=30)
        assert "2 workers each run their own memory broker" in server.text()
        assert "EVENTSTREAM_BROKER_URL" in server.text()

    def test_one_worker_does_not_warn(self, gunicorn: Callable[[int], Server]) -> None:
        server = gunicorn(1)  # ready: the worker's post_worker_init has run
        assert WARNING not in server.text()
