"""The embedded broker: everything in this process's memory, no server needed.

Ids: every event gets a sequence number from one counter per broker, which starts
at the current time in microseconds. Ids the broker assigns are that number, so they
increase per channel (and across channels, which lets one ``Last-Event-ID`` resume
a multi-channel stream), and a restarted process hands out larger ids than the one
before it, so an id from before a restart is recognised as unknown, not mistaken
for a recent one. An id above any given out is unknown too; it replays nothing
(nothing is newer than it) and never changes what other subscribers get.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import NamedTuple

from .._event import Event, with_id
from ._fanout import BUFFER_BYTES, Fanout
from ._protocol import Broker
from ._subscription import Subscription


class _Entry(NamedTuple):
    seq: int
    event: Event
    key: str | None = None


class _Channel:
    """Retained events of one channel, oldest first.

    ``floor``: every event of this channel with a sequence number above it is still
    retained. Resuming from below the floor means events were missed. ``keys``:
    the retained events published with an idempotency key, by key.
    """

    __slots__ = ("history", "floor", "keys")

    def __init__(self, history: int, floor: int) -> None:
        self.history: deque[_Entry] = deque(maxlen=history)
        self.floor = floor
        self.keys: dict[str, _Entry] = {}

    def append(self, entry: _Entry) -> None:
        if self.history.maxlen == len(self.history):
            if self.history:
                oldest = self.history[0]
                self.floor = oldest.seq
                if oldest.key is not None:
                    self.keys.pop(oldest.key, None)
            else:
                self.floor = entry.seq
        self.history.append(entry)
        if entry.key is not None and self.history.maxlen:
            self.keys[entry.key] = entry


class MemoryBroker(Broker):
    """Keeps the last *history* events of each channel and fans out in process.

    :param history: events kept per channel for replay (0 keeps none).
    :param buffer: events that may wait for one slow subscriber before it is cut off.
    :param buffer_bytes: bytes that may wait for one slow subscriber before it is cut
        off.
    :param retained_channels: how many channels keep history. Past it, the channel
        published to least recently forgets its history (a client resuming there is
        told it may have missed events), so memory stays bounded even with a channel
        per user or per job.

    Only subscribers in the same process see events: use the Redis broker when the
    app runs several worker processes.
    """

    def __init__(
        self,
        *,
        history: int = 1000,
        buffer: int = 1000,
        buffer_bytes: int = BUFFER_BYTES,
        retained_channels: int = 10_000,
    ) -> None:
        if history < 0:
            raise ValueError(f"history must be 0 or more, got {history}")
        if retained_channels < 1:
            raise ValueError(
                f"retained_channels must be 1 or more, got {retained_channels}"
            )
        self._fanout = Fanout(buffer=buffer, buffer_bytes=buffer_bytes)
        self._history = history
        self._retained_channels = retained_channels
        self._start = self._seq = time.time_ns() // 1000
        # Least recently published first. _forgotten: the newest sequence number of
        # any channel whose history was dropped; below it, nothing is known.
        self._channels: OrderedDict[str, _Channel] = OrderedDict()
        self._forgotten = self._start

    @property
    def fanout(self) -> Fanout:
        return self._fanout

    def publish(
        self, channel: str, event: Event, *, idempotency_key: str | None = None
    ) -> Event:
        """Store and deliver *event*; return it with its id.

        :param idempotency_key: if an event published with this key is still in
            *channel*'s history, that event is returned and nothing is sent again.
        """
        with self._fanout.lock:
            stored = self._channels.get(channel)
            if idempotency_key is not None and stored is not None:
                known = stored.keys.get(idempotency_key)
                if known is not None:
                    return known.event
            self._seq += 1
            if event.id is None:
                event = with_id(event, str(self._seq))
            if stored is None:
                stored = self._channels[channel] = _Channel(
                    self._history, self._forgotten
                )
                if len(self._channels) > self._retained_channels:
                    self._forget_oldest_channel()
            else:
                self._channels.move_to_end(channel)
            stored.append(_Entry(self._seq, event, idempotency_key))
            self._fanout.deliver(channel, event.encode())
        return event

    def subscribe(
        self, channels: Sequence[str], *, last_event_id: str | None = None
    ) -> Subscription:
        with self._fanout.lock:
            backlog: list[_Entry] = []
            missed = False
            if last_event_id:
                after, known = self._resolve(channels, last_event_id)
                missed = not known
                for name in dict.fromkeys(channels):
                    stored = self._channels.get(name)
                    floor = stored.floor if stored is not None else self._forgotten
                    if after is None or after < floor:
                        missed = True
                    if stored is not None:
                        start = after if after is not None else floor
                        backlog.extend(e for e in stored.history if e.seq > start)
                backlog.sort(key=lambda e: e.seq)
            return self._fanout.subscribe(
                channels, [e.event.encode() for e in backlog], missed=missed
            )

    def _forget_oldest_channel(self) -> None:
        _, oldest = self._channels.popitem(last=False)
        if oldest.history:
            self._forgotten = max(self._forgotten, oldest.history[-1].seq)
        else:
            self._forgotten = max(self._forgotten, oldest.floor)

    def _resolve(
        self, channels: Sequence[str], last_event_id: str
    ) -> tuple[int | None, bool]:
        """The sequence number *last_event_id* stands for (``None``: it names
        none), and whether it is one this broker gave out.

        A number above any given out (a client's invention, or a clock gone
        back) is a position, so that nothing at or before it is replayed, but
        not a known one: the subscriber is told it may have missed events.
        """
        found = [
            entry.seq
            for name in channels
            if (stored := self._channels.get(name)) is not None
            for entry in stored.history
            if entry.event.id == last_event_id
        ]
        if found:
            return max(found), True
        if last_event_id.isascii() and last_event_id.isdigit():
            seq = int(last_event_id)
            return seq, seq <= self._seq
        return None, False

    def close(self) -> None:
        self._fanout.end_all()
