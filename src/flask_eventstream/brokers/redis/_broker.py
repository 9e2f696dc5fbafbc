"""The Redis broker: subscribing, and where each channel is read from.

A subscription joins the :class:`~._listener.Listener` at the channel's cursor,
or reads the history first (:mod:`._history`) and is registered with exactly the
entries up to the cursor. Publishing is :mod:`._publish`'s.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError

from ..._event import Event, with_id
from .._fanout import BUFFER_BYTES, Fanout
from .._protocol import Broker
from .._subscription import Subscription
from ._cluster_listener import ClusterListener
from ._entries import (
    ORIGIN,
    Entry,
    EntryId,
    client_id,
    encode,
    format_id,
    parse_id,
    plausible,
    raw,
)
from ._history import History, Replay
from ._listener import BLOCK_MS, Listener, Positions
from ._pools import UNAVAILABLE, is_cluster_url, make_cluster_pools, make_pools
from ._publish import Publisher
from ._slots import ClusterNames
from ._stats import cluster_counts, stats_key

logger = logging.getLogger(__name__)

#: Seconds a publish or replay waits to connect, or for Redis to answer.
_TIMEOUT = 5.0
#: Seconds a publish or replay waits for a pooled connection while both are busy
#: (a reconnect storm replaying thousands of streams): longer than a round trip, so
#: a busy pool makes requests queue, not fail as if Redis were down.
_POOL_WAIT = 30.0
#: Longest a channel's start can take (a pool wait, then connecting and reading,
#: retried once): how long other subscriptions to it wait for it at most.
_START_WAIT = _POOL_WAIT + 4 * _TIMEOUT
#: Connections for publish and replay (the listener has its own).
_POOL_SIZE = 2


class _Read:
    """One history read in flight, shared by the subscriptions that wait for it."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Replay | None = None


class RedisBroker(Broker):
    """Events in Redis Streams, fanned out in each process by one listener.

    :param url: ``redis://``, ``rediss://``, ``unix://``, ``valkey://`` or
        ``valkeys://`` URL, with database, user and password as redis-py reads them;
        or ``redis+sentinel://[user:password@]host[:port][,...]/service[/db]`` for
        a primary that Sentinel watches, or ``redis+cluster://[user:password@]
        host[:port][,...]`` for a Redis Cluster (the grammars are in
        ``docs/redis.md``).
    :param history: events kept per channel for replay (at least; see above).
    :param buffer: events that may wait for one slow subscriber before it is cut off.
    :param buffer_bytes: bytes that may wait for one slow subscriber before it is cut
        off.
    :param key_prefix: put before every key, so several apps can share one Redis.
    :param stats_interval: seconds between two writes of this process's subscriber
        counts to Redis (its hash expires after three); the listener's XREAD blocks
        at most this long.
    :raises ValueError: for ``history`` below 1, ``stats_interval`` not above 0,
        an unknown URL scheme, or a cluster with a key prefix holding braces.
    :raises BrokerUnavailable: for a cluster of which no node in the URL answers
        (its slots are read at once).

    Ownership: ``publish`` and replay run in the caller's thread on the shared
    pool; the :class:`~._listener.Listener` thread owns its connection and what it
    keeps in Redis; the fan-out, the read positions and the channels being
    started are guarded by the fan-out's lock. The listener starts at the first
    subscription (so a process that only publishes, or a pre-fork master, runs no
    thread).

    When the listener is back after losing Redis, it logs at INFO and sends
    :data:`~flask_eventstream.signals.broker_reconnected` (the sender is the broker).
    """

    def __init__(
        self,
        url: str,
        *,
        history: int = 1000,
        buffer: int = 1000,
        buffer_bytes: int = BUFFER_BYTES,
        key_prefix: str = "eventstream:",
        stats_interval: float = BLOCK_MS / 1000,
    ) -> None:
        if history < 1:
            raise ValueError(
                f"history must be at least 1 for the Redis broker, got {history}"
            )
        if not stats_interval > 0:
            raise ValueError(f"stats_interval must be above 0, got {stats_interval}")
        self._prefix = key_prefix
        token = uuid.uuid4().hex
        #: ``CLIENT SETNAME`` of this broker's connections: host, pid, broker.
        self.client_name = (
            f"eventstream:{socket.gethostname()}:{os.getpid()}:{token[:8]}"
        )
        self._fanout = Fanout(buffer=buffer, buffer_bytes=buffer_bytes)
        self._positions = Positions()
        # Channels with subscribers here whose cursor is being read from Redis (by
        # the subscription that added them), and the event set once it is known.
        # The listener does not read them yet. Guarded by the fan-out lock.
        self._starting: dict[str, threading.Event] = {}
        if is_cluster_url(url):
            self._connect_cluster(url, key_prefix, token, stats_interval, history)
        else:
            self._connect_one(url, key_prefix, token, stats_interval, history)
        # History reads in flight, by (channels, Last-Event-ID): a reconnect storm
        # (a worker died; its browsers all resume from the same id) reads once.
        self._reads: dict[tuple[tuple[str, ...], str], _Read] = {}
        self._reads_lock = threading.Lock()

    def _connect_one(
        self,
        url: str,
        key_prefix: str,
        token: str,
        stats_interval: float,
        history: int,
    ) -> None:
        """Pools, publisher, history reader and listener for one Redis (or the
        primary Sentinel names)."""
        # The shared pool retries once: a pooled connection found dead after a
        # Redis restart is replaced at once instead of failing the first read.
        # The listener retries by itself, with backoff; XREAD BLOCK must not
        # time out.
        pools = make_pools(
            url,
            size=_POOL_SIZE,
            wait=_POOL_WAIT,
            timeout=_TIMEOUT,
            listen_timeout=BLOCK_MS / 1000 + _TIMEOUT,
            options=self._connection_options(),
        )
        self._where = pools.where
        self._pool = pools.shared
        self._redis: Redis | RedisCluster = Redis(connection_pool=pools.shared)
        self._disconnect: Callable[[], None] = pools.shared.disconnect
        self._listener: Listener = Listener(
            fanout=self._fanout,
            positions=self._positions,
            pool=pools.listen,
            redis=self._redis,
            key=self.key,
            stats_key=stats_key(key_prefix, token),
            epoch_key=f"{key_prefix}epoch",
            wake_key=f"{key_prefix}listener:{token}",
            stats_interval=stats_interval,
            where=self._where,
            sender=self,
        )
        # The newest entry id given out, by any process, keeps ids unique across
        # channels (see the publish script).
        last_id_key = f"{key_prefix}last-id"
        self._publisher = Publisher(
            self._redis,
            route=lambda key, ask: pools.shared,
            keys=lambda channel: (self.key(channel), last_id_key),
            history=history,
            where=self._where,
        )
        self._reader = History(self._redis, key=self.key, history=history)

    def _connect_cluster(
        self,
        url: str,
        key_prefix: str,
        token: str,
        stats_interval: float,
        history: int,
    ) -> None:
        """The same for a Redis Cluster: a pool per primary, the cluster listener,
        ids and replay per group of channels (see :mod:`._slots`)."""
        names = ClusterNames(key_prefix)
        pools = make_cluster_pools(
            url,
            size=_POOL_SIZE,
            wait=_POOL_WAIT,
            timeout=_TIMEOUT,
            listen_timeout=BLOCK_MS / 1000 + _TIMEOUT,
            options=self._connection_options(),
        )
        client: Any = pools.client  # redis-py leaves most of its methods untyped
        self._where = pools.where
        self._redis = client
        self._disconnect = client.close
        self._listener = ClusterListener(
            fanout=self._fanout,
            positions=self._positions,
            client=client,
            names=names,
            node_options=pools.node_options,
            stats_key=stats_key(key_prefix, token),
            stats_interval=stats_interval,
            where=self._where,
            sender=self,
        )

        def route(key: str, ask: tuple[str, int] | None) -> Any:
            node = (
                client.get_node_from_key(key)
                if ask is None
                else client.get_node(host=ask[0], port=ask[1])
            )
            if node is None or node.redis_connection is None:
                raise ClusterDownError(f"no connection to the node serving {key!r}")
            return node.redis_connection.connection_pool

        def refresh() -> None:
            try:
                # Not closing the pools' connections: others' commands use them.
                client.nodes_manager.initialize(disconnect_startup_nodes_pools=False)
            except (RedisClusterException, RedisError):
                pass  # no node answers yet: the next publish asks again

        self._publisher = Publisher(
            client,
            route=route,
            keys=lambda channel: (names.key(channel), names.last_id_key(channel)),
            notices=names.notices,
            refresh=refresh,
            history=history,
            where=self._where,
        )
        self._reader = History(client, key=self.key, history=history, group=names.group)

    def _connection_options(self) -> dict[str, Any]:
        return {
            "client_name": self.client_name,
            "socket_connect_timeout": _TIMEOUT,
        }

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBroker:
        """The broker for *url*, with the constructor's *options*; what
        ``EVENTSTREAM_BROKER_URL`` calls."""
        return cls(url, **options)

    @property
    def fanout(self) -> Fanout:
        return self._fanout

    def key(self, channel: str) -> str:
        """The Redis key of *channel*'s stream: ``<prefix>{<channel>}``.

        The braces are a hash tag: in a Redis Cluster the channel decides the slot.
        """
        return f"{self._prefix}{{{channel}}}"

    def publish(
        self, channel: str, event: Event, *, idempotency_key: str | None = None
    ) -> Event:
        """Append *event* to *channel*'s stream; every process's listener delivers it.

        :param idempotency_key: if *channel* stored an event with this key in the
            last hour, that event's id is returned and nothing is stored again.
        :return: the event with its id: the one given, or the stream entry id.
        :raises BrokerUnavailable: Redis cannot be reached (or is read-only); the
            event was not stored, so nobody receives it: retry or report.
        :raises PublishUncertain: the command reached Redis, or may have, but no
            answer came in time (Redis stalled, or the connection broke while it
            ran): the event may have been stored and delivered. Retry with the
            exception's ``idempotency_key`` to be sure it is stored once.
        :raises BrokerError: Redis refused the write for another reason (out of
            memory, say); the event was not stored.
        """
        raw = self._publisher.store(channel, event, idempotency_key=idempotency_key)
        self._positions.seen(parse_id(raw))
        if event.id is None:
            event = with_id(event, raw.decode())
        return event

    def subscribe(
        self, channels: Sequence[str], *, last_event_id: str | None = None
    ) -> Subscription:
        """Subscribe to *channels*; replay what came after *last_event_id* first.

        *last_event_id* may be a stream entry id (from any process) or an id given to
        ``publish``. It is only looked up, never trusted: unless one of *channels*
        holds the entry it names, and nothing after that entry was trimmed, the
        subscription's ``missed`` is true (the gap event). It then gets the
        retained entries after the id if it is a stream entry id (none if it is
        newer than all of them), else the whole retained history. Where the
        listener of this process reads from is always an id Redis gave, so one
        client's id never changes what other subscribers get.

        Without *last_event_id*, a channel this process already reads (it has
        subscribers here, or had some in the last :data:`_LINGER` seconds) costs no
        Redis round trip: the subscription joins the listener's cursor. A channel
        new here costs one (its newest entry id), shared by every subscription that
        arrives for it meanwhile. Subscriptions resuming from the same id at the
        same time share one history read. While both pooled connections are busy,
        this waits for one (up to 30 s) rather than report Redis unavailable.
        """
        names = list(dict.fromkeys(channels))
        self._listener.start()
        if not last_event_id:
            return self._subscribe_live(names)
        try:
            replay, missed = self._shared_history(names, last_event_id)
            return self._register(names, replay, missed)
        except UNAVAILABLE as exc:
            logger.warning(
                "Redis at %s is unavailable (%s): channels %s get live events only "
                "once it is back",
                self._where,
                exc,
                names,
            )
            position = client_id(last_event_id)
            if position is not None and not plausible(position):
                position = None
            return self._register_unknown(names, after=position)

    def _subscribe_live(self, names: list[str]) -> Subscription:
        """Register for live events only, at once; read Redis for new channels only.

        No gap: every event published after this returns has an id above the
        cursor it is read from. The cursor of a channel already read here is the
        listener's (it delivered up to there, and entries it has not delivered yet
        go to this subscription too; a channel keeps its cursor a while after its
        last subscriber left, see :data:`_LINGER`). A new channel starts at its
        newest entry, read by the subscription that added it while every other one
        for it waits, so none returns before its start is known. No duplicate: one
        cursor per channel. An event published *while* this runs may or may not be
        delivered, as with any concurrent publish.
        """
        with self._fanout.lock:
            fresh = [
                name
                for name in names
                if name not in self._positions.cursors and name not in self._starting
            ]
            for name in fresh:
                self._starting[name] = threading.Event()
            waits = [
                self._starting[name]
                for name in names
                if name in self._starting and name not in fresh
            ]
            sub = self._fanout.subscribe(names)
        if fresh:
            try:
                self._start(fresh)
            except BaseException:  # e.g. the request's greenlet killed: no orphan
                sub.close()
                raise
        for started in waits:
            # Set by _start in a finally, after at most a pool wait and timeouts.
            started.wait(_START_WAIT)
        return sub

    def _start(self, fresh: list[str]) -> None:
        """Read where the new channels start, and let the listener read them."""
        start: dict[str, EntryId] = {}
        try:
            start = {
                name: upto for name, (upto, _) in self._reader.newest(fresh).items()
            }
        except RedisError as exc:  # unavailable, or a key that is not a stream
            logger.warning(
                "Redis at %s is unavailable (%s): channels %s get live events only "
                "once it is back",
                self._where,
                exc,
                fresh,
            )
        finally:
            with self._fanout.lock:
                for name in fresh:
                    started = self._starting.pop(name)
                    # Even if its subscribers left meanwhile: it lingers, then goes.
                    if name in start:
                        self._positions.cursors[name] = start[name]
                    else:
                        self._positions.cursors[name] = self._positions.clock
                        self._positions.unproven.add(name)
                    started.set()
            if start:
                self._positions.seen(max(start.values()))
            self._listener.wake()

    def _await_started(self, names: list[str]) -> None:
        """Wait until no channel of *names* is still being started (call unlocked)."""
        while True:
            with self._fanout.lock:
                waits = [self._starting[n] for n in names if n in self._starting]
            if not waits:
                return
            for started in waits:
                started.wait(_START_WAIT)

    def _shared_history(self, names: list[str], last_event_id: str) -> Replay:
        """:meth:`_history_after`, read once for every subscription that asks for
        the same channels and id while it is being read.

        Joining a read that began before this call is safe: registering extends a
        replay to the listener's cursor (or starts the listener at its end), so an
        older snapshot of the history only means a longer catch-up, never a gap.
        Each caller gets its own lists (registering appends to them).
        """
        key = (tuple(names), last_event_id)
        with self._reads_lock:
            read = self._reads.get(key)
            leader = read is None
            if read is None:
                read = self._reads[key] = _Read()
        if leader:
            try:
                read.result = self._reader.after(names, last_event_id)
            finally:
                with self._reads_lock:
                    del self._reads[key]
                read.done.set()
        else:
            read.done.wait(_START_WAIT)
        # The leader failed (Redis is down: this fails too) or took too long.
        replay, missed = read.result or self._reader.after(names, last_event_id)
        copies = {name: (upto, list(found)) for name, (upto, found) in replay.items()}
        return copies, missed

    def _register(
        self,
        names: list[str],
        replay: dict[str, tuple[EntryId, list[Entry]]],
        missed: bool,
    ) -> Subscription:
        """Register the subscription with its backlog, joined to the listener's cursors.

        For a channel the listener already reads, the backlog stops at its cursor (the
        listener delivers what follows); if the listener is ahead of what was read,
        the gap is read first, outside the lock while that converges.
        """
        attempt = 0
        while True:
            self._await_started(names)
            with self._fanout.lock:
                if any(name in self._starting for name in names):
                    continue  # started again meanwhile: its cursor is not known yet
                read = set(self._positions.cursors)
                behind = {
                    name: self._positions.cursors[name]
                    for name in names
                    if name in read and self._positions.cursors[name] > replay[name][0]
                }
                if behind and attempt == 3:
                    self._catch_up(replay, behind)  # rare: a busy channel, under lock
                    behind = {}
                if not behind:
                    sub, added = self._register_locked(names, replay, missed, read)
                    break
            self._catch_up(replay, behind)
            attempt += 1
        if added:
            self._listener.wake()
        return sub

    def _catch_up(
        self,
        replay: dict[str, tuple[EntryId, list[Entry]]],
        behind: dict[str, EntryId],
    ) -> None:
        for name, cursor in behind.items():
            upto, entries = replay[name]
            batch = raw(
                self._redis.xrange(
                    self.key(name), min=f"({format_id(upto)}", max=format_id(cursor)
                )
            )
            for raw_id, fields in batch:
                wire = encode(raw_id, fields)
                if wire is not None:
                    entries.append(Entry(parse_id(raw_id), wire))
            replay[name] = (cursor, entries)

    def _register_locked(
        self,
        names: list[str],
        replay: dict[str, tuple[EntryId, list[Entry]]],
        missed: bool,
        read: set[str],
    ) -> tuple[Subscription, bool]:
        backlog: list[Entry] = []
        added = False
        for name in names:
            upto, entries = replay[name]
            if name in read:
                cursor = self._positions.cursors[name]
                backlog.extend(entry for entry in entries if entry.id <= cursor)
            else:
                self._positions.cursors[name] = upto
                backlog.extend(entries)
                added = True
        backlog.sort()
        self._positions.seen(max((upto for upto, _ in replay.values()), default=ORIGIN))
        sub = self._fanout.subscribe(
            names, [entry.wire for entry in backlog], missed=missed
        )
        return sub, added

    def _register_unknown(
        self, names: list[str], *, after: EntryId | None
    ) -> Subscription:
        """Register a resume without reading Redis (it is down), with the gap event:
        new channels start at the newest entry id this broker has seen, or at this
        host's clock. Entries at or before *after* (the client's own position)
        are not delivered to it: that read position may be older than the
        client's."""
        self._await_started(names)
        with self._fanout.lock:
            for name in names:
                if name not in self._positions.cursors and name not in self._starting:
                    self._positions.cursors[name] = self._positions.clock
                    self._positions.unproven.add(name)
            sub = self._fanout.subscribe(names, missed=True, after=after)
        self._listener.wake()
        return sub

    def cluster_subscriber_counts(self) -> dict[str, int]:
        """Live subscribers per channel in every process on this Redis and prefix.

        Adds up the counts each process's listener keeps in Redis: they are up to
        ``stats_interval`` seconds old, and a process that died without closing its
        broker still counts until its hash expires (three intervals). Reads the
        keys with ``SCAN``, so it costs a pass over the database's keys: meant for
        ``flask eventstream stats`` and dashboards, not for every request.

        :raises BrokerUnavailable: Redis cannot be reached.
        """
        return cluster_counts(self._redis, self._prefix, self._where)

    def close(self) -> None:
        """End every subscription, stop the listener, close the connections."""
        self._listener.stop()
        self._fanout.end_all()
        self._disconnect()
