"""The cluster listener's connections: one per primary, in sharded pub/sub mode.

:class:`ShardLinks` holds a connection to each primary that serves a channel
read here, subscribed (``SSUBSCRIBE``) to exactly the shard channels wanted
there, and waits on all of them at once (``select``, cooperative under gevent).
A node whose connection fails is dropped and tried again after a backoff of its
own; the others are read on. Owned by the listener's thread; :meth:`interrupt`
may be called from any thread.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from redis import Connection, SSLConnection
from redis.exceptions import RedisError

from ._listener import BACKOFF_CAP, BACKOFF_FIRST

logger = logging.getLogger(__name__)


@dataclass
class _Link:
    """The connection to one primary."""

    connection: Any  # a redis-py Connection, whose methods are untyped
    #: Shard channels subscribed (confirmed by the node).
    subscribed: set[str] = field(default_factory=set)


class ShardLinks:
    """Connections to primaries in sharded pub/sub mode (see the module docstring).

    :param node_options: what a connection to a node is made with (credentials,
        TLS, timeouts), beside the node's host and port.
    """

    def __init__(self, node_options: dict[str, Any]) -> None:
        self._node_options = node_options
        # Node name ("host:port") -> the connection to it.
        self._links: dict[str, _Link] = {}
        #: Announcements read, not yet handled (payloads, in arrival order).
        self.stash: list[bytes] = []
        #: Set when a node unsubscribed us (a slot moved away from it) or failed:
        #: where slots are served is to be asked again. The listener clears it.
        self.stale = True
        # Nodes that failed -> (when to try again, a monotonic time; failures
        # in a row).
        self._down: dict[str, tuple[float, int]] = {}
        # A wait also waits on this socket pair, so interrupt() ends it without
        # a round trip to Redis.
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)

    def interrupt(self) -> None:
        """End a wait now (from any thread)."""
        try:
            self._wake_write.send(b"w")
        except OSError:
            pass  # the buffer is full (a wake-up is pending), or closed

    def retry_at(self) -> float | None:
        """When the next failed node is to be tried again (monotonic), if any."""
        return min((when for when, _ in self._down.values()), default=None)

    def waiting(self, node: str, now: float) -> bool:
        """Whether *node* failed and is not to be tried again yet."""
        return self._down.get(node, (0.0, 0))[0] > now

    def forget_except(self, serving: set[str]) -> None:
        """Forget the failures of nodes that serve nothing wanted any more (a
        replica took over their slots)."""
        self._down = {n: down for n, down in self._down.items() if n in serving}

    def subscribe(self, wanted: dict[str, set[str]]) -> set[str]:
        """Hold a connection to each node of *wanted* (node -> shard channels),
        subscribed to exactly those; close the others. Return the shard channels
        newly subscribed (announcements before that were not heard). A node
        that fails is dropped and tried again later."""
        for node in [node for node in self._links if node not in wanted]:
            self._links.pop(node).connection.disconnect()
        fresh: set[str] = set()
        for node, shards in wanted.items():
            try:
                fresh |= self._subscribe_on(node, shards)
            except (RedisError, OSError) as exc:
                self.failed(node, exc)
                continue
            if node in self._down:
                del self._down[node]
                logger.info("Redis listener reached node %s again", node)
        return fresh

    def _subscribe_on(self, node: str, shards: set[str]) -> set[str]:
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = _Link(self._connect(node))
        extra = link.subscribed - shards
        if extra:
            link.connection.send_command("SUNSUBSCRIBE", *sorted(extra))
            link.subscribed -= extra  # the confirmations are skipped later
        missing = shards - link.subscribed
        for shard in sorted(missing):  # one slot per command
            link.connection.send_command("SSUBSCRIBE", shard)
        confirmed: set[str] = set()
        while confirmed != missing:  # announcements meanwhile are stashed
            self._handle(link, link.connection.read_response(), confirmed)
        link.subscribed |= confirmed
        return confirmed

    def _connect(self, node: str) -> Any:
        host, _, port = node.rpartition(":")
        options = dict(self._node_options)
        kind: type[Connection] = (
            SSLConnection if options.pop("ssl", False) else Connection
        )
        if kind is Connection:
            options = {k: v for k, v in options.items() if not k.startswith("ssl_")}
        # RESP2: push messages come back as replies (RESP3 hands them to a
        # callback instead).
        connection: Any = kind(host=host, port=int(port), protocol=2, **options)
        connection.connect()
        return connection

    def _handle(self, link: _Link, message: Any, confirmed: set[str]) -> None:
        """One push message of a link."""
        if not isinstance(message, list) or len(message) < 3:
            return
        kind, channel = bytes(message[0]).lower(), bytes(message[1]).decode()
        if kind == b"smessage":
            self.stash.append(bytes(message[2]))
        elif kind == b"ssubscribe":
            confirmed.add(channel)
        elif kind == b"sunsubscribe" and channel in link.subscribed:
            # The node gave the slot away (resharding, or it became a replica).
            link.subscribed.discard(channel)
            self.stale = True

    def failed(self, node: str, exc: BaseException) -> None:
        """Drop the connection to *node*; try it again after a backoff (with
        jitter)."""
        link = self._links.pop(node, None)
        if link is not None:
            link.connection.disconnect()
        failures = self._down.get(node, (0.0, 0))[1] + 1
        step = min(BACKOFF_CAP, BACKOFF_FIRST * 2**failures)
        delay = step / 2 + random.uniform(0, step / 2)
        self._down[node] = (time.monotonic() + delay, failures)
        self.stale = True  # a replica may be taking over its slots
        log = logger.warning if failures == 1 else logger.debug
        log(
            "Redis listener lost node %s (%s); trying again in %.2fs, with "
            "backoff; the channels of other nodes are read on",
            node,
            exc,
            delay,
        )

    def wait(self, block_ms: int) -> None:
        """Stash the announcements that arrive within *block_ms*, or until
        interrupted."""
        if not self._drain():
            sockets: list[Any] = [self._wake_read]
            sockets += [link.connection._sock for link in self._links.values()]
            ready, _, _ = select.select(sockets, [], [], block_ms / 1000)
            if self._wake_read in ready:
                try:
                    while self._wake_read.recv(4096):
                        pass
                except OSError:
                    pass  # nothing more to read
            self._drain()

    def _drain(self) -> bool:
        """Handle every message already readable; whether there was any."""
        any_read = False
        for node, link in list(self._links.items()):
            try:
                while link.connection.can_read(timeout=0):
                    any_read = True
                    self._handle(link, link.connection.read_response(), set())
            except (RedisError, OSError) as exc:
                self.failed(node, exc)
        return any_read

    def disconnect(self) -> None:
        """Close every connection; forget what they subscribed and stashed."""
        links, self._links = self._links, {}
        for link in links.values():
            link.connection.disconnect()
        self.stash.clear()
        self.stale = True

    def close(self) -> None:
        """Close the connections and the wake-up sockets, for good."""
        self.disconnect()
        self._wake_read.close()
        self._wake_write.close()
