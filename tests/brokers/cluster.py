"""A real Redis Cluster for tests: three primaries with one replica each.

Six ``redis-server --cluster-enabled yes`` processes on free ports of 127.0.0.1
(each port's cluster bus, port + 10000, free too), no persistence, joined by
``redis-cli --cluster create ... --cluster-replicas 1``. A node is judged down
after 1 s, so a replica takes over a killed primary within a few seconds. Every
wait is bounded.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from ..conftest import missing
from .redis_server import RedisServer

_NODE_TIMEOUT_MS = 1000


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_ports(count: int) -> list[int]:
    """*count* free ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 50000)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


def redis_cli_binary() -> str:
    found = shutil.which("redis-cli") or (
        "/usr/bin/redis-cli" if Path("/usr/bin/redis-cli").exists() else None
    )
    if found is None:
        missing("redis-cli")
        raise AssertionError("unreachable")
    return found


class Cluster:
    """Six cluster nodes: three primaries (the first three ports at creation),
    each with one replica."""

    def __init__(self, workdir: Path) -> None:
        self.cli = redis_cli_binary()
        self.ports = cluster_ports(6)
        self.nodes: dict[int, RedisServer] = {}
        for port in self.ports:
            folder = workdir / f"node-{port}"
            folder.mkdir()
            self.nodes[port] = RedisServer(
                folder,
                port,
                args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(folder / "nodes.conf"),
                    "--cluster-node-timeout", str(_NODE_TIMEOUT_MS),
                    # A replica takes over however long it was cut off.
                    "--cluster-replica-validity-factor", "0",
                ),
            )  # fmt: skip

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes.values():
            node.start()
        done = subprocess.run(
            [
                self.cli, "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", "1", "--cluster-yes",
            ],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        self.wait_ok(timeout)
        deadline = time.monotonic() + timeout
        while not self._replicas_synced():
            assert time.monotonic() < deadline, "the replicas did not sync"
            time.sleep(0.1)

    def _replicas_synced(self) -> bool:
        synced = 0
        for port in self.alive():
            with self.client(port) as client:
                info = client.info("replication")
            if info.get("role") == "slave":
                if info.get("master_link_status") != "up":
                    return False
                synced += 1
        return synced == 3

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def alive(self) -> list[int]:
        return [
            port
            for port, node in self.nodes.items()
            if node.process is not None and node.process.poll() is None
        ]

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Wait until every live node says ``cluster_state:ok`` and agrees on who
        serves every slot, with three primaries each having a replica
        (or fewer, while a killed one is down)."""
        deadline = time.monotonic() + timeout
        while not self._settled():
            assert time.monotonic() < deadline, "the cluster did not settle"
            time.sleep(0.1)

    def _settled(self) -> bool:
        views = set()
        for port in self.alive():
            try:
                with self.client(port) as client:
                    if client.cluster("info")["cluster_state"] != "ok":
                        return False
                    views.add(
                        tuple(sorted((s[0], s[2][1]) for s in self._slots(client)))
                    )
            except redis.RedisError:
                return False
        return len(views) == 1

    @staticmethod
    def _slots(client: redis.Redis) -> list[list[object]]:
        reply = client.execute_command("CLUSTER SLOTS")
        return [
            [int(start), int(end), [host, int(port)]]
            for start, end, (host, port, *_), *_ in reply
        ]

    def primary_of(self, key: str) -> int:
        """The port of the primary that serves *key*'s slot."""
        port = self.alive()[0]
        with self.client(port) as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, (_, node_port) in self._slots(client):  # type: ignore[misc]
                if start <= slot <= end:
                    return int(node_port)
        raise AssertionError(f"no node serves slot {slot}")

    def replica_of(self, primary: int) -> int:
        with self.client(primary) as client:
            node_id = client.execute_command("CLUSTER MYID").decode()
        for port in self.alive():
            with self.client(port) as client:
                info = client.info("replication")
                if info.get("role") == "slave" and info.get("master_port") == primary:
                    return port
        raise AssertionError(f"no replica of {primary} ({node_id})")

    def primaries(self) -> list[int]:
        """The ports of the primaries now."""
        with self.client(self.alive()[0]) as client:
            return sorted({int(port) for _, _, (_, port) in self._slots(client)})  # type: ignore[misc]

    def move_slot(self, key: str, source: int, target: int) -> None:
        """Move *key*'s slot from the primary on *source* to the one on *target*
        as ``redis-cli --cluster reshard`` does: mark it migrating and importing,
        ``MIGRATE`` its keys one at a time (a moment apart, so that commands meet
        the slot half moved), then give it to *target* everywhere."""
        with self.client(source) as src, self.client(target) as dst:
            slot = int(src.execute_command("CLUSTER KEYSLOT", key))
            src_id = src.execute_command("CLUSTER MYID").decode()
            dst_id = dst.execute_command("CLUSTER MYID").decode()
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 1):
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys
                )
                time.sleep(0.05)
            dst.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
            src.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        for port in self.primaries():
            with self.client(port) as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.kill()
