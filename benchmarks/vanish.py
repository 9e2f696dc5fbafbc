"""Clients that vanish without a word, for the ``hostile`` scenario of ``run.py``.

An :class:`Island` is a network namespace joined to the host's by a veth pair
(needs root and ``iproute2``). Clients started in it (``python -m
benchmarks.vanish HOST PORT PATH N``: send N stream requests, print ``ready``,
then read nothing) stop existing for the server once :meth:`Island.cut` drops the
link: no FIN, no RST, no ACK comes back, as when a laptop lid is shut.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time


def available() -> bool:
    """Whether this process may make network namespaces (root, ``ip``)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


class Island:
    """A network namespace joined to this one; ``host_ip`` is this side's address."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100_000}"
        self.name = f"esbench-{tag}"
        self._host_if, self._peer_if = f"ebh{tag}", f"ebp{tag}"
        subnet = f"10.251.{os.getpid() % 250}"
        self.host_ip, self.peer_ip = f"{subnet}.1", f"{subnet}.2"
        self._clients: subprocess.Popen[str] | None = None
        self._ip("netns", "add", self.name)
        try:
            self._ip("link", "add", self._host_if, "type", "veth", "peer", "name",
                     self._peer_if, "netns", self.name)  # fmt: skip
            self._ip("addr", "add", f"{self.host_ip}/24", "dev", self._host_if)
            self._ip("link", "set", self._host_if, "up")
            self._ip("-n", self.name, "addr", "add", f"{self.peer_ip}/24", "dev",
                     self._peer_if)  # fmt: skip
            self._ip("-n", self.name, "link", "set", self._peer_if, "up")
        except BaseException:
            self.remove()
            raise

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    def open_streams(self, port: int, path: str, count: int) -> bool:
        """Open *count* streams from the island; whether they all opened."""
        self._ip("-n", self.name, "link", "set", self._peer_if, "up")  # after cut()
        self._clients = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, "-m",
             "benchmarks.vanish", self.host_ip, str(port), path, str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self._clients.stdout is not None
        return self._clients.stdout.readline().strip() == "ready"

    def cut(self) -> None:
        """Drop the link, then end the clients (their goodbyes cannot leave)."""
        self._ip("-n", self.name, "link", "set", self._peer_if, "down")
        if self._clients is not None:
            self._clients.kill()
            self._clients.communicate(timeout=10)

    def remove(self) -> None:
        for args in (["link", "del", self._host_if], ["netns", "del", self.name]):
            subprocess.run(["ip", *args], capture_output=True, timeout=10)


def _hold(host: str, port: int, path: str, count: int) -> None:
    request = f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
    socks = []
    for _ in range(count):
        sock = socket.create_connection((host, port), timeout=30)
        sock.sendall(request)
        socks.append(sock)
    # Not waiting for a first byte: Flask-SSE sends none before an event. The
    # driver waits for the server's subscriber count instead.
    print("ready", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    _hold(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
