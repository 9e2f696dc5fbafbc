"""Shell blocks of the docs, run by bash as written, for the tests that need it.

A command that serves (``flask run``, ``gunicorn``, ``make demo``) is run in a
process group of its own, checked to serve, and ended with the group after the
test: :class:`ShellServer`. Where a page names a fixed address
(``127.0.0.1:5000``), the test gives the server a free port through the server's
own environment variable (``FLASK_RUN_PORT``, ``GUNICORN_CMD_ARGS``) and rewrites
the address in the commands that talk to it: the commands are otherwise the
page's, word for word.
"""

from __future__ import annotations

import http.client
import itertools
import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .helpers import wait_for

#: The address the pages use for a local server.
DOCS_ADDRESS = "127.0.0.1:5000"

_logs = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def commands(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and
    blank lines dropped (a comment is any `` #`` outside quotes, enough here)."""
    joined = block.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        code = line.split("  #", 1)[0].strip()
        if code and not code.startswith("#"):
            found.append(" ".join(code.split()))
    return found


def answers(port: int, path: str = "/") -> bool:
    """Whether an HTTP server on *port* answers a GET (any status)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        connection.getresponse().read()
    except OSError:
        return False
    finally:
        connection.close()
    return True


def run_shell(
    script: str, *, cwd: Path, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run *script* with bash (``set -e``); fail the test if it fails."""
    done = subprocess.run(
        ["bash", "-ec", script],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
    return done


class ShellServer:
    """*script* run by bash in a process group of its own, output in a log file."""

    def __init__(
        self, script: str, *, cwd: Path, env: Mapping[str, str], port: int
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = cwd / f"shell-{next(_logs)}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-ec", script],
                cwd=cwd,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_serving(self, path: str = "/", timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"exited with {self.process.returncode}:\n{self.log()}"
                )
            return answers(self.port, path)

        wait_for(ready, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM the whole group; SIGKILL it if it is not gone in 30 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        try:  # children that outlived bash
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
