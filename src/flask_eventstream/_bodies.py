"""WSGI response bodies that stream events: heartbeats, replay, close on disconnect.

A WSGI server notices a gone client only when a write fails, and then calls the
body's ``close()`` (PEP 3333). So every body here writes a heartbeat comment when
it has written nothing for ``heartbeat`` seconds (``docs/protocol.md`` O4, O9),
the first within one heartbeat of the stream opening: a closed connection is
found, and its subscription removed, within one heartbeat, with no publish
needed. A client that vanished without closing is found once the kernel gives
its connection up (:mod:`flask_eventstream._sockets`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ._event import Event, encode_comment
from ._sockets import connection_lost
from .brokers import Subscription

if TYPE_CHECKING:
    import socket

__all__ = ["HEARTBEAT", "SourceStream", "SubscriptionStream"]

logger = logging.getLogger(__name__)

#: The comment written when a stream is idle (S9).
HEARTBEAT = encode_comment("heartbeat")


class SubscriptionStream:
    """The body of a response that streams a broker subscription.

    Yields *preamble* at once (so proxies and browsers see an open stream), then
    every chunk the subscription has queued, one write per wake-up; ends when the
    subscription ends. ``close()``, called by the WSGI server, unsubscribes.

    :param gap: written last when the subscription is cut off before it delivered
        any event: its client has no id to resume from, so its reconnection
        could not replay what it lost, and is told so instead.
    :param sock: the client socket, if the server exposes it: before each
        heartbeat the stream ends if the kernel gave the connection up.
    :param heartbeat_chunk: what an idle stream writes (a comment by default).
    """

    __slots__ = (
        "_subscription",
        "_heartbeat",
        "_heartbeat_chunk",
        "_first",
        "_gap",
        "_socket",
    )

    def __init__(
        self,
        subscription: Subscription,
        *,
        heartbeat: float,
        preamble: bytes,
        gap: bytes = b"",
        sock: socket.socket | None = None,
        heartbeat_chunk: bytes = HEARTBEAT,
    ) -> None:
        self._subscription = subscription
        self._heartbeat = heartbeat
        self._heartbeat_chunk = heartbeat_chunk
        self._first: bytes | None = preamble
        self._gap = gap
        self._socket = sock

    def __iter__(self) -> SubscriptionStream:
        return self

    def __next__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        subscription = self._subscription
        chunk = subscription.next_chunk(self._heartbeat)
        if chunk is None:
            gap, self._gap = self._gap, b""
            if gap and subscription.cut_off and not subscription.delivered:
                return gap
            raise StopIteration
        if chunk:
            return chunk
        if self._socket is not None and connection_lost(self._socket):
            raise StopIteration
        return self._heartbeat_chunk

    def close(self) -> None:
        self._subscription.close()


_END = object()


class SourceStream:
    """The body of a response that streams what a generator or function produces.

    The source runs in its own thread (a greenlet under gevent) inside *context*
    (the request context), so this body can write heartbeats while the source is
    blocked, and notice a gone client. On ``close()`` the source is asked to stop:
    after the item it is producing, the thread stops and closes the generator, so
    its ``finally`` blocks run.

    :param source: an iterable of items; each is turned into bytes by *encode*.
    :param heartbeat_chunk: what an idle stream writes (a comment by default).
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        encode: Callable[[Any], bytes],
        heartbeat: float,
        preamble: bytes,
        context: AbstractContextManager[Any],
        buffer: int = 64,
        heartbeat_chunk: bytes = HEARTBEAT,
    ) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=buffer)
        self._heartbeat = heartbeat
        self._heartbeat_chunk = heartbeat_chunk
        self._first: bytes | None = preamble
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._produce,
            args=(source, encode, context),
            name="eventstream-source",
            daemon=True,
        )
        self._thread.start()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._done:
            raise StopIteration
        try:
            item = self._queue.get(timeout=self._heartbeat)
        except queue.Empty:
            return self._heartbeat_chunk
        chunks: list[bytes] = []
        while True:
            if item is _END:
                self._done = True
                break
            chunks.append(item)  # type: ignore[arg-type]
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        if not chunks:
            raise StopIteration
        return b"".join(chunks)

    def close(self) -> None:
        self._stop.set()

    def _produce(
        self,
        source: Iterable[Any],
        encode: Callable[[Any], bytes],
        context: AbstractContextManager[Any],
    ) -> None:
        iterator = iter(source)
        try:
            with context:
                try:
                    for item in iterator:
                        if self._stop.is_set() or not self._offer(encode(item)):
                            break
                except Exception:
                    logger.exception("event stream source failed; ending the stream")
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
        finally:
            self._offer(_END)

    def _offer(self, item: object) -> bool:
        """Queue *item* unless the client went away; wait while the queue is full."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=self._heartbeat)
                return True
            except queue.Full:
                continue
        return False


def event_from_item(item: Any, dumps: Callable[[Any], str]) -> Event:
    """An item of a source as an event: ``str`` is data, ``Event`` as is, else JSON."""
    if isinstance(item, Event):
        return item
    if isinstance(item, str):
        return Event(item)
    return Event(dumps(item))
