"""The Redis listener: one per process, reading every channel it has subscribers
for with one ``XREAD BLOCK``, and handing each entry to the fan-out.

Owns its connection, its thread (a greenlet under gevent), the counts it writes
for :mod:`._stats`, the store's epoch and run id, and the record of a lost
connection. Shares :class:`Positions` with the broker's subscribe paths, under
the fan-out's lock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast

from redis import ConnectionPool, Redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from ...signals import broker_reconnected
from .._fanout import Fanout
from ._entries import (
    ORIGIN,
    PREVIOUS,
    EntryId,
    RawEntry,
    encode,
    format_id,
    gap,
    parse_id,
)

logger = logging.getLogger(__name__)

#: How long one XREAD blocks (at most; see ``stats_interval``). New channels wake
#: it at once.
BLOCK_MS = 5000
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
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 5.0


class Positions:
    """Where this process reads each channel: shared by the listener and the
    broker's subscribe paths, guarded by the fan-out's lock (but ``clock``).

    ``cursors``: channel -> id of the last entry read here, for every channel the
    listener reads (with subscribers, or lingering). ``unproven``: channels whose
    cursor is a guess (``clock``; Redis was down when they started), not an entry
    read from Redis, so the listener cannot check that it missed nothing after it.
    ``clock``: the newest entry id seen from Redis, written by any thread; a stale
    value only costs events that came just before a subscription.
    """

    __slots__ = ("cursors", "unproven", "clock")

    def __init__(self) -> None:
        self.cursors: dict[str, EntryId] = {}
        self.unproven: set[str] = set()
        self.clock: EntryId = (time.time_ns() // 1_000_000, 0)

    def seen(self, entry_id: EntryId) -> None:
        """Move the clock to *entry_id* if it is newer."""
        self.clock = max(self.clock, entry_id)


class Listener:
    """The listener of one broker (see the module docstring).

    :param fanout: the broker's fan-out, which it delivers to.
    :param positions: the read positions it shares with the broker.
    :param pool: its own connection pool (one connection, never retried);
        ``None`` for the cluster listener, which holds connections per node.
    :param redis: a client of the shared pool, to wake it from another thread.
    :param key: a channel's stream key.
    :param stats_key: where it keeps this process's counts (:mod:`._stats`).
    :param epoch_key: the store's epoch token; *wake_key*: its wake-up stream.
    :param stats_interval: seconds between two writes of the counts, and two
        checks of the store; an XREAD blocks at most this long.
    :param where: what log lines name; *sender*: what ``broker_reconnected`` sends.
    """

    def __init__(
        self,
        *,
        fanout: Fanout,
        positions: Positions,
        pool: ConnectionPool | None,
        redis: Redis | RedisCluster,
        key: Callable[[str], str],
        stats_key: str,
        epoch_key: str,
        wake_key: str,
        stats_interval: float,
        where: str,
        sender: object,
    ) -> None:
        self._fanout = fanout
        self._positions = positions
        self._listen_pool = pool
        # The listener's own client; in a cluster (no pool of its own) the shared
        # one, for its bookkeeping (the cluster listener reads notices elsewhere).
        self._listen: Redis | RedisCluster = (
            redis if pool is None else Redis(connection_pool=pool)
        )
        self._redis = redis
        self._key = key
        self._where = where
        self._sender = sender
        self._block_ms = max(1, min(BLOCK_MS, int(stats_interval * 1000)))
        # This process's subscriber counts: when they are due again, and the
        # channels they were written for (None: nothing in Redis).
        self._stats_key = stats_key
        self._stats_interval = stats_interval
        self._stats_due = 0.0
        self._stats_channels: frozenset[str] | None = None
        # When the listener lost Redis (monotonic), until it is back.
        self._lost_at: float | None = None
        # Lingering channel -> when the listener saw it without subscribers (a
        # monotonic time).
        self._idle_since: dict[str, float] = {}
        # The token found in ``<prefix>epoch`` (None: not read yet). A different
        # token, or none, means Redis is not the store the cursors were read from
        # (restarted empty, or flushed).
        self._epoch_key = epoch_key
        self._epoch: bytes | None = None
        # The ``run_id`` of the Redis server last checked: another one (a restart,
        # or a replica promoted by a failover) may lack entries never read here.
        self._run_id: str | None = None
        # When the store is checked again (monotonic).
        self._check_due = 0.0
        # Written by a subscriber that adds a channel, so a blocked XREAD returns.
        self._wake_key = wake_key
        self._changed = threading.Event()
        # True while the listener is (about to be) blocked in XREAD: only then does
        # a new channel need the Redis-side wake-up.
        self._blocking = False
        self._closing = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread, unless it runs or the broker is closing."""
        with self._start_lock:
            if self._thread is None and not self._closing.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="eventstream-redis-listener", daemon=True
                )
                self._thread.start()

    def wake(self) -> None:
        """Make the listener re-read the channel set now.

        Only a listener blocked in XREAD needs a note in Redis (a round trip on the
        pool); otherwise the local event is enough. The listener sets ``_blocking``
        and then checks ``_changed`` before it blocks, and this sets ``_changed``
        and then checks ``_blocking``: one of the two sees the other.
        """
        self._changed.set()
        if self._blocking:
            self._interrupt()

    def _interrupt(self) -> None:
        """Make a blocked XREAD return: a note on the wake-up stream."""
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
                step = min(BACKOFF_CAP, BACKOFF_FIRST * 2**failures)
                delay = step / 2 + random.uniform(0, step / 2)
                self._lost(exc, delay)
                self._disconnect()
                self._closing.wait(delay)
            except Exception:
                logger.exception("Redis listener failed; restarting it")
                self._disconnect()
                self._closing.wait(BACKOFF_CAP)

    def _disconnect(self) -> None:
        """Close the listener's connection (it reconnects when it reads again)."""
        if self._listen_pool is not None:
            self._listen_pool.disconnect()

    def _snapshot(self) -> tuple[dict[str, EntryId], set[str], int] | None:
        """The channels read here with their cursors, those of them unproven, and
        how long to wait at most; ``None`` (after waiting for a change) when there
        is none, so that the listener holds no connection.

        A channel read here has subscribers, or had some less than :data:`_LINGER`
        seconds ago.
        """
        self._changed.clear()  # before the snapshot: a later change is not lost
        now = time.monotonic()
        block_ms = self._block_ms
        with self._fanout.lock:
            live = set(self._fanout.channels())
            for name in list(self._positions.cursors):
                if name in live:
                    self._idle_since.pop(name, None)
                    continue
                left = self._idle_since.setdefault(name, now) + _LINGER - now
                if left <= 0:
                    del self._positions.cursors[name], self._idle_since[name]
                    self._positions.unproven.discard(name)
                else:  # wake up when it is due to go
                    block_ms = min(block_ms, max(1, int(left * 1000) + 1))
            snapshot = dict(self._positions.cursors)
            unproven = self._positions.unproven & snapshot.keys()
        for name in [name for name in self._idle_since if name not in snapshot]:
            del self._idle_since[name]  # started again, or gone with its cursor
        if not snapshot:
            self._forget_counts()
            self._disconnect()  # idle: hold no connection
            self._changed.wait()
            return None
        self._write_counts(frozenset(snapshot))
        return snapshot, unproven, block_ms

    def _store_due(self) -> bool:
        """Whether the store is to be checked now (and then not again for a
        ``stats_interval``): after a lost connection, and every interval."""
        now = time.monotonic()
        if self._lost_at is None and now < self._check_due:
            return False
        self._check_due = now + self._stats_interval
        return True

    def _listen_once(self) -> None:
        """One XREAD over every channel read here, delivered in order.

        Before each batch of a channel is delivered, its first entry proves that
        nothing between the cursor and it was trimmed; if it cannot, the
        channel's subscribers get the gap event first (this process fell more
        than the history behind).
        """
        taken = self._snapshot()
        if taken is None:
            return
        snapshot, unproven, block_ms = taken
        if self._store_due():
            self._check_store(snapshot, unproven)
        if self._lost_at is not None:  # that was the first command to succeed
            self._back(self._lost_at)
        by_key = {self._key(name).encode(): name for name in snapshot}
        streams: dict[Any, Any] = {self._wake_key: "0-0"}
        streams.update(
            (self._key(name), format_id(cursor)) for name, cursor in snapshot.items()
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
                name
                for name in last
                if self._positions.cursors.get(name) == snapshot[name]
            }
            self._hand_over(current, broken, snapshot, last, batch)

    def _hand_over(
        self,
        current: set[str],
        broken: Iterable[str],
        snapshot: dict[str, EntryId],
        cursors: dict[str, EntryId],
        batch: list[tuple[EntryId, str, bytes]],
    ) -> None:
        """What one read found, to the fan-out (call under its lock): the gap to
        the *broken* channels, then *batch*, in order; only for the channels
        still read from their *snapshot* cursor (*current*), whose cursors move
        to *cursors*."""
        for name in broken:
            if name in current:
                self._fanout.notify([name], gap(name, snapshot[name]))
        for name in current:
            self._positions.cursors[name] = cursors[name]
            self._positions.unproven.discard(name)
            self._positions.seen(cursors[name])
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
            pipe.xrevrange(self._key(name), count=1)
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
                if self._positions.cursors.get(name) == snapshot[name]:
                    self._fanout.notify([name], gap(name, snapshot[name]))
                    self._positions.cursors[name] = snapshot[name] = cursor

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
            broker_reconnected.send(self._sender)
        except Exception:  # a receiver's bug must not stop delivery
            logger.exception("a broker_reconnected receiver failed")

    def stop(self) -> None:
        """Stop the thread (waits for its XREAD to return, up to a timeout) and
        remove this process's keys; close the connection."""
        self._closing.set()
        self._changed.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._interrupt()
            thread.join(timeout=BLOCK_MS / 1000 + 5.0)
            try:
                self._redis.delete(self._stats_key)
                if self._wake_key:
                    self._redis.delete(self._wake_key)
            except RedisError:
                pass  # the counts expire by themselves
        self._disconnect()
