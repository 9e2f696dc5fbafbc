"""A real Sentinel set-up for tests: a primary, a replica and three Sentinels.

Every process is a ``redis-server`` (Sentinels run it with ``--sentinel``), on
free ports of 127.0.0.1, with no persistence. Failovers are quick: a primary is
judged down after 1 s, by a quorum of 2 of the 3 Sentinels. Every wait is bounded.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from .redis_server import RedisServer, free_port, redis_server_binary

SERVICE = "eventstream-test"


class Sentinels:
    """Three ``redis-server --sentinel`` processes watching :data:`SERVICE`."""

    def __init__(self, workdir: Path, primary_port: int) -> None:
        self.workdir = workdir
        self.primary_port = primary_port
        self.ports = [free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 15.0) -> None:
        for port in self.ports:
            folder = self.workdir / f"sentinel-{port}"
            folder.mkdir()
            conf = folder / "sentinel.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {folder}\n"
                f"logfile {folder / 'sentinel.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self.processes.append(
                subprocess.Popen(
                    [redis_server_binary(), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + timeout
        while not self._all_see_each_other():
            assert time.monotonic() < deadline, "Sentinels did not find each other"
            time.sleep(0.1)

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}"

    def client(self) -> redis.Redis:
        """A client of the first Sentinel."""
        return redis.Redis(port=self.ports[0], socket_timeout=5)

    def primary_port_now(self) -> int:
        """The primary's port, as the first Sentinel says."""
        with redis.Redis(port=self.ports[0], socket_timeout=5) as sentinel:
            _, port = sentinel.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def wait_for_primary(self, port: int, timeout: float = 30.0) -> None:
        """Wait until every Sentinel names the server on *port* primary."""
        deadline = time.monotonic() + timeout
        while True:
            seen = set()
            for sentinel_port in self.ports:
                with redis.Redis(port=sentinel_port, socket_timeout=5) as sentinel:
                    _, found = sentinel.sentinel_get_master_addr_by_name(SERVICE)
                    seen.add(int(found))
            if seen == {port}:
                return
            assert time.monotonic() < deadline, f"primary still {seen}, not {port}"
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait(timeout=10)
        self.processes = []

    def _all_see_each_other(self) -> bool:
        for port in self.ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as sentinel:
                    state = sentinel.sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            if int(state.get("num-other-sentinels", 0)) < 2:
                return False
            if int(state.get("num-slaves", 0)) < 1:
                return False
        return True


class SentinelSetup:
    """A primary, its replica, and the Sentinels watching them."""

    def __init__(self, workdir: Path) -> None:
        (workdir / "a").mkdir()
        (workdir / "b").mkdir()
        self.primary = RedisServer(workdir / "a")
        self.replica = RedisServer(
            workdir / "b", args=("--replicaof", "127.0.0.1", str(self.primary.port))
        )
        self.sentinels = Sentinels(workdir, self.primary.port)

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        with self.replica.client() as client:
            deadline = time.monotonic() + 15
            while client.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not sync"
                time.sleep(0.05)
        self.sentinels.start()

    def server_on(self, port: int) -> RedisServer:
        return self.primary if self.primary.port == port else self.replica

    def other_than(self, port: int) -> int:
        """The port of the server that is not on *port*."""
        return self.replica.port if self.primary.port == port else self.primary.port

    def stop(self) -> None:
        self.sentinels.stop()
        self.primary.kill()
        self.replica.kill()
