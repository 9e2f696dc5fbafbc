"""The broker protocol, and the local fan-out that every broker shares.

A broker stores recent events per channel (for replay) and hands each published
event to every :class:`Subscription` of its channel in this process. The memory
broker does both in memory; the Redis broker stores in Redis and feeds a
:class:`Fanout` from one listener per process.

Ownership: a :class:`Fanout` and every :class:`Subscription` it holds are guarded
by the fan-out's one lock. Publishers (any thread or greenlet) and the fan-out's
heartbeat ticker write under it; a subscription has exactly one reader, the
response that streams it, in the OS thread that subscribed (under gevent its
waits park on that thread's hub).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..event import Event, encode_comment

if TYPE_CHECKING:
    from gevent.hub import Hub, Waiter

__all__ = ["GAP_EVENT", "Broker", "Fanout", "Subscription", "end_all_streams"]

logger = logging.getLogger(__name__)

#: Most bytes :meth:`Subscription.next_chunk` returns at once (unless one event is
#: larger): a slow reader writes bounded pieces, never everything queued as one copy.
WRITE_SIZE = 64 * 1024

#: Default of :attr:`Fanout.buffer_bytes`: bytes that may wait for one subscriber.
#: About where the default 1,000-event buffer ends for 8 KiB events: a Redis
#: listener catching up delivers up to 1,000 events at once, and a reader that
#: keeps up must not be cut off for it (1 MiB cut off all 100 readers of 8 KiB
#: events at 500/s on the Redis broker).
BUFFER_BYTES = 8 * 1024 * 1024

#: Name of the event that tells a subscriber it may have missed events: at the start
#: of a stream that resumed from an id the broker cannot vouch for, or in an open
#: stream when the broker lost track of a channel (its data is JSON and names the
#: channel). It has no ``id:`` field, so it never moves the client's last event id.
#: Listen with ``source.addEventListener("eventstream-gap", ...)`` and reload the
#: page's state. Also written last, with ``{"last_event_id": null}``, to a client
#: cut off for falling behind before it got any event: it has no id to resume from.
GAP_EVENT = "eventstream-gap"

_NEVER = math.inf
#: Shortest interval between two rounds of the heartbeat ticker, in seconds.
_MIN_TICK = 0.01
#: Rounds of the heartbeat ticker per (shortest) heartbeat interval: a reader is
#: woken for its heartbeat at most this fraction of an interval early.
_TICKS_PER_HEARTBEAT = 8

#: Seconds a reader with :attr:`Fanout.buffer` events queued is given to show
#: progress before it is cut off: to run once woken (it may have had no CPU: a
#: publisher that did not yield, a busy process), or to finish the write of what
#: it took last (a client that reads, if slowly). A reader blocked longer on its
#: client has fallen behind.
STALL_GRACE = 1.0

#: Written to a subscriber that fell too far behind, just before its stream ends.
TOO_SLOW = encode_comment(
    "eventstream: this client fell too far behind and is disconnected; "
    "reconnect with Last-Event-ID to resume"
)

#: Written to every subscriber when the process shuts down (:func:`end_all_streams`).
SHUTTING_DOWN = encode_comment(
    "eventstream: this server is shutting down; reconnect with Last-Event-ID"
)

# Every fan-out of this process, so that a shutdown hook (a signal handler, which
# knows no app) can end all open streams. Weak: it keeps no broker alive and holds
# no state a test would have to reset.
_fanouts: weakref.WeakSet[Fanout] = weakref.WeakSet()


def end_all_streams(last: bytes = SHUTTING_DOWN) -> int:
    """End every open stream of this process, writing *last* to each; refuse new ones.

    For a worker that is asked to stop (SIGTERM): each response then ends its body
    cleanly, so browsers reconnect (to another worker) and resume with
    ``Last-Event-ID`` (S11), instead of holding the worker until its graceful
    timeout and being cut off. Subscriptions made afterwards end at once.
    :mod:`flask_eventstream.gunicorn` calls it on SIGTERM.

    :return: how many subscriptions were ended.
    """
    return sum(fanout.end_all(last, close=True) for fanout in list(_fanouts))


def _gevent_hub() -> Hub | None:
    """This thread's gevent hub when gevent has patched ``threading``, else ``None``.

    Then the reader of a subscription is a greenlet, and it parks on a gevent
    ``Waiter`` instead of a lock (see :class:`Subscription`).
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return None
    return _get_hub()()


@functools.cache
def _get_hub() -> Callable[[], Hub]:
    """gevent's ``get_hub`` (imported once, not for every subscription)."""
    from gevent.hub import get_hub

    return get_hub


@functools.cache
def _waiter_type() -> type[Waiter[Any]]:
    """gevent's ``Waiter`` class (imported once, not on every wait)."""
    from gevent.hub import Waiter

    return Waiter


@functools.cache
def _hub_if_exists() -> Callable[[], Hub | None]:
    """gevent's ``get_hub_if_exists`` (imported once, not on every wake-up)."""
    from gevent._hub_local import get_hub_if_exists

    return get_hub_if_exists


@functools.cache
def _gevent_sleep() -> Callable[[float], None]:
    """gevent's ``sleep`` (imported once, not on every yield)."""
    from gevent import sleep

    return sleep


def _let_readers_run() -> None:
    """Under gevent, let the readers woken on this thread's hub run once.

    A publisher that never blocks (``publish()`` in a loop) would otherwise fill
    every reader's queue before any of them writes. ``sleep(0)`` queues this
    greenlet behind the readers' wake-ups (see :func:`_schedule_switches`).
    """
    hub = _hub_if_exists()()
    if hub is not None and _getcurrent()() is not hub:
        _gevent_sleep()(0)


@functools.cache
def _getcurrent() -> Callable[[], object]:
    """greenlet's ``getcurrent`` (imported once)."""
    from greenlet import getcurrent

    return getcurrent


def _schedule_switches(waiters: list[Waiter[None]]) -> None:
    """Have each waiter's hub resume its parked reader, soon: one hub callback each.

    Not one callback for all, nor for a few: gevent's loop polls for I/O only
    between callbacks, once every 50 if its switch interval is spent. Waking 1,000
    readers takes tens of milliseconds, and a publisher waiting on Redis' reply
    must not wait for all of them (with callbacks of 8 readers, Redis bursts
    reached a quarter of their rate).
    """
    here = _hub_if_exists()()
    for waiter in waiters:
        hub = waiter.hub
        if hub is here:
            hub.loop.run_callback(waiter.switch, None)
        else:  # a publisher on another OS thread: wake that hub's loop too
            hub.loop.run_callback_threadsafe(waiter.switch, None)


class Subscription:
    """One subscriber's queue of encoded events, read by the response that streams it.

    Publishing never blocks here: :meth:`Fanout.deliver` appends bytes and, only when
    the reader is not already woken, wakes it. The reader takes what is queued, up
    to :data:`WRITE_SIZE` bytes, in one :meth:`next_chunk` call and writes it in one
    write.

    How a reader waits: with threads, on a lock held while it has nothing to do,
    which a publisher releases. Under gevent (``threading`` patched), a greenlet
    parks on a ``gevent.hub.Waiter`` of its own, which the fan-out switches from a
    hub callback: about a third less stack saved per parked stream than a lock,
    and none of a lock's notifier machinery per reader per event (figures in
    ``docs/performance.md``).

    ``missed`` is true when the subscriber asked to resume from an id the broker no
    longer has (or never had): events may have been lost in between.

    Cut-off: a subscriber with :attr:`Fanout.buffer_bytes` queued is cut off
    (:data:`TOO_SLOW`) and its queue dropped; so is one with :attr:`Fanout.buffer`
    events queued, unless its reader made progress in the last
    :data:`STALL_GRACE` seconds (it was woken that recently and has not run yet,
    or took its last chunk that recently and is still writing it): the count
    measures lag, not a burst the reader had no CPU for yet. If the reader is
    writing when it is cut off, :attr:`on_cut_off` is called so that the write
    blocked on its client is ended too.

    :attr:`on_cut_off` is set by the response that streams the subscription and
    called by the publisher that cut it off, once the fan-out's lock is released.
    """

    __slots__ = (
        "channels",
        "missed",
        "on_cut_off",
        "delivered",
        "cut_off",
        "_fanout",
        "_pending",
        "_size",
        "_wakeup",
        "_hub",
        "_waiter",
        "_woken",
        "_ended",
        "_deadline",
        "_reading",
        "_woken_at",
        "_took_at",
    )

    def __init__(
        self, fanout: Fanout, channels: Sequence[str], *, missed: bool = False
    ) -> None:
        self.channels = tuple(channels)
        self.missed = missed
        #: Called (with no argument) when this subscription is cut off while its
        #: reader is writing, so that the response can end that write.
        self.on_cut_off: Callable[[], None] | None = None
        #: Whether :meth:`next_chunk` has returned queued events (not only a
        #: heartbeat or the final comment).
        self.delivered = False
        #: Whether the subscription ended because it fell too far behind.
        self.cut_off = False
        self._fanout = fanout
        self._pending: list[bytes] = []
        self._size = 0  # bytes in _pending
        # ``_woken``: something is queued, the subscription ended, or a heartbeat is
        # due, and the reader was woken for it (once: later events join the queue).
        self._woken = False
        # Threads: a lock held while the reader has nothing to do, released on wake.
        # Greenlets: a fresh Waiter whenever ``_woken`` is reset, switched once on
        # wake; if the reader is not parked on it yet, it keeps the wake-up for the
        # reader's next ``get()``.
        self._hub = _gevent_hub()
        self._waiter: Waiter[None] | None = None
        self._wakeup: threading.Lock | None = None
        if self._hub is None:
            self._wakeup = threading.Lock()
            self._wakeup.acquire()
        else:
            self._waiter = _waiter_type()(self._hub)
        self._ended = False
        # When the waiting reader is due a heartbeat (time.monotonic()); the
        # fan-out's one ticker wakes it then, so no wait needs a timer of its own.
        self._deadline = _NEVER
        # The reader is inside next_chunk(): waiting, or woken and not yet run.
        self._reading = False
        # When ``_woken`` was last set, and when the reader last took queued
        # bytes (time.monotonic()); for STALL_GRACE.
        self._woken_at = 0.0
        self._took_at = 0.0

    def next_chunk(self, timeout: float) -> bytes | None:
        """Wait up to about *timeout* seconds and return queued bytes, joined.

        At most about :data:`WRITE_SIZE` bytes are returned at once (one event may be
        larger); the rest is returned by the next calls, at once.

        :return: the bytes to write; ``b""`` if nothing came in time (the caller
            writes a heartbeat); ``None`` once the subscription has ended and
            everything queued was returned.
        """
        fanout = self._fanout
        if timeout > 0 and (fanout._ticker is None or timeout < fanout._shortest):
            fanout._need_ticks(timeout)
        self._reading = True
        if not self._wait(timeout):
            self._reading = False
            return b""
        with fanout.lock:
            self._reading = False
            self._deadline = _NEVER
            pending = self._pending
            if self._size <= WRITE_SIZE:
                self._pending = []
                self._size = 0
            else:
                pending = self._take(WRITE_SIZE)
            if not (self._pending or self._ended):
                self._woken = False
                if self._hub is not None:
                    self._waiter = _waiter_type()(self._hub)
            elif self._wakeup is not None:  # stay woken: more to return, or None
                self._wakeup.release()
            if self._ended:
                if not pending:
                    return None
            elif pending:
                self.delivered = True
                self._took_at = time.monotonic()
        return b"".join(pending)

    def _wait(self, timeout: float) -> bool:
        """Wait until woken (no timeout: the ticker wakes us when a heartbeat is
        due); with *timeout* ``<= 0`` only look. Whether we were woken."""
        if self._wakeup is not None:  # threads: the lock is free while woken
            if timeout <= 0:
                return self._wakeup.acquire(blocking=False)
            self._deadline = time.monotonic() + timeout
            return self._wakeup.acquire()
        # Greenlets. No lock needed to read ``_woken``: only this reader resets it,
        # and a wake that comes after this read switches the very waiter we get().
        if timeout <= 0 or self._woken:
            return self._woken
        self._deadline = time.monotonic() + timeout
        assert self._waiter is not None  # armed whenever _woken is false
        self._waiter.get()
        return True

    def close(self) -> None:
        """Unsubscribe. Idempotent; safe from any thread."""
        self._fanout.remove(self)

    # Called by the fan-out or the reader, under the fan-out's lock.
    def _take(self, size: int) -> list[bytes]:
        """Remove and return the oldest queued chunks: about *size* bytes, 1 or more."""
        count = taken = 0
        for chunk in self._pending:
            if count and taken + len(chunk) > size:
                break
            count += 1
            taken += len(chunk)
        head = self._pending[:count]
        del self._pending[:count]
        self._size -= taken
        return head

    def _wake(self, now: float) -> None:
        """Wake the reader, unless it is woken already; *now* (monotonic) is
        when, for :meth:`_stalled`."""
        if not self._woken:
            self._woken = True
            self._woken_at = now
            if self._wakeup is not None:
                self._wakeup.release()
            elif self._waiter is not None:  # parked or not: see __init__
                self._fanout.lock.switch_after(self._waiter)

    def _put(self, chunk: bytes, limit: int, limit_bytes: int, now: float) -> bool:
        if self._ended:
            return False
        if self._pending and (
            self._size + len(chunk) > limit_bytes
            or (len(self._pending) >= limit and self._stalled(now))
        ):
            self._cut_off()
            return False
        self._pending.append(chunk)
        self._size += len(chunk)
        self._wake(now)
        return True

    def _stalled(self, now: float) -> bool:
        """Whether the reader made no progress for :data:`STALL_GRACE` (see above).

        Without a reader (nothing ever taken, no one waiting), at once.
        """
        since = self._woken_at if self._reading else self._took_at
        return now - since >= STALL_GRACE

    def _cut_off(self) -> None:
        """End it as too slow: its queue dropped, :data:`TOO_SLOW` written last."""
        self.cut_off = True
        self._end(TOO_SLOW, replace=True)

    def _end(self, last: bytes = b"", *, replace: bool = False) -> None:
        if replace:
            self._pending = []
            self._size = 0
        if last:
            self._pending.append(last)
            self._size += len(last)
        self._ended = True
        self._wake(time.monotonic())

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _FanoutLock:
    """The fan-out's lock; callbacks queued under it run once it is released.

    So a callback (a ``subscriber_dropped`` receiver) may itself publish: it runs
    after the lock is given back, in the thread that released it. Greenlet readers
    woken under the lock are resumed by hub callbacks scheduled on release.
    """

    __slots__ = ("_lock", "_after", "_switches")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._after: list[Callable[[], None]] = []
        self._switches: list[Waiter[None]] = []

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        if self._switches:
            switches, self._switches = self._switches, []
            _schedule_switches(switches)
        if not self._after:
            self._lock.release()
            return
        after, self._after = self._after, []
        self._lock.release()
        for callback in after:
            try:
                callback()
            except Exception:  # one failing receiver must not stop delivery
                logger.exception("a fan-out callback failed")

    def locked(self) -> bool:
        return self._lock.locked()

    def call_after(self, callback: Callable[[], None]) -> None:
        """Run *callback* once the lock is released. Call under the lock."""
        self._after.append(callback)

    def switch_after(self, waiter: Waiter[None]) -> None:
        """Resume the greenlet parked on *waiter* (from its hub) once the lock is
        released. Call under the lock."""
        self._switches.append(waiter)


def _tick(ref: weakref.ref[Fanout]) -> None:
    """The heartbeat ticker of one fan-out: wakes its readers that are due.

    Sleeps the fan-out's tick between rounds (no polling); holds the fan-out only
    weakly while it sleeps; ends when the fan-out is gone or has no subscribers.
    """
    while True:
        fanout = ref()
        if fanout is None:
            return
        changed, tick = fanout._tick_changed, fanout._tick
        del fanout
        if changed.wait(tick):  # a shorter tick was asked for: wait that instead
            changed.clear()
            continue
        fanout = ref()
        if fanout is None or not fanout._wake_due():
            return
        del fanout


class Fanout:
    """The subscribers of this process, by channel, and delivery to them.

    Heartbeats: one ticker per fan-out (a daemon thread, a greenlet under gevent)
    wakes, every ``_tick`` seconds (an eighth of the shortest heartbeat a reader
    waits with), each reader whose heartbeat falls due before its next round, so
    that no waiting reader needs a timer and no heartbeat comes late.
    It starts with the first reader that waits and ends when no subscriber is left
    (so a process that forks before it streams, as gunicorn's master does with
    ``--preload``, hands its workers no ticker to miss).

    :param buffer: how many events may wait for one subscriber; past that it is cut
        off with a comment (:data:`TOO_SLOW`) and its browser reconnects and replays.
    :param buffer_bytes: how many bytes may wait for one subscriber; past that too it
        is cut off (one event of any size may always wait).
    :param on_drop: called with each subscription cut off as too slow, after the
        lock is released (so it may publish).

    Under gevent, a publisher that finds a reader's queue half way to
    :attr:`buffer` yields once (``gevent.sleep(0)``) after the lock is released,
    so that readers on its hub write before it publishes more.
    """

    def __init__(
        self,
        *,
        buffer: int = 1000,
        buffer_bytes: int = BUFFER_BYTES,
        on_drop: Callable[[Subscription], None] | None = None,
    ) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, got {buffer}")
        if buffer_bytes < 1:
            raise ValueError(f"buffer_bytes must be at least 1, got {buffer_bytes}")
        self.lock = _FanoutLock()
        self.buffer = buffer
        self.buffer_bytes = buffer_bytes
        self.on_drop = on_drop
        self._by_channel: dict[str, set[Subscription]] = {}
        # Subscriptions that skip events up to a position (see subscribe); rare.
        self._floors: dict[Subscription, Any] = {}
        self._closed = False
        self._yielding = False  # a yield to the readers is queued (call_after)
        self._ticker: threading.Thread | None = None
        self._shortest = _NEVER  # the shortest heartbeat a reader waited with
        self._tick = _NEVER  # seconds between two rounds of the ticker
        self._tick_changed = threading.Event()
        _fanouts.add(self)

    def subscribe(
        self,
        channels: Sequence[str],
        backlog: Iterable[bytes] = (),
        *,
        missed: bool = False,
        after: Any = None,
    ) -> Subscription:
        """Register a subscription, *backlog* queued first. Call under the lock.

        :param after: a position (comparable with the ``order`` given to
            :meth:`deliver`): events at or before it are not queued for this
            subscription. For a resume whose backlog could not be read.
        """
        sub = Subscription(self, channels, missed=missed)
        for chunk in backlog:
            sub._pending.append(chunk)
            sub._size += len(chunk)
        if sub._pending:
            sub._wake(time.monotonic())
        if self._closed:  # shutting down: replay the backlog, then end
            sub._end(SHUTTING_DOWN)
            return sub
        for channel in sub.channels:
            self._by_channel.setdefault(channel, set()).add(sub)
        if after is not None:
            self._floors[sub] = after
        return sub

    def deliver(self, channel: str, chunk: bytes, order: Any = None) -> None:
        """Queue *chunk* for every subscriber of *channel*. Call under the lock.

        Subscribers too far behind are cut off; :attr:`on_drop` hears of each once
        the lock is released.

        :param order: the event's position, if the broker knows one: a subscriber
            registered with ``after`` at or past it skips the event.
        """
        subs = self._by_channel.get(channel)
        if not subs:
            return
        if self._floors and order is not None:
            floors = self._floors
            subs = {sub for sub in subs if sub not in floors or floors[sub] < order}
        buffer, buffer_bytes = self.buffer, self.buffer_bytes
        now = time.monotonic()
        dropped: list[Subscription] = []
        crowded = False
        for sub in subs:
            if not sub._put(chunk, buffer, buffer_bytes, now):
                dropped.append(sub)
            elif sub._hub is not None and 2 * len(sub._pending) > buffer:
                crowded = True
        if crowded and not self._yielding:
            # A greenlet reader half way to its cut-off: the publisher lets the
            # readers run before it goes on, so a burst does not cut them off.
            self._yielding = True
            self.lock.call_after(self._let_readers_run)
        for sub in dropped:
            self._dropped(sub)

    def _dropped(self, sub: Subscription) -> None:
        """Forget *sub*, cut off; have its write ended and :attr:`on_drop` told."""
        self._discard(sub)
        if sub.on_cut_off is not None and not sub._reading:
            self.lock.call_after(sub.on_cut_off)
        if self.on_drop is not None:
            self.lock.call_after(functools.partial(self.on_drop, sub))

    def _let_readers_run(self) -> None:
        self._yielding = False
        _let_readers_run()

    def notify(self, channels: Iterable[str], chunk: bytes) -> None:
        """Queue *chunk* once for every subscriber of any of *channels* (a gap
        event). Call under the lock."""
        subs = {sub for name in channels for sub in self._by_channel.get(name, ())}
        now = time.monotonic()
        for sub in subs:
            if not sub._ended:  # never cut off for a notice
                sub._pending.append(chunk)
                sub._size += len(chunk)
                sub._wake(now)

    def remove(self, sub: Subscription) -> None:
        """Unsubscribe *sub* and end it. Takes the lock."""
        with self.lock:
            self._discard(sub)
            if not sub._ended:
                sub._end()

    def end_all(self, last: bytes = b"", *, close: bool = False) -> int:
        """End every subscription, writing *last* to each. Takes the lock.

        :param close: also end every later subscription at once (shutdown).
        :return: how many subscriptions were ended.
        """
        with self.lock:
            self._closed = self._closed or close
            subs = {sub for group in self._by_channel.values() for sub in group}
            self._by_channel.clear()
            self._floors.clear()
            for sub in subs:
                sub._end(last)
            return len(subs)

    def channels(self) -> list[str]:
        """Channels with at least one subscriber here. Call under the lock."""
        return list(self._by_channel)

    def counts(self) -> dict[str, int]:
        """Live subscriptions per channel (one on several channels counts in each)."""
        with self.lock:
            return {name: len(group) for name, group in self._by_channel.items()}

    def count(self, channel: str | None = None) -> int:
        """Live subscriptions on *channel*, or in all (each counted once)."""
        with self.lock:
            if channel is not None:
                return len(self._by_channel.get(channel, ()))
            return len({sub for group in self._by_channel.values() for sub in group})

    def _discard(self, sub: Subscription) -> None:
        self._floors.pop(sub, None)
        for channel in sub.channels:
            group = self._by_channel.get(channel)
            if group is not None:
                group.discard(sub)
                if not group:
                    del self._by_channel[channel]

    def _need_ticks(self, heartbeat: float) -> None:
        """Have the ticker wake readers at most *heartbeat* seconds after their
        last write. Takes the lock."""
        with self.lock:
            if heartbeat < self._shortest:
                self._shortest = heartbeat
                self._tick = max(heartbeat / _TICKS_PER_HEARTBEAT, _MIN_TICK)
                self._tick_changed.set()
            if self._ticker is not None:
                return
            ticker = self._ticker = threading.Thread(
                target=_tick,
                args=(weakref.ref(self),),
                name="eventstream-heartbeats",
                daemon=True,
            )
        ticker.start()

    def _wake_due(self) -> bool:
        """Wake every reader whose heartbeat is due before the next round;
        ``False`` (ticker ends) if none is subscribed. Takes the lock.

        A reader is woken up to one round early, never late: its heartbeats are at
        most one interval apart, counted from its last write. A subscriber with
        :attr:`buffer` events queued whose reader stalled is cut off here too, as
        no publish may come to do it.
        """
        with self.lock:
            if not self._by_channel:
                self._ticker = None
                return False
            now = time.monotonic()
            due = now + self._tick
            stalled: set[Subscription] = set()
            for group in self._by_channel.values():
                for sub in group:
                    if sub._deadline <= due and not sub._woken:
                        sub._wake(now)
                    elif len(sub._pending) >= self.buffer and sub._stalled(now):
                        stalled.add(sub)
            for sub in stalled:
                sub._cut_off()
                self._dropped(sub)
            return True


class Broker(ABC):
    """Stores recent events per channel and delivers new ones to subscribers.

    Contract, checked by the shared broker tests on every implementation:

    - Every subscriber of a channel receives every event published to it after it
      subscribed, in publish order, exactly once.
    - :meth:`publish` never blocks on a slow subscriber.
    - Events without an id get one from the broker, increasing per channel; given ids
      are kept. :meth:`subscribe` with ``last_event_id`` queues the retained events
      after that id, then live ones, with no gap and no duplicate.
    """

    @abstractmethod
    def publish(
        self, channel: str, event: Event, *, idempotency_key: str | None = None
    ) -> Event:
        """Store and deliver *event*; return it as sent (with its id).

        :param idempotency_key: a publish with a key that *channel* already
            stored returns the stored event and sends nothing again, so a publish
            whose outcome was unknown can be retried without a duplicate.
        :raises BrokerUnavailable: if the event was not accepted.
        :raises PublishUncertain: if it is not known whether it was.
        """

    @abstractmethod
    def subscribe(
        self, channels: Sequence[str], *, last_event_id: str | None = None
    ) -> Subscription:
        """Subscribe to *channels*; replay what came after *last_event_id* first."""

    @property
    @abstractmethod
    def fanout(self) -> Fanout:
        """This process's subscribers, which the broker delivers to."""

    def subscriber_count(self, channel: str | None = None) -> int:
        """Live subscribers in this process, on *channel* or on all channels."""
        return self.fanout.count(channel)

    @abstractmethod
    def close(self) -> None:
        """Release resources and end every open subscription."""

    def cluster_subscriber_counts(self) -> dict[str, int]:
        """Live subscribers per channel in every process that shares this broker's
        events (a subscription to several channels counts in each).

        This default, for a broker that shares nothing (the memory broker), counts
        this process's; the Redis broker adds up every process's.
        """
        return self.fanout.counts()

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
