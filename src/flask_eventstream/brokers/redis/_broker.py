"""The Redis broker: where this process reads each channel, and the listener.

Ownership: ``publish`` and replay run in the caller's thread on the shared pool
(:mod:`._publish`, :mod:`._history`); the listener thread (a greenlet under
gevent) owns its connection, the counts it wrote, the store's epoch and run id,
and the record of a lost connection; the fan-out and the read positions (the
channel cursors, the channels being started, the unproven ones) are guarded by
the fan-out's lock.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from ...event import Event
from ...signals import broker_reconnected
from ..base import Broker, Fanout, Subscription
from ._entries import (
    ORIGIN,
    PREVIOUS,
    Entry,
    EntryId,
    RawEntry,
    client_id,
    encode,
    format_id,
    gap,
    parse_id,
    plausible,
    raw,
)
from ._history import History, Replay
from ._pools import UNAVAILABLE, make_pools
from ._publish import Publisher
from ._stats import cluster_counts, stats_key

logger = logging.getLogger(__name__)

#: How long one XREAD blocks (at most; see ``stats_interval``). New channels wake
#: it at once.
_BLOCK_MS = 5000
#: Seconds the listener goes on reading a channel after its last subscriber here
#: left, so that one coming back (a page reload, a reconnecting browser, churn)
#: joins at the listener's cursor with no round trip to Redis.
_LINGER = 2.0
#: A process's counts in Redis expire after this many refresh intervals: a process
#: that died without closing its broker drops out of the cluster counts.
_STATS_TTL_INTERVALS = 3
#: Entries one XREAD returns per stream; more are read by the next XREAD at once.
_BATCH = 1000
#: Reconnection backoff of the listener, in seconds: first step and cap.
_BACKOFF_FIRST = 0.05
_BACKOFF_CAP = 5.0
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
        a primary that Sentinel watches (the grammar is in ``docs/redis.md``).
    :param history: events kept per channel for replay (at least; see above).
    :param buffer: events that may wait for one slow subscriber before it is cut off.
    :param key_prefix: put before every key, so several apps can share one Redis.
    :param stats_interval: seconds between two writes of this process's subscriber
        counts to Redis (its hash expires after three); the listener's XREAD blocks
        at most this long.
    :raises ValueError: for ``history`` below 1, ``stats_interval`` not above 0, or
        an unknown URL scheme.

    Ownership: ``publish`` and replay run in the caller's thread on the pool; the
    listener thread owns its connection, the counts it wrote and the record of a
    lost connection; the fan-out and the channel cursors are guarded by the
    fan-out's lock. The listener starts at the first subscription (so a process
    that only publishes, or a pre-fork master, runs no thread).

    When the listener is back after losing Redis, it logs at INFO and sends
    :data:`~flask_eventstream.signals.broker_reconnected` (the sender is the broker).
    """

    def __init__(
        self,
        url: str,
        *,
        history: int = 1000,
        buffer: int = 1000,
        key_prefix: str = "eventstream:",
        stats_interval: float = _BLOCK_MS / 1000,
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
        # The shared pool retries once: a pooled connection found dead after a
        # Redis restart is replaced at once instead of failing the first read.
        # The listener retries by itself, with backoff; XREAD BLOCK must not
        # time out.
        pools = make_pools(
            url,
            size=_POOL_SIZE,
            wait=_POOL_WAIT,
            timeout=_TIMEOUT,
            listen_timeout=_BLOCK_MS / 1000 + _TIMEOUT,
            options={
                "client_name": self.client_name,
                "socket_connect_timeout": _TIMEOUT,
            },
        )
        self._pool = pools.shared
        self._listen_pool = pools.listen
        self._where = pools.where
        self._redis = Redis(connection_pool=self._pool)
        self._listen = Redis(connection_pool=self._listen_pool)
        self._block_ms = max(1, min(_BLOCK_MS, int(stats_interval * 1000)))
        # This process's subscriber counts (see cluster_subscriber_counts). Owned
        # by the listener: when they are due again, and the channels they were
        # written for (None: nothing in Redis).
        self._stats_key = stats_key(key_prefix, token)
        self._stats_interval = stats_interval
        self._stats_due = 0.0
        self._stats_channels: frozenset[str] | None = None
        # When the listener lost Redis (monotonic), until it is back. Listener-owned.
        self._lost_at: float | None = None
        self._fanout = Fanout(buffer=buffer)
        # Channel -> id of the last entry read here: the channels the listener reads
        # (with subscribers, or lingering). Guarded by the fan-out lock.
        self._cursors: dict[str, EntryId] = {}
        # Lingering channel -> when the listener saw it without subscribers (a
        # monotonic time). Listener-owned.
        self._idle_since: dict[str, float] = {}
        # Channels with subscribers here whose cursor is being read from Redis (by
        # the subscription that added them), and the event set once it is known.
        # The listener does not read them yet. Guarded by the fan-out lock.
        self._starting: dict[str, threading.Event] = {}
        # Channels whose cursor is a guess (the clock; Redis was down when they
        # started), not an entry read from Redis: the listener cannot check that
        # it missed nothing after it. Guarded by the fan-out lock.
        self._unproven: set[str] = set()
        # The token this broker found in ``<prefix>epoch`` (None: not read yet). A
        # different token, or none, means Redis is not the store the cursors were
        # read from (restarted empty, or flushed). When the listener checks again
        # (monotonic). Listener-owned.
        self._epoch_key = f"{key_prefix}epoch"
        self._epoch: bytes | None = None
        # The ``run_id`` of the Redis server the listener last checked: another
        # one (a restart, or a replica promoted by a failover) may lack entries
        # this process never read. Listener-owned.
        self._run_id: str | None = None
        self._check_due = 0.0
        # History reads in flight, by (channels, Last-Event-ID): a reconnect storm
        # (a worker died; its browsers all resume from the same id) reads once.
        self._reads: dict[tuple[tuple[str, ...], str], _Read] = {}
        self._reads_lock = threading.Lock()
        # The newest entry id seen from Redis: where a channel subscribed while Redis
        # is down starts. Written by any thread; a stale value only costs events
        # that came just before the subscription.
        self._clock: EntryId = (time.time_ns() // 1_000_000, 0)
        # The newest entry id given out, by any process, keeps ids unique across
        # channels (see the publish script).
        self._publisher = Publisher(
            self._redis,
            self._pool,
            key=self.key,
            last_id_key=f"{key_prefix}last-id",
            history=history,
            where=self._where,
        )
        self._reader = History(self._redis, key=self.key, history=history)
        # Written by a subscriber that adds a channel, so a blocked XREAD returns.
        self._wake_key = f"{key_prefix}listener:{token}"
        self._changed = threading.Event()
        # True while the listener is (about to be) blocked in XREAD: only then does
        # a new channel need the Redis-side wake-up. Listener-written.
        self._blocking = False
        self._closing = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        history: int = 1000,
        buffer: int = 1000,
        key_prefix: str = "eventstream:",
        stats_interval: float = _BLOCK_MS / 1000,
    ) -> RedisBroker:
        """The broker for *url*; what ``EVENTSTREAM_BROKER_URL`` calls."""
        return cls(
            url,
            history=history,
            buffer=buffer,
            key_prefix=key_prefix,
            stats_interval=stats_interval,
        )

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
        self._seen(parse_id(raw))
        if event.id is None:
            event = replace(event, id=raw.decode())
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
        self._ensure_listener()
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
                if name not in self._cursors and name not in self._starting
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
                        self._cursors[name] = start[name]
                    else:
                        self._cursors[name] = self._clock
                        self._unproven.add(name)
                    started.set()
            if start:
                self._seen(max(start.values()))
            self._wake()

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
                read = set(self._cursors)
                behind = {
                    name: self._cursors[name]
                    for name in names
                    if name in read and self._cursors[name] > replay[name][0]
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
            self._wake()
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
                cursor = self._cursors[name]
                backlog.extend(entry for entry in entries if entry.id <= cursor)
            else:
                self._cursors[name] = upto
                backlog.extend(entries)
                added = True
        backlog.sort()
        self._seen(max((upto for upto, _ in replay.values()), default=ORIGIN))
        sub = self._fanout.subscribe(
            names, (entry.wire for entry in backlog), missed=missed
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
                if name not in self._cursors and name not in self._starting:
                    self._cursors[name] = self._clock
                    self._unproven.add(name)
            sub = self._fanout.subscribe(names, missed=True, after=after)
        self._wake()
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

    def _ensure_listener(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closing.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="eventstream-redis-listener", daemon=True
                )
                self._thread.start()

    def _wake(self) -> None:
        """Make the listener re-read the channel set now.

        Only a listener blocked in XREAD needs a note in Redis (a round trip on the
        pool); otherwise the local event is enough. The listener sets ``_blocking``
        and then checks ``_changed`` before it blocks, and this sets ``_changed``
        and then checks ``_blocking``: one of the two sees the other.
        """
        self._changed.set()
        if not self._blocking:
            return
        try:
            self._redis.xadd(self._wake_key, {b"w": b"1"}, maxlen=1)
        except RedisError:
            pass  # the listener is reconnecting; it reads the channel set first

    def _run(self) -> None:
        failures = 0
        while not self._closing.is_set():
            try:
                self._listen_once()
                failures = 0
            except (RedisError, OSError) as exc:
                if self._closing.is_set():
                    break
                failures += 1
                step = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2**failures)
                delay = step / 2 + random.uniform(0, step / 2)
                self._lost(exc, delay)
                self._listen_pool.disconnect()
                self._closing.wait(delay)
            except Exception:
                logger.exception("Redis listener failed; restarting it")
                self._listen_pool.disconnect()
                self._closing.wait(_BACKOFF_CAP)

    def _listen_once(self) -> None:
        """One XREAD over every channel read here, delivered in order.

        A channel read here has subscribers, or had some less than :data:`_LINGER`
        seconds ago. Before each batch of a channel is delivered, its first entry
        proves that nothing between the cursor and it was trimmed; if it cannot,
        the channel's subscribers get the gap event first (this process fell more
        than the history behind).
        """
        self._changed.clear()  # before the snapshot: a later change is not lost
        now = time.monotonic()
        block_ms = self._block_ms
        with self._fanout.lock:
            live = set(self._fanout.channels())
            for name in list(self._cursors):
                if name in live:
                    self._idle_since.pop(name, None)
                    continue
                left = self._idle_since.setdefault(name, now) + _LINGER - now
                if left <= 0:
                    del self._cursors[name], self._idle_since[name]
                    self._unproven.discard(name)
                else:  # wake up when it is due to go
                    block_ms = min(block_ms, max(1, int(left * 1000) + 1))
            snapshot = dict(self._cursors)
            unproven = self._unproven & snapshot.keys()
        for name in [name for name in self._idle_since if name not in snapshot]:
            del self._idle_since[name]  # started again, or gone with its cursor
        if not snapshot:
            self._forget_counts()
            self._listen_pool.disconnect()  # idle: hold no connection
            self._changed.wait()
            return
        self._write_counts(frozenset(snapshot))
        if self._lost_at is not None or now >= self._check_due:
            self._check_store(snapshot, unproven)
            self._check_due = now + self._stats_interval
        if self._lost_at is not None:  # that was the first command to succeed
            self._back(self._lost_at)
        by_key = {self.key(name).encode(): name for name in snapshot}
        streams: dict[Any, Any] = {self._wake_key: "0-0"}
        streams.update(
            (self.key(name), format_id(cursor)) for name, cursor in snapshot.items()
        )
        self._blocking = True
        try:
            if self._changed.is_set():
                return  # a channel came meanwhile: read the channel set again
            reply = cast(
                "list[tuple[bytes, list[RawEntry]]]",
                self._listen.xread(streams, count=_BATCH, block=block_ms) or [],
            )
        finally:
            self._blocking = False
        batch: list[tuple[EntryId, str, bytes]] = []
        last: dict[str, EntryId] = {}
        broken: list[str] = []
        for raw_key, entries in reply:
            channel = by_key.get(raw_key)
            if channel is None:  # the wake-up key: consumed, so the next XREAD blocks
                self._refusable(self._listen.delete, self._wake_key)
                continue
            if entries and channel not in unproven:
                previous = entries[0][1].get(PREVIOUS)
                if previous is not None and parse_id(previous) > snapshot[channel]:
                    broken.append(channel)  # entries after the cursor were trimmed
            for raw_id, fields in entries:
                entry_id = last[channel] = parse_id(raw_id)
                wire = encode(raw_id, fields)
                if wire is not None:
                    batch.append((entry_id, channel, wire))
        batch.sort(key=lambda item: (item[0], item[1]))
        if broken:
            logger.warning(
                "Redis listener fell more than the history behind on channels %s: "
                "their subscribers get the gap event",
                broken,
            )
        with self._fanout.lock:
            # A channel whose cursor moved since the snapshot was dropped and
            # started again: the next XREAD reads it from its new cursor.
            current = {
                name for name in last if self._cursors.get(name) == snapshot[name]
            }
            for name in broken:
                if name in current:
                    self._fanout.notify([name], gap(name, snapshot[name]))
            for name in current:
                self._cursors[name] = last[name]
                self._unproven.discard(name)
                self._seen(last[name])
            for entry_id, name, wire in batch:
                if name in current:
                    self._fanout.deliver(name, wire, entry_id)

    def _check_store(self, snapshot: dict[str, EntryId], unproven: set[str]) -> None:
        """Tell the subscribers of every channel whose entries Redis lost.

        Run after a lost connection and every ``stats_interval``. Redis may have
        lost entries this process did not deliver if it is another server process
        than before (a restart, or a replica promoted by a failover: replication
        is asynchronous), if its epoch token changed (restarted empty, or
        flushed), or if a stream's newest entry is older than where the listener
        read up to (restored from an old snapshot). Those channels get the gap
        event and read on from what Redis holds now; *snapshot* is updated.
        """
        pipe = self._listen.pipeline(transaction=False)
        pipe.info("server")
        pipe.set(self._epoch_key, uuid.uuid4().hex, nx=True)
        pipe.get(self._epoch_key)
        names = list(snapshot)
        for name in names:
            pipe.xrevrange(self.key(name), count=1)
        replies = pipe.execute(raise_on_error=False)
        for index, reply in enumerate(replies):
            if isinstance(reply, Exception) and index != 1:  # SET may be refused
                raise reply
        run_id = str(replies[0].get("run_id", ""))
        epoch = cast("bytes | None", replies[2])
        restarted = (self._epoch is not None and epoch != self._epoch) or (
            self._run_id is not None and run_id != self._run_id
        )
        self._epoch, self._run_id = epoch, run_id
        moved: dict[str, EntryId] = {}
        for name, found in zip(names, replies[3:], strict=True):
            top = parse_id(found[0][0]) if found else ORIGIN
            if name not in unproven and (restarted or top < snapshot[name]):
                moved[name] = min(top, snapshot[name])
        if not moved:
            return
        logger.warning(
            "Redis at %s lost entries (%s): the subscribers of channels %s get the "
            "gap event",
            self._where,
            "another server, or its data replaced"
            if restarted
            else "streams went back",
            sorted(moved),
        )
        with self._fanout.lock:
            for name, cursor in moved.items():
                if self._cursors.get(name) == snapshot[name]:
                    self._fanout.notify([name], gap(name, snapshot[name]))
                    self._cursors[name] = snapshot[name] = cursor

    def _refusable(self, command: Any, *args: Any) -> Any:
        """Run a write of the listener's own bookkeeping; a refusal (out of memory,
        read-only replica) is logged, not taken for a lost connection."""
        try:
            return command(*args)
        except ResponseError as exc:
            logger.warning("Redis at %s refused a write (%s)", self._where, exc)
            return None

    def _write_counts(self, channels: frozenset[str]) -> None:
        """Put this process's subscribers per channel in Redis, if they are due.

        Due every ``stats_interval``, when the channels changed, and after a lost
        connection (Redis may have restarted empty). One MULTI, so a reader never
        sees half of it; the expiry drops a process that died without ``close()``.
        """
        now = time.monotonic()
        if (
            channels == self._stats_channels
            and now < self._stats_due
            and self._lost_at is None
        ):
            return
        counts = self._fanout.counts()
        ttl_ms = max(1, int(self._stats_interval * _STATS_TTL_INTERVALS * 1000))
        pipe = self._listen.pipeline(transaction=True)
        pipe.delete(self._stats_key)
        if counts:
            pipe.hset(self._stats_key, mapping=counts)  # type: ignore[arg-type]
            pipe.pexpire(self._stats_key, ttl_ms)
        self._refusable(pipe.execute)  # refused: the counts go stale, events flow
        self._stats_channels = channels
        self._stats_due = now + self._stats_interval

    def _forget_counts(self) -> None:
        """Remove this process's counts from Redis: it has no subscriber left."""
        if self._stats_channels is None:
            return
        self._stats_channels = None
        try:
            self._listen.delete(self._stats_key)
        except RedisError:
            pass  # Redis is away: the hash expires by itself

    def _lost(self, exc: BaseException, delay: float) -> None:
        """Log a failed listener round: a warning when the connection is lost, then
        quieter retries until it is back."""
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            logger.warning(
                "Redis listener lost its connection to %s (%s); reconnecting in "
                "%.2fs, with backoff; open streams stay open",
                self._where,
                exc,
                delay,
            )
        else:
            logger.debug(
                "Redis at %s still unreachable (%s); next attempt in %.2fs",
                self._where,
                exc,
                delay,
            )

    def _back(self, lost_at: float) -> None:
        """The listener reached Redis again: log it and send the signal."""
        self._lost_at = None
        down = time.monotonic() - lost_at
        logger.info(
            "Redis listener reconnected to %s after %.1fs; delivering what was "
            "published meanwhile",
            self._where,
            down,
        )
        try:
            broker_reconnected.send(self)
        except Exception:  # a receiver's bug must not stop delivery
            logger.exception("a broker_reconnected receiver failed")

    def _seen(self, entry_id: EntryId) -> None:
        self._clock = max(self._clock, entry_id)

    def close(self) -> None:
        """End every subscription, stop the listener, close the connections."""
        self._closing.set()
        self._changed.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            try:
                self._redis.xadd(self._wake_key, {b"w": b"1"}, maxlen=1)
            except RedisError:
                pass
            thread.join(timeout=_BLOCK_MS / 1000 + _TIMEOUT)
            try:
                self._redis.delete(self._wake_key, self._stats_key)
            except RedisError:
                pass  # the counts expire by themselves
        self._fanout.end_all()
        self._pool.disconnect()
        self._listen_pool.disconnect()
