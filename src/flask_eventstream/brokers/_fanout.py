"""The subscribers of this process, by channel, and delivery to them.

Ownership: a :class:`Fanout` and every :class:`~._subscription.Subscription` it
holds are guarded by the fan-out's one lock (:class:`~._wakeup.FanoutLock`).
Publishers (any thread or greenlet) and the fan-out's heartbeat ticker write
under it; a subscription has exactly one reader, the response that streams it,
in the OS thread that subscribed (under gevent its waits park on that thread's
hub). Every broker delivers through one.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from blinker import Signal

from .._event import encode_comment
from ._subscription import NEVER, Subscription, Tail
from ._wakeup import FanoutLock, let_readers_run

#: Default of :attr:`Fanout.buffer_bytes`: bytes that may wait for one subscriber.
#: Where the default 1,000-event buffer ends for 8 KiB events: a Redis listener
#: catching up delivers up to 1,000 events at once, and a reader that keeps up
#: must not be cut off for it.
BUFFER_BYTES = 8 * 1024 * 1024

#: A channel's tail is checked (its readers' lag) and trimmed (what all of them
#: read) once its oldest event is this many events, or bytes, behind (or half the
#: buffer, if less) and a reader moved since the last check; then at twice what
#: was left after it. Half a buffer behind, it is checked at every event (a reader
#: may be cut off, or its publisher must yield), whether a reader moved or not.
_TRIM_EVENTS = 64
_TRIM_BYTES = 256 * 1024

#: Shortest interval between two rounds of the heartbeat ticker, in seconds.
_MIN_TICK = 0.01
#: Rounds of the heartbeat ticker per (shortest) heartbeat interval: a reader is
#: woken for its heartbeat at most this fraction of an interval early.
_TICKS_PER_HEARTBEAT = 8

#: Written to every subscriber when the process shuts down (:func:`end_all_streams`).
SHUTTING_DOWN = encode_comment(
    "eventstream: this server is shutting down; reconnect with Last-Event-ID"
)

#: Sent (by the fan-out, as ``sender``) with each ``subscription`` cut off as too
#: slow, once the fan-out's lock is released, in the thread that cut it off: so a
#: receiver may publish. The extension turns it into
#: :data:`~flask_eventstream.signals.subscriber_dropped` for its app.
fanout_dropped = Signal("eventstream.fanout-dropped")

# Every fan-out of this process, so that a shutdown hook (a signal handler, which
# knows no app) can end all open streams. Weak: it keeps no broker alive and holds
# no state a test would have to reset.
_fanouts: weakref.WeakSet[Fanout] = weakref.WeakSet()


def end_all_streams(last: bytes = SHUTTING_DOWN) -> int:
    """End every open stream of this process, writing *last* to each; refuse new ones.

    For a worker that is asked to stop (SIGTERM): each response then ends its body
    cleanly, so browsers reconnect (to another worker) and resume with
    ``Last-Event-ID`` (``docs/protocol.md``: S11), instead of holding the worker
    until its graceful timeout and being cut off. Subscriptions made afterwards
    end at once. :mod:`flask_eventstream.gunicorn` calls it on SIGTERM.

    :return: how many subscriptions were ended.
    """
    return sum(fanout.end_all(last, close=True) for fanout in list(_fanouts))


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
        off with a comment (:data:`~._subscription.TOO_SLOW`) and its browser
        reconnects and replays.
    :param buffer_bytes: how many bytes may wait for one subscriber; past that too it
        is cut off (one event of any size may always wait).

    Under gevent, a publisher that finds a reader's queue half way to
    :attr:`buffer` yields once (``gevent.sleep(0)``) after the lock is released,
    so that readers on its hub write before it publishes more.
    """

    def __init__(
        self,
        *,
        buffer: int = 1000,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, got {buffer}")
        if buffer_bytes < 1:
            raise ValueError(f"buffer_bytes must be at least 1, got {buffer_bytes}")
        self.lock = FanoutLock()
        self.buffer = buffer
        self.buffer_bytes = buffer_bytes
        self._by_channel: dict[str, set[Subscription]] = {}
        # Where each event goes: the tail of its channel, read by the subscriptions
        # that share it, and, one at a time, the queues of the others.
        self._tails: dict[str, Tail] = {}
        self._queued: dict[str, set[Subscription]] = {}
        # Subscriptions that skip events up to a position (see subscribe); rare.
        self._floors: dict[Subscription, Any] = {}
        self._closed = False
        self._yielding = False  # a yield to the readers is queued (call_after)
        self._ticker: threading.Thread | None = None
        self._shortest = NEVER  # the shortest heartbeat a reader waited with
        self._tick = NEVER  # seconds between two rounds of the ticker
        self._tick_changed = threading.Event()
        _fanouts.add(self)

    def subscribe(
        self,
        channels: Sequence[str],
        backlog: Sequence[bytes] = (),
        *,
        missed: bool = False,
        after: Any = None,
    ) -> Subscription:
        """Register a subscription, *backlog* queued first. Call under the lock.

        :param after: a position (comparable with the ``order`` given to
            :meth:`deliver`): events at or before it are not queued for this
            subscription. For a resume whose backlog could not be read.
        """
        shares = len(channels) == 1 and after is None
        sub = Subscription(self, channels, missed=missed, shares=shares)
        if backlog:
            now = time.monotonic()
            for chunk in backlog:
                sub.push(chunk, now)
        if self._closed:  # shutting down: replay the backlog, then end
            sub.end(SHUTTING_DOWN)
            return sub
        by_channel = self._by_channel
        for channel in sub.channels:
            group = by_channel.get(channel)
            if group is None:
                group = by_channel[channel] = set()
            group.add(sub)
        if after is not None:
            self._floors[sub] = after
        if sub.shares:
            self._attach(sub)
        else:
            for channel in sub.channels:
                self._queued.setdefault(channel, set()).add(sub)
        return sub

    def share(self, sub: Subscription) -> None:
        """Have *sub*, whose own queue was read, read its channel's tail. Call
        under the lock."""
        channel = sub.channels[0]
        if sub not in self._by_channel.get(channel, ()):
            return  # no longer subscribed
        group = self._queued.get(channel)
        if group is not None:
            group.discard(sub)
            if not group:
                del self._queued[channel]
        self._attach(sub)

    def _attach(self, sub: Subscription) -> None:
        channel = sub.channels[0]
        tail = self._tails.get(channel)
        if tail is None:
            tail = self._tails[channel] = Tail()
            self._next_check(tail)
        sub.attach(tail)

    def _detach(self, sub: Subscription) -> None:
        """Have *sub* stop reading its tail (if it does); forget its channel's tail
        if nobody reads it now (*sub* may have left it as it ended)."""
        sub.detach()
        if not sub.channels:  # subscribed to nothing: it never read a tail
            return
        channel = sub.channels[0]
        tail = self._tails.get(channel)
        if tail is not None and not tail.subs:
            del self._tails[channel]

    def deliver(self, channel: str, chunk: bytes, order: Any = None) -> None:
        """Queue *chunk* for every subscriber of *channel*. Call under the lock.

        Subscribers too far behind are cut off; :data:`fanout_dropped` is sent for each
        once the lock is released.

        :param order: the event's position, if the broker knows one: a subscriber
            registered with ``after`` at or past it skips the event.
        """
        tail = self._tails.get(channel)
        subs = self._queued.get(channel)
        if tail is None and not subs:
            return
        buffer, buffer_bytes = self.buffer, self.buffer_bytes
        now = time.monotonic()
        dropped: list[Subscription] = []
        crowded = False
        if tail is not None:
            tail.append(chunk)
            if tail.sleepers:
                for sub in tail.sleepers:
                    sub.wake(now)
                tail.sleepers.clear()
            count, size = tail.behind()
            if (count > tail.check_events or size > tail.check_bytes) and (
                tail.moved or count > buffer // 2 or size > buffer_bytes // 2
            ):
                crowded = self._check(tail, now, dropped)
        if subs:
            if self._floors and order is not None:
                floors = self._floors
                subs = {sub for sub in subs if sub not in floors or floors[sub] < order}
            half = buffer // 2
            for sub in subs:
                queued = sub.put(chunk, buffer, buffer_bytes, now)
                if not queued:
                    dropped.append(sub)
                elif queued > half and sub.greenlet:
                    crowded = True
        if crowded and not self._yielding:
            # A greenlet reader half way to its cut-off: the publisher lets the
            # readers run before it goes on, so a burst does not cut them off.
            self._yielding = True
            self.lock.call_after(self._let_readers_run)
        for sub in dropped:
            self._dropped(sub)

    def _check(self, tail: Tail, now: float, dropped: list[Subscription]) -> bool:
        """Cut off the readers of *tail* too far behind (into *dropped*), forget
        what all the others read. Whether a greenlet reader is half way behind."""
        crowded = False
        half = self.buffer // 2
        for sub in list(tail.subs):
            if sub.over_limits(self.buffer, self.buffer_bytes, now):
                sub.drop()
                dropped.append(sub)
            elif sub.greenlet and sub.queued() > half:
                crowded = True
        tail.trim()
        tail.moved = False
        self._next_check(tail)
        return crowded

    def _next_check(self, tail: Tail) -> None:
        """When *tail* is checked next: see :data:`_TRIM_EVENTS`. Never past half
        the buffer (a reader that far behind is cut off or makes its publisher
        yield) or the byte buffer (cut off)."""
        count, size = tail.behind()
        tail.check_events = min(max(_TRIM_EVENTS, 2 * count), self.buffer // 2)
        tail.check_bytes = min(max(_TRIM_BYTES, 2 * size), self.buffer_bytes // 2)

    def _dropped(self, sub: Subscription) -> None:
        """Forget *sub*, cut off; have its write ended, :data:`fanout_dropped` sent."""
        self._discard(sub)
        if sub.on_cut_off is not None and not sub.reading:
            self.lock.call_after(sub.on_cut_off)
        if fanout_dropped.receivers:
            self.lock.call_after(functools.partial(self._send_dropped, sub))

    def _send_dropped(self, sub: Subscription) -> None:
        fanout_dropped.send(self, subscription=sub)

    def _let_readers_run(self) -> None:
        self._yielding = False
        let_readers_run()

    def notify(self, channels: Iterable[str], chunk: bytes) -> None:
        """Queue *chunk* once for every subscriber of any of *channels* (a gap
        event). Call under the lock."""
        subs = {sub for name in channels for sub in self._by_channel.get(name, ())}
        now = time.monotonic()
        for sub in subs:
            if not sub.ended:  # never cut off for a notice
                if sub.tail is not None:  # queued one at a time until it reads it
                    self._detach(sub)
                    self._queued.setdefault(sub.channels[0], set()).add(sub)
                sub.push(chunk, now)

    def remove(self, sub: Subscription) -> None:
        """Unsubscribe *sub* and end it. Takes the lock."""
        with self.lock:
            self._discard(sub)
            if not sub.ended:
                sub.end()

    def end_all(self, last: bytes = b"", *, close: bool = False) -> int:
        """End every subscription, writing *last* to each. Takes the lock.

        :param close: also end every later subscription at once (shutdown).
        :return: how many subscriptions were ended.
        """
        with self.lock:
            self._closed = self._closed or close
            subs = {sub for group in self._by_channel.values() for sub in group}
            self._by_channel.clear()
            self._queued.clear()
            self._tails.clear()
            self._floors.clear()
            for sub in subs:
                sub.end(last)
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
        if self._floors:
            self._floors.pop(sub, None)
        self._detach(sub)
        for channel in sub.channels:
            _forget(self._by_channel, channel, sub)
            if self._queued:
                _forget(self._queued, channel, sub)

    def need_ticks(self, heartbeat: float) -> None:
        """Have the ticker wake readers at most *heartbeat* seconds after their
        last write. Call as a subscriber. Takes the lock, unless nothing changes.
        """
        # Read without the lock: ``_shortest`` only ever shrinks, and the ticker
        # ends (under the lock) only once no subscriber is left, so it cannot
        # end while the caller is subscribed.
        if heartbeat >= self._shortest and self._ticker is not None:
            return
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
                    if sub.wake_if_due(due, now):
                        continue
                    if sub.queued() >= self.buffer and sub.stalled(now):
                        stalled.add(sub)
            for sub in stalled:
                sub.drop()
                self._dropped(sub)
            return True


def _forget(
    groups: dict[str, set[Subscription]], channel: str, sub: Subscription
) -> None:
    """Take *sub* out of *channel*'s group, and an emptied group out of *groups*."""
    group = groups.get(channel)
    if group is not None:
        group.discard(sub)
        if not group:
            del groups[channel]
