"""The broker protocol, and the local fan-out that every broker shares.

A broker stores recent events per channel (for replay) and hands each published
event to every :class:`Subscription` of its channel in this process. The memory
broker does both in memory; the Redis broker stores in Redis and feeds a
:class:`Fanout` from one listener per process.

Ownership: a :class:`Fanout` and every :class:`Subscription` it holds are guarded
by the fan-out's one lock. Publishers (any thread or greenlet) write under it; a
subscription has exactly one reader, the response that streams it.
"""

from __future__ import annotations

import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

from ..event import Event, encode_comment

__all__ = ["Broker", "Fanout", "Subscription", "end_all_streams"]

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


class Subscription:
    """One subscriber's queue of encoded events, read by the response that streams it.

    Publishing never blocks here: :meth:`Fanout.deliver` appends bytes and, only when
    the queue goes from empty to non-empty, wakes the reader. The reader takes
    everything queued in one :meth:`next_chunk` call and writes it in one write.

    ``missed`` is true when the subscriber asked to resume from an id the broker no
    longer has (or never had): events may have been lost in between.
    """

    __slots__ = ("channels", "missed", "_fanout", "_pending", "_wakeup", "_ended")

    def __init__(
        self, fanout: Fanout, channels: Sequence[str], *, missed: bool = False
    ) -> None:
        self.channels = tuple(channels)
        self.missed = missed
        self._fanout = fanout
        self._pending: list[bytes] = []
        # Held while nothing is queued; released once when something arrives. A bare
        # lock is the smallest wake-up primitive (and gevent-aware once patched).
        self._wakeup = threading.Lock()
        self._wakeup.acquire()
        self._ended = False

    def next_chunk(self, timeout: float) -> bytes | None:
        """Wait up to *timeout* seconds and return all queued bytes, joined.

        :return: the bytes to write; ``b""`` if nothing came in time; ``None`` once
            the subscription has ended and everything queued was returned.
        """
        if not self._wakeup.acquire(timeout=timeout):
            return b""
        with self._fanout.lock:
            pending, self._pending = self._pending, []
            ended = self._ended
            if ended and not pending:
                self._wakeup.release()  # keep returning None
                return None
            if ended:
                self._wakeup.release()
        return b"".join(pending)

    def close(self) -> None:
        """Unsubscribe. Idempotent; safe from any thread."""
        self._fanout.remove(self)

    # Called by the fan-out, under its lock.
    def _put(self, chunk: bytes, limit: int) -> bool:
        if self._ended:
            return False
        if len(self._pending) >= limit:
            self._end(TOO_SLOW, replace=True)
            return False
        self._pending.append(chunk)
        if len(self._pending) == 1:
            self._wakeup.release()
        return True

    def _end(self, last: bytes = b"", *, replace: bool = False) -> None:
        was_empty = not self._pending
        if replace:
            self._pending = []
        if last:
            self._pending.append(last)
        self._ended = True
        if was_empty:
            self._wakeup.release()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Fanout:
    """The subscribers of this process, by channel, and delivery to them.

    :param buffer: how many events may wait for one subscriber; past that it is cut
        off with a comment (:data:`TOO_SLOW`) and its browser reconnects and replays.
    :param on_drop: called (under the lock) with each subscription cut off as too slow.
    """

    def __init__(
        self,
        *,
        buffer: int = 1000,
        on_drop: Callable[[Subscription], None] | None = None,
    ) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, got {buffer}")
        self.lock = threading.Lock()
        self.buffer = buffer
        self.on_drop = on_drop
        self._by_channel: dict[str, set[Subscription]] = {}
        self._closed = False
        _fanouts.add(self)

    def subscribe(
        self,
        channels: Sequence[str],
        backlog: Iterable[bytes] = (),
        *,
        missed: bool = False,
    ) -> Subscription:
        """Register a subscription, *backlog* queued first. Call under the lock."""
        sub = Subscription(self, channels, missed=missed)
        for chunk in backlog:
            sub._pending.append(chunk)
        if sub._pending:
            sub._wakeup.release()
        if self._closed:  # shutting down: replay the backlog, then end
            sub._end(SHUTTING_DOWN)
            return sub
        for channel in sub.channels:
            self._by_channel.setdefault(channel, set()).add(sub)
        return sub

    def deliver(self, channel: str, chunk: bytes) -> None:
        """Queue *chunk* for every subscriber of *channel*. Call under the lock."""
        subs = self._by_channel.get(channel)
        if not subs:
            return
        dropped = [sub for sub in subs if not sub._put(chunk, self.buffer)]
        for sub in dropped:
            self._discard(sub)
            if self.on_drop is not None:
                self.on_drop(sub)

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
            for sub in subs:
                sub._end(last)
            return len(subs)

    def channels(self) -> list[str]:
        """Channels with at least one subscriber here. Call under the lock."""
        return list(self._by_channel)

    def count(self, channel: str | None = None) -> int:
        """Live subscriptions on *channel*, or in all (each counted once)."""
        with self.lock:
            if channel is not None:
                return len(self._by_channel.get(channel, ()))
            return len({sub for group in self._by_channel.values() for sub in group})

    def _discard(self, sub: Subscription) -> None:
        for channel in sub.channels:
            group = self._by_channel.get(channel)
            if group is not None:
                group.discard(sub)
                if not group:
                    del self._by_channel[channel]


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
    def publish(self, channel: str, event: Event) -> Event:
        """Store and deliver *event*; return it as sent (with its id).

        :raises BrokerUnavailable: if the event could not be accepted.
        """

    @abstractmethod
    def subscribe(
        self, channels: Sequence[str], *, last_event_id: str | None = None
    ) -> Subscription:
        """Subscribe to *channels*; replay what came after *last_event_id* first."""

    @abstractmethod
    def subscriber_count(self, channel: str | None = None) -> int:
        """Live subscribers in this process, on *channel* or on all channels."""

    @abstractmethod
    def close(self) -> None:
        """Release resources and end every open subscription."""

    def cluster_subscriber_counts(self) -> dict[str, int]:
        """Live subscribers per channel in every process that shares this broker's
        events (a subscription to several channels counts in each).

        This default, for a broker that shares nothing (the memory broker), counts
        this process's; the Redis broker adds up every process's.
        """
        fanout = getattr(self, "fanout", None)
        if not isinstance(fanout, Fanout):
            return {}
        with fanout.lock:
            names = fanout.channels()
        counts = {name: fanout.count(name) for name in names}
        return {name: count for name, count in counts.items() if count}

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
