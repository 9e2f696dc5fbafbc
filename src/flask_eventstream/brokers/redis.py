"""The Redis broker: events shared by every worker process and machine through Redis.

Works with Redis 6.2+ and Valkey (the same protocol). Selected by
``EVENTSTREAM_BROKER_URL = "redis://host:6379/0"`` (also ``rediss://``, ``unix://``,
``valkey://``, ``valkeys://``, and ``redis+sentinel://`` to follow a primary across
Sentinel failovers); needs ``pip install flask-eventstream[redis]``.

How it works:

- Each channel is one Redis Stream, ``<prefix>{<channel>}``. :meth:`RedisBroker.publish`
  appends with ``XADD ... MAXLEN ~ history`` (in a script, :data:`_XADD`), so Redis
  memory stays bounded. The event id is the stream entry id (``1718000000000-0``),
  unique and increasing across processes and channels (``<prefix>last-id`` holds
  the newest); an id given to ``publish`` is stored in the entry and sent instead.
- Per process, one listener thread (a greenlet under gevent) runs ``XREAD BLOCK`` on
  the streams of every channel that has subscribers here, and hands each entry to the
  local :class:`~.base.Fanout`. Publishing and replay share a pool of two connections
  (a caller waits for a free one rather than fail). So a process holds at most three
  Redis connections, however many browsers it serves.
- A subscription without ``Last-Event-ID`` to a channel the listener already reads
  here (it has subscribers here, or had some in the last :data:`_LINGER` seconds)
  needs no Redis at all: it joins the listener's cursor. Only a channel new to
  this process costs a round trip (its newest entry id), made once however many
  subscriptions arrive for it meanwhile (they wait for it); the listener is woken
  through Redis only if it is blocked in ``XREAD``.
- The listener keeps, per channel, the id of the last entry it delivered (its
  *cursor*). After a lost connection it reconnects with exponential backoff and
  jitter and resumes ``XREAD`` from the cursors: nothing Redis accepted is lost.
- Replay reads the stream backwards from the newest entry to the one the client
  named, then registers the subscription with exactly the entries up to the
  listener's cursor; the listener delivers the rest. No gap, no duplicate.
- The listener also writes this process's subscriber counts per channel into a hash,
  ``<prefix>stats:<broker>``, that expires unless it is refreshed (every
  ``stats_interval`` seconds, and whenever the set of channels changes), so
  :meth:`RedisBroker.cluster_subscriber_counts` can add up every live process. A
  process with no subscriber, or closed, has no hash.

Divergences from the memory broker, on purpose:

- Resuming from an id no longer kept flags ``missed`` also when the id was exactly
  the last entry trimmed (Redis does not say which one that was).
- With ``MAXLEN ~`` Redis trims whole nodes, so *at least* ``history`` events are
  kept per channel, sometimes more. ``history`` must be at least 1: the stream is
  also how events travel.
- A client that subscribes while Redis is down gets its stream (with the
  ``eventstream-gap`` event if it asked to resume) and live events once Redis is back.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple, cast

from redis import Redis
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from ..event import Event
from ..exceptions import (
    BrokerError,
    BrokerUnavailable,
    InvalidEvent,
    PublishUncertain,
)
from ..signals import broker_reconnected
from ._redis_pools import make_pools
from .base import GAP_EVENT, Broker, Fanout, Subscription

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

#: Errors that mean "Redis cannot be reached or cannot take writes right now".
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)

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

_ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
#: The largest part of a stream entry id Redis can hold (an unsigned 64-bit number).
_ID_PART_MAX = 2**64 - 1

# Fields of a stream entry: data, event type, explicit id, retry, publish token, and
# the id of the entry that was the stream's newest when this one was added
# (``0-0``: the stream was empty), which lets a reader prove it missed nothing.
_DATA, _TYPE, _ID, _RETRY, _TOKEN, _PREVIOUS = b"d", b"e", b"i", b"r", b"t", b"p"
#: How many of a stream's newest entries a publish looks through for its own token.
_DEDUPE_WINDOW = 64
#: Seconds Redis remembers an ``idempotency_key`` given to ``publish``.
_KEY_TTL = 3600

#: XADD with an id unique across all channels, not only within one stream: the
#: Redis clock in ms and a sequence number, both taken from the last id given out
#: (KEYS[2]) so they never go back. Then a multi-channel stream resumed from one
#: channel's id cannot skip another channel's entry that got the same id. An id
#: refused (a stream written by something else) falls back to the stream's own.
#: A publish is retried once when its connection breaks; if the first attempt was
#: stored and only the reply was lost, the retry finds the attempt's random token
#: (field ``t``) among the newest entries and returns that entry's id instead of
#: storing the event twice. An app's own idempotency key (ARGV[4] is "1") is also
#: kept under KEYS[3] for an hour, with the entry id, so a retry much later finds it.
#: Each entry records the stream's newest id before it (field ``p``).
#: KEYS: stream, last-id key, idempotency key;
#: ARGV: maxlen, token, dedupe window, keyed, key ttl, field, value, ...
_XADD = """
if redis.replicate_commands then redis.replicate_commands() end
if ARGV[4] == '1' then
    local known = redis.call('GET', KEYS[3])
    if known then return known end
end
local recent = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[3])
for _, entry in ipairs(recent) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
        if fields[i] == 't' and fields[i + 1] == ARGV[2] then
            return entry[1]
        end
    end
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local seq = 0
local last = redis.call('GET', KEYS[2])
if last then
    local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
    if last_ms and ms <= tonumber(last_ms) then
        ms = tonumber(last_ms)
        seq = tonumber(last_seq) + 1
    end
end
local id = string.format('%.0f-%.0f', ms, seq)
local previous = '0-0'
if recent[1] then previous = recent[1][1] end
local added = redis.pcall(
    'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'p', previous, unpack(ARGV, 6))
if type(added) == 'table' and added.err then
    added = redis.call(
        'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'p', previous, unpack(ARGV, 6))
end
redis.call('SET', KEYS[2], added)
if ARGV[4] == '1' then redis.call('SET', KEYS[3], added, 'EX', ARGV[5]) end
return added
"""

#: A stream entry id as (milliseconds, sequence), so that ids compare correctly.
EntryId = tuple[int, int]
_ORIGIN: EntryId = (0, 0)


#: A stream entry as redis-py returns it (``decode_responses=False``).
_RawEntry = tuple[bytes, dict[bytes, bytes]]


def _raw(reply: Any) -> list[_RawEntry]:
    """The entries of an XRANGE/XREVRANGE reply (redis-py types it loosely)."""
    return cast("list[_RawEntry]", reply or [])


class _Entry(NamedTuple):
    id: EntryId
    wire: bytes


class _Scan(NamedTuple):
    """One channel's stream read backwards for a resume (see ``_scan_back``)."""

    #: The newest entry's id (the origin if the stream is empty).
    top: EntryId
    #: The id of the entry the client named, if this stream has it.
    found: EntryId | None
    #: The entries after where the scan stopped, oldest first.
    entries: list[_Entry]
    #: Whether the scan reached the stream's oldest entry without stopping, and
    #: the ``p`` field of that entry (``None``: none, or it has no such field).
    reached_start: bool
    oldest_previous: EntryId | None


def _gap(channel: str, cursor: EntryId) -> bytes:
    """The gap event for the subscribers of *channel* when this process cannot
    prove it delivered every entry after *cursor*, the last one it delivered."""
    note = {"channel": channel, "last_event_id": _format_id(cursor)}
    return Event(json.dumps(note), event=GAP_EVENT).encode()


#: What a history read gives: per channel the newest entry id read and the entries
#: to replay (oldest first); and whether events may have been missed.
_Replay = tuple[dict[str, tuple[EntryId, list[_Entry]]], bool]


class _Sent(Exception):
    """A publish command was written to Redis, then its reply failed."""


class _Read:
    """One history read in flight, shared by the subscriptions that wait for it."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: _Replay | None = None


def _parse_id(raw: bytes | str) -> EntryId:
    """An entry id that Redis gave (so well formed) as a comparable pair."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _entry_id(text: str) -> EntryId | None:
    """*text* as a stream entry id, if it is one Redis could hold; else ``None``.

    A client's ``Last-Event-ID`` goes through this: a value beyond what a stream
    id holds (such as ``99999999999999999999-0``) is no position at all.
    """
    match = _ENTRY_ID.fullmatch(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    if ms > _ID_PART_MAX or seq > _ID_PART_MAX:
        return None
    return ms, seq


def _plausible(position: EntryId) -> bool:
    """Whether *position* could be an id given out by now: no more than a minute
    ahead of this host's clock (ids are Redis' clock in ms)."""
    return position[0] <= time.time_ns() // 1_000_000 + 60_000


def _format_id(entry_id: EntryId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _glob_escape(text: str) -> str:
    """*text* as a literal in a Redis ``SCAN MATCH`` pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


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
        self._history = history
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
        self._stats_key = f"{key_prefix}stats:{token}"
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
        # The newest entry id given out, by any process: keeps ids unique across
        # channels (see _XADD).
        self._last_id_key = f"{key_prefix}last-id"
        self._xadd = self._redis.register_script(_XADD)
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

    # Publishing

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
        fields: list[bytes | str] = [_DATA, event.data.encode()]
        if event.event is not None:
            fields += [_TYPE, event.event]
        if event.id is not None:
            fields += [_ID, event.id]
        if event.retry is not None:
            fields += [_RETRY, str(event.retry)]
        token = idempotency_key or secrets.token_hex(8)
        fields += [_TOKEN, token]
        keyed = idempotency_key is not None
        idempotency = f"{self.key(channel)}:key:{token}" if keyed else self.key(channel)
        keys = [self.key(channel), self._last_id_key, idempotency]
        args = [self._history, token, _DEDUPE_WINDOW, int(keyed), _KEY_TTL, *fields]
        raw = self._store(channel, token, keys, args)
        self._seen(_parse_id(raw))
        if event.id is None:
            event = replace(event, id=raw.decode())
        return event

    def _store(
        self, channel: str, token: str, keys: list[str], args: list[Any]
    ) -> bytes:
        """Run the publish script; the new (or already stored) entry's id.

        Two attempts, the second on a fresh connection: a pooled connection may
        be dead (Redis restarted), and the token makes a second run of a stored
        attempt return the first one's entry. What is raised says whether the
        command may have run: only a failure before any attempt was sent is
        "not stored".
        """
        pool: Any = self._pool  # redis-py leaves these methods untyped
        sent = False
        failure: BaseException | None = None
        for _ in range(2):
            try:
                connection = pool.get_connection()
            except _UNAVAILABLE as exc:
                failure = exc
                break  # cannot connect: no second attempt will either
            try:
                return self._run_script(connection, keys, args)
            except _Sent as exc:
                sent = True
                failure = exc.__cause__
                connection.disconnect()
            except ResponseError as exc:  # an answer: certainly not stored
                refused: type[BrokerError] = (
                    BrokerUnavailable if isinstance(exc, ReadOnlyError) else BrokerError
                )
                raise refused(
                    f"Redis at {self._where} refused the event for channel "
                    f"{channel!r}: {exc}"
                ) from exc
            except _UNAVAILABLE as exc:  # failed while sending: not run
                failure = exc
                connection.disconnect()
            finally:
                pool.release(connection)
        if sent:
            raise PublishUncertain(
                f"Redis at {self._where} did not answer in time ({failure}); the "
                f"event for channel {channel!r} may or may not have been stored: "
                "retry with this exception's idempotency_key",
                channel=channel,
                idempotency_key=token,
            ) from failure
        raise BrokerUnavailable(
            f"Redis at {self._where} is unavailable ({failure}); the event for "
            f"channel {channel!r} was not published"
        ) from failure

    def _run_script(self, connection: Any, keys: list[str], args: list[Any]) -> bytes:
        """EVALSHA the publish script on *connection* (EVAL if Redis lacks it).

        :raises _Sent: the command was written and then the reply failed (from
            the Redis error as ``__cause__``).
        """
        script = self._xadd
        for command, body in (("EVALSHA", script.sha), ("EVAL", script.script)):
            connection.send_command(command, body, len(keys), *keys, *args)
            try:
                return cast(bytes, connection.read_response())
            except NoScriptError:
                continue  # certainly not run: send the script itself
            except ResponseError:
                raise  # an answer (out of memory, read-only): not run
            except _UNAVAILABLE as exc:
                raise _Sent() from exc
        raise BrokerError("Redis did not take the publish script")

    # Subscribing

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
        except _UNAVAILABLE as exc:
            logger.warning(
                "Redis at %s is unavailable (%s): channels %s get live events only "
                "once it is back",
                self._where,
                exc,
                names,
            )
            position = _entry_id(last_event_id)
            if position is not None and not _plausible(position):
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
            start = {name: upto for name, (upto, _) in self._newest(fresh).items()}
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

    def _shared_history(self, names: list[str], last_event_id: str) -> _Replay:
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
                read.result = self._history_after(names, last_event_id)
            finally:
                with self._reads_lock:
                    del self._reads[key]
                read.done.set()
        else:
            read.done.wait(_START_WAIT)
        # The leader failed (Redis is down: this fails too) or took too long.
        replay, missed = read.result or self._history_after(names, last_event_id)
        copies = {name: (upto, list(found)) for name, (upto, found) in replay.items()}
        return copies, missed

    def _newest(self, names: list[str]) -> dict[str, tuple[EntryId, list[_Entry]]]:
        """For each channel: the id of its newest entry, and no backlog."""
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.xrevrange(self.key(name), count=1)
        newest = pipe.execute()
        return {
            name: (_parse_id(found[0][0]) if found else _ORIGIN, [])
            for name, found in zip(names, newest, strict=True)
        }

    def _history_after(self, names: list[str], last_event_id: str) -> _Replay:
        """For each channel: the newest entry id read and the entries after the one
        *last_event_id* names, oldest first; and whether events may have been missed.

        Nothing is missed only if one of the channels holds the entry named (by
        its entry id, or by the id it was published with), and no channel trimmed
        entries after it. Entries at or before a position are never replayed.
        """
        position = _entry_id(last_event_id)
        scans = {
            name: self._scan_back(self.key(name), last_event_id.encode(), position)
            for name in names
        }
        found = [scan.found for scan in scans.values() if scan.found is not None]
        if found:
            # An explicit id names an entry of one channel; its entry id is the
            # position in the others (entry ids are times on one Redis clock).
            position = max(found)
        missed = not found or any(
            self._trimmed(name, scan, position)
            for name, scan in scans.items()
            if position is not None
        )
        replay: dict[str, tuple[EntryId, list[_Entry]]] = {}
        for name, scan in scans.items():
            entries = scan.entries
            if position is not None:
                entries = [entry for entry in entries if entry.id > position]
            replay[name] = (scan.top, entries)
        return replay, missed

    def _scan_back(self, key: str, wanted: bytes, position: EntryId | None) -> _Scan:
        """Read *key* newest first down to the entry *wanted* names (its explicit id)
        or to *position*, or to the stream's start (see :class:`_Scan`)."""
        newer: list[_Entry] = []
        top: EntryId | None = None
        upper: bytes | str = "+"
        page = 64  # a client resuming usually missed a few events: one round trip
        while True:
            batch = _raw(self._redis.xrevrange(key, max=upper, min="-", count=page))
            for raw_id, fields in batch:
                entry_id = _parse_id(raw_id)
                if top is None:
                    top = entry_id
                if fields.get(_ID) == wanted or (
                    position is not None and entry_id <= position
                ):
                    newer.reverse()
                    hit = fields.get(_ID) == wanted or entry_id == position
                    return _Scan(top, entry_id if hit else None, newer, False, None)
                wire = self._encode(raw_id, fields)
                if wire is not None:
                    newer.append(_Entry(entry_id, wire))
            if len(batch) < page:
                newer.reverse()
                previous = batch[-1][1].get(_PREVIOUS) if batch else None
                return _Scan(
                    top or _ORIGIN,
                    None,
                    newer,
                    True,
                    _parse_id(previous) if previous is not None else None,
                )
            upper = b"(" + batch[-1][0]
            page = min(page * 4, 1024)

    def _trimmed(self, name: str, scan: _Scan, position: EntryId) -> bool:
        """Whether *name*'s stream dropped entries newer than *position*."""
        if not scan.reached_start:
            return False  # it still holds an entry at or before the position
        if scan.oldest_previous is not None:
            # The oldest entry kept says which entry came before it: was that
            # one newer than the position (and so lost)?
            return scan.oldest_previous > position
        return self._trimmed_after(self.key(name), position)

    def _trimmed_after(self, key: str, position: EntryId) -> bool:
        """Whether *key* dropped entries newer than *position* (trimmed history),
        for a stream whose oldest entry does not say what came before it.

        Trimming drops the oldest entries, so it did if entries were dropped at all
        and the oldest one kept is newer than *position*. (It errs towards "yes"
        when *position* is exactly the last entry dropped.)
        """
        try:
            info = self._redis.xinfo_stream(key)
        except ResponseError:  # no such key: nothing was ever dropped from it
            return False
        first = info.get("first-entry")
        if not first or _parse_id(first[0]) <= position:
            return False
        added = info.get("entries-added")
        if added is not None:  # Redis 7+
            return int(added) > int(info.get("length", 0))
        # Redis 6.2: MAXLEN only trims a stream that reached its length.
        return int(info.get("length", 0)) >= self._history

    def _register(
        self,
        names: list[str],
        replay: dict[str, tuple[EntryId, list[_Entry]]],
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
        replay: dict[str, tuple[EntryId, list[_Entry]]],
        behind: dict[str, EntryId],
    ) -> None:
        for name, cursor in behind.items():
            upto, entries = replay[name]
            batch = _raw(
                self._redis.xrange(
                    self.key(name), min=f"({_format_id(upto)}", max=_format_id(cursor)
                )
            )
            for raw_id, fields in batch:
                wire = self._encode(raw_id, fields)
                if wire is not None:
                    entries.append(_Entry(_parse_id(raw_id), wire))
            replay[name] = (cursor, entries)

    def _register_locked(
        self,
        names: list[str],
        replay: dict[str, tuple[EntryId, list[_Entry]]],
        missed: bool,
        read: set[str],
    ) -> tuple[Subscription, bool]:
        backlog: list[_Entry] = []
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
        self._seen(max((upto for upto, _ in replay.values()), default=_ORIGIN))
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
        pattern = _glob_escape(f"{self._prefix}stats:") + "*"
        try:
            keys = list(self._redis.scan_iter(match=pattern, count=1000))
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            hashes = cast("list[dict[bytes, bytes]]", pipe.execute())
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(
                f"Redis at {self._where} is unavailable ({exc}); cannot count "
                "subscribers"
            ) from exc
        totals: dict[str, int] = {}
        for counts in hashes:  # empty if it expired since SCAN saw it
            for name, count in counts.items():
                channel = name.decode()
                totals[channel] = totals.get(channel, 0) + int(count)
        return totals

    # The listener

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
            (self.key(name), _format_id(cursor)) for name, cursor in snapshot.items()
        )
        self._blocking = True
        try:
            if self._changed.is_set():
                return  # a channel came meanwhile: read the channel set again
            reply = cast(
                "list[tuple[bytes, list[_RawEntry]]]",
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
                previous = entries[0][1].get(_PREVIOUS)
                if previous is not None and _parse_id(previous) > snapshot[channel]:
                    broken.append(channel)  # entries after the cursor were trimmed
            for raw_id, fields in entries:
                entry_id = last[channel] = _parse_id(raw_id)
                wire = self._encode(raw_id, fields)
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
                    self._fanout.notify([name], _gap(name, snapshot[name]))
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
            top = _parse_id(found[0][0]) if found else _ORIGIN
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
                    self._fanout.notify([name], _gap(name, snapshot[name]))
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

    def _encode(self, raw_id: bytes, fields: dict[bytes, bytes]) -> bytes | None:
        """The wire form of a stream entry; ``None`` (logged) if it is not ours."""
        explicit = fields.get(_ID)
        retry = fields.get(_RETRY)
        kind = fields.get(_TYPE)
        try:
            event = Event(
                fields.get(_DATA, b"").decode(),
                event=kind.decode() if kind is not None else None,
                id=(explicit or raw_id).decode(),
                retry=int(retry) if retry is not None else None,
            )
            return event.encode()
        except (InvalidEvent, UnicodeDecodeError, ValueError):
            logger.warning("skipping stream entry %r: not an event", raw_id)
            return None

    # Shutting down

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
