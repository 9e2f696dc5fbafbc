"""One subscriber's queue of encoded events, read by the response that streams it.

Ownership: a :class:`Subscription` belongs to its :class:`~._fanout.Fanout` and is
guarded by the fan-out's lock. The fan-out (publishers, the heartbeat ticker)
writes to it only through the methods grouped under "The fan-out's side" below,
under that lock; its one reader is the response that streams it, through
:meth:`Subscription.next_chunk`.

A subscription to one channel whose own queue is empty reads that channel's
:class:`Tail`, shared by all such subscriptions, at its own cursor: a publish
appends an event once, whatever the number of subscribers, and wakes only the
readers that sleep. A subscription with something of its own queued (a backlog,
a notice, the last comment) leaves the tail, taking what it held past its
cursor, and is queued for one event at a time until it has read its queue.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .._event import encode_comment

if TYPE_CHECKING:
    from ._fanout import Fanout

#: Most bytes :meth:`Subscription.next_chunk` returns at once (unless one event is
#: larger): a slow reader writes bounded pieces, never everything queued as one copy.
WRITE_SIZE = 64 * 1024

#: Seconds a reader with the fan-out's ``buffer`` events queued is given to show
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

NEVER = math.inf


class Tail:
    """The newest events of one channel, read by its subscriptions that share it.

    Each of them reads it at its own cursor, an absolute index (``base`` is the
    index of ``chunks[0]``). The fan-out appends each event once, wakes the
    readers that sleep and, when the oldest event kept is ``check_events`` or
    ``check_bytes`` behind and a reader ``moved`` since, or half a buffer behind,
    checks each reader's lag and forgets what all of them have read
    (:meth:`trim`).
    """

    __slots__ = (
        "chunks",
        "offsets",
        "base",
        "end",
        "end_bytes",
        "subs",
        "sleepers",
        "check_events",
        "check_bytes",
        "moved",
    )

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        #: ``offsets[i]``: bytes appended before ``chunks[i]``.
        self.offsets: list[int] = []
        self.base = 0
        self.end = 0
        self.end_bytes = 0
        self.subs: set[Subscription] = set()
        #: Those whose reader is not woken: the next append wakes them.
        self.sleepers: set[Subscription] = set()
        #: Set by the fan-out: the lag (events, bytes) behind the oldest event
        #: kept at which it checks the readers' lag and trims.
        self.check_events = 0
        self.check_bytes = 0
        #: Whether a reader advanced since the last check: else there is nothing
        #: to trim.
        self.moved = False

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.offsets.append(self.end_bytes)
        self.end += 1
        self.end_bytes += len(chunk)

    def since(self, cursor: int) -> tuple[int, int]:
        """Events and bytes from *cursor* to the end."""
        if cursor >= self.end:
            return 0, 0
        return self.end - cursor, self.end_bytes - self.offsets[cursor - self.base]

    def behind(self) -> tuple[int, int]:
        """Events and bytes from the oldest event kept to the end: at least any
        reader's lag."""
        return self.since(self.base)

    def read(self, cursor: int, size: float = NEVER) -> list[bytes]:
        """The events from *cursor* on: about *size* bytes, 1 or more."""
        start = cursor - self.base
        if self.end_bytes - self.offsets[start] > size:
            limit = self.offsets[start] + size
            # offsets[stop] is where the events read end: the last within size.
            stop = bisect.bisect_right(self.offsets, limit, lo=start + 1) - 1
            return self.chunks[start : max(stop, start + 1)]
        return self.chunks[start:]

    def trim(self) -> None:
        """Forget the events every subscription has read."""
        oldest = min((sub._cursor for sub in self.subs), default=self.end)
        if oldest > self.base:
            del self.chunks[: oldest - self.base]
            del self.offsets[: oldest - self.base]
            self.base = oldest


class Subscription:
    """One subscriber's queue of encoded events, read by the response that streams it.

    Publishing never blocks here: the fan-out appends bytes and, only when the
    reader is not already woken, wakes it. The reader takes what is queued, up to
    :data:`WRITE_SIZE` bytes, in one :meth:`next_chunk` call and writes it in one
    write.

    ``missed`` is true when the subscriber asked to resume from an id the broker no
    longer has (or never had): events may have been lost in between.

    Cut-off: a subscriber with the fan-out's ``buffer_bytes`` queued is cut off
    (:data:`TOO_SLOW`) and its queue dropped; so is one with ``buffer`` events
    queued, unless its reader made progress in the last :data:`STALL_GRACE`
    seconds (it was woken that recently and has not run yet, or took its last
    chunk that recently and is still writing it): the count measures lag, not a
    burst the reader had no CPU for yet. If the reader is writing when it is cut
    off, :attr:`on_cut_off` is called so that the write blocked on its client is
    ended too.
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
        "_park",
        "_woken",
        "_ended",
        "_deadline",
        "_reading",
        "_woken_at",
        "_took_at",
        "_heartbeat",
        "_tail",
        "_cursor",
        "_shares",
    )

    def __init__(
        self,
        fanout: Fanout,
        channels: Sequence[str],
        *,
        missed: bool = False,
        shares: bool = False,
    ) -> None:
        """:param shares: whether it may read its channel's :class:`Tail`: it has
        one channel and skips none of its events."""
        self.channels = tuple(channels)
        self.missed = missed
        #: Called (with no argument) when this subscription is cut off while its
        #: reader is writing, so that the response can end that write. Set by the
        #: response; called once the fan-out's lock is released.
        self.on_cut_off: Callable[[], None] | None = None
        #: Whether :meth:`next_chunk` has returned queued events (not only a
        #: heartbeat or the final comment).
        self.delivered = False
        #: Whether the subscription ended because it fell too far behind.
        self.cut_off = False
        self._fanout = fanout
        self._pending: list[bytes] = []
        self._size = 0  # bytes in _pending
        # Something is queued, the subscription ended, or a heartbeat is due, and
        # the reader was woken for it (once: later events join the queue).
        self._woken = False
        self._park = fanout.lock.park()
        self._ended = False
        # When the waiting reader is due a heartbeat (time.monotonic()); the
        # fan-out's one ticker wakes it then, so no wait needs a timer of its own.
        self._deadline = NEVER
        # The reader is inside next_chunk(): waiting, or woken and not yet run.
        self._reading = False
        # When ``_woken`` was last set, and when the reader last took queued
        # bytes (time.monotonic()); for STALL_GRACE.
        self._woken_at = 0.0
        self._took_at = 0.0
        # The heartbeat interval the fan-out's ticker was asked to serve for us.
        self._heartbeat = NEVER
        # The tail it reads (with its own queue empty), and the index in it of
        # the next event to read.
        self._tail: Tail | None = None
        self._cursor = 0
        self._shares = shares

    def next_chunk(self, timeout: float) -> bytes | None:
        """Wait up to about *timeout* seconds and return queued bytes, joined.

        At most about :data:`WRITE_SIZE` bytes are returned at once (one event may be
        larger); the rest is returned by the next calls, at once.

        :return: the bytes to write; ``b""`` if nothing came in time (the caller
            writes a heartbeat); ``None`` once the subscription has ended and
            everything queued was returned.
        """
        if 0 < timeout < self._heartbeat:
            self._heartbeat = timeout
            self._fanout.need_ticks(timeout)
        self._reading = True
        if not self._wait(timeout):
            self._reading = False
            return b""
        with self._fanout.lock:
            self._reading = False
            self._deadline = NEVER
            tail = self._tail
            if tail is not None:  # its own queue is empty: only the tail's
                if self._cursor < tail.end:
                    pending = tail.read(self._cursor, WRITE_SIZE)
                    self._cursor += len(pending)
                    tail.moved = True
                    self.delivered = True
                    self._took_at = time.monotonic()
                    if len(tail.subs) == 1:  # a channel of one: keep nothing read
                        tail.trim()
                else:
                    pending = []
                woken = self._woken = self._cursor < tail.end
                if not woken:
                    tail.sleepers.add(self)
                self._park.settle(woken)
                return b"".join(pending)
            pending = self._pending
            if self._size <= WRITE_SIZE:
                self._pending = []
                self._size = 0
            else:
                pending = self._take(WRITE_SIZE)
            woken = bool(self._pending) or self._ended
            self._woken = woken
            if not woken and self._shares:
                self._fanout.share(self)
            self._park.settle(woken)
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
        park, woken = self._park, self._woken
        if timeout <= 0:
            return park.poll(woken)
        if not woken:
            self._deadline = time.monotonic() + timeout
        park.wait(woken)
        return True

    def close(self) -> None:
        """Unsubscribe. Idempotent; safe from any thread."""
        self._fanout.remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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

    # The fan-out's side: called under the fan-out's lock, never by the reader.

    @property
    def shares(self) -> bool:
        """Whether it may read its channel's tail (when its own queue is empty)."""
        return self._shares and not self._ended and not self._pending

    @property
    def tail(self) -> Tail | None:
        """The tail it reads, if any."""
        return self._tail

    def attach(self, tail: Tail) -> None:
        """Read *tail* from its end on; only with nothing queued (:attr:`shares`)."""
        self._tail = tail
        self._cursor = tail.end
        tail.subs.add(self)
        if not self._woken:
            tail.sleepers.add(self)

    def detach(self) -> None:
        """Stop reading the tail; what it held past the cursor is queued."""
        tail = self._tail
        if tail is not None:
            if self._cursor < tail.end:
                self._size += tail.since(self._cursor)[1]
                self._pending += tail.read(self._cursor)
                self._cursor = tail.end
            tail.subs.discard(self)
            tail.sleepers.discard(self)
            self._tail = None

    def over_limits(self, limit: int, limit_bytes: int, now: float) -> bool:
        """Whether it fell too far behind with what it holds (its queue and the
        tail past its cursor): more than one event and more than *limit_bytes*,
        or more than *limit* events with a stalled reader (see the class)."""
        count, size = len(self._pending), self._size
        if self._tail is not None:
            more, more_bytes = self._tail.since(self._cursor)
            count, size = count + more, size + more_bytes
        return count > 1 and (
            size > limit_bytes or (count > limit and self.stalled(now))
        )

    @property
    def ended(self) -> bool:
        """Whether the subscription ended (what is queued is still read)."""
        return self._ended

    @property
    def reading(self) -> bool:
        """Whether the reader is inside :meth:`next_chunk` (not writing)."""
        return self._reading

    @property
    def greenlet(self) -> bool:
        """Whether the reader is a greenlet (a publisher must let it run)."""
        return self._park.greenlet

    def queued(self) -> int:
        """How many chunks wait for the reader."""
        if self._tail is not None:
            return len(self._pending) + self._tail.since(self._cursor)[0]
        return len(self._pending)

    def wake(self, now: float) -> None:
        """Wake the reader, unless it is woken already; *now* (monotonic) is
        when, for :meth:`stalled`."""
        if not self._woken:
            self._woken = True
            self._woken_at = now
            # A reader that is not waiting, and runs in this thread (writing, or
            # the caller itself, closing its stream), sees the flag before it
            # could wait again: a wake-up would only cost a hub callback.
            if self._reading or not self._park.runs_here():
                self._park.wake()

    def push(self, chunk: bytes, now: float) -> None:
        """Queue *chunk* whatever the limits (a backlog, a notice), and wake.
        Not while it reads a tail: :meth:`detach` first."""
        self._pending.append(chunk)
        self._size += len(chunk)
        self.wake(now)

    def put(self, chunk: bytes, limit: int, limit_bytes: int, now: float) -> int:
        """Queue *chunk*, unless the subscription ended or falls too far behind
        with it (then it is cut off). How many chunks are queued now: 0 if it
        was not queued."""
        if self._ended:
            return 0
        self._pending.append(chunk)
        self._size += len(chunk)
        if self.over_limits(limit, limit_bytes, now):
            self.drop()  # its queue, this chunk with it, is dropped
            return 0
        if not self._woken:
            self.wake(now)
        return len(self._pending)

    def wake_if_due(self, due: float, now: float) -> bool:
        """Wake the reader if its heartbeat falls due by *due*. Whether it was."""
        if self._deadline <= due and not self._woken:
            self.wake(now)
            return True
        return False

    def stalled(self, now: float) -> bool:
        """Whether the reader made no progress for :data:`STALL_GRACE` (see the
        class). Without a reader (nothing ever taken, no one waiting), at once."""
        since = self._woken_at if self._reading else self._took_at
        return now - since >= STALL_GRACE

    def drop(self) -> None:
        """End it as too slow: its queue dropped, :data:`TOO_SLOW` written last."""
        self.cut_off = True
        self.end(TOO_SLOW, replace=True)

    def end(self, last: bytes = b"", *, replace: bool = False) -> None:
        """End it after what is queued (or, with *replace*, instead of it), with
        *last* written last."""
        if replace and self._tail is not None:
            self._cursor = self._tail.end
        self.detach()
        if replace:
            self._pending = []
            self._size = 0
        if last:
            self._pending.append(last)
            self._size += len(last)
        self._ended = True
        self.wake(time.monotonic())
