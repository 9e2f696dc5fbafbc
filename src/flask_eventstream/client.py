"""A Python client for event streams that reconnects as a browser does.

::

    from flask_eventstream.client import EventSource

    with EventSource("http://127.0.0.1:5000/stream/chat") as source:
        for event in source:
            print(event.event, event.id, event.data)

:class:`AsyncEventSource` does the same with ``async with`` and ``async for``. Both
stream with httpx (``pip install 'flask-eventstream[client]'``) and decode with
:class:`~flask_eventstream.EventParser`. Rules are cited by their codes in
``docs/protocol.md``.

What a connection does:

- It asks with ``Accept: text/event-stream`` and ``Cache-Control: no-cache`` (C3,
  C4), follows redirects (C13) and, once an id has been seen, sends it as
  ``Last-Event-ID`` in UTF-8 (C8, C11).
- ``200`` with the MIME type ``text/event-stream`` (compared without case and
  parameters; any ``charset`` is ignored, the body is UTF-8: F2, C14) is read event
  by event. ``204 No Content`` ends the iteration: the server said "stop" (C12, S11).
  Any other status or type raises :class:`~flask_eventstream.exceptions.StreamRefused`
  and nothing is retried (C5).
- A network error, a read timeout or the end of the body means "reconnect" (C5,
  C6): after the reconnection time (the stream's ``retry:``, else
  *reconnection_time*), to the original URL, with the parser seeded with the last
  event id (D3), so events without an ``id`` keep it as in browsers.
- A connection silent for longer than *read_timeout* (twice the server's heartbeat
  interval by default) is taken for dead and replaced: the server writes at least
  once per heartbeat interval, so silence means the connection is gone (O4), and
  twice leaves a whole interval for the network.

Deliberate choices where the standard leaves room: consecutive failed attempts
double the wait (up to *max_backoff*, "user agents might introduce an exponential
backoff delay", C8), and every wait is lengthened by a random part of up to half of
it, so that clients cut off together do not all come back at the same instant (O7).
A line or an event larger than *max_event_size* raises
:class:`~flask_eventstream.exceptions.EventTooLarge` instead of buffering without
bound (O11).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from importlib import metadata
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._event import Event
from ._parser import EventParser
from .exceptions import EventTooLarge, ReconnectFailed, StreamRefused

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "flask_eventstream.client needs httpx: pip install 'flask-eventstream[client]'"
    ) from exc

__all__ = ["AsyncEventSource", "EventSource"]

logger = logging.getLogger(__name__)

#: Browsers wait 3 s (Blink, WebKit) or 5 s (Gecko) when the stream sets no ``retry``
#: (C10); we take the shorter.
DEFAULT_RECONNECTION_TIME = 3.0

#: Each wait is lengthened by a random fraction of itself, up to this much (O7).
_JITTER = 0.5

#: Bytes of a refusal's body kept as :attr:`StreamRefused.reason`.
_REASON_BYTES = 500


def _user_agent() -> str:
    try:
        return f"flask-eventstream/{metadata.version('flask-eventstream')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "flask-eventstream"


def _refusal(refused: StreamRefused, body: bytes) -> StreamRefused:
    """*refused* with the start of the response *body* as its reason."""
    reason = body[:_REASON_BYTES].decode("utf-8", "replace").strip()
    return StreamRefused(refused.status_code, refused.content_type, reason)


def _is_event_stream(content_type: str | None) -> bool:
    """Whether *content_type* parses as the MIME type ``text/event-stream`` (C14)."""
    if content_type is None:
        return False
    essence = content_type.split(";", 1)[0].strip().lower()
    return essence == "text/event-stream"


class _Session:
    """What one client knows across connections; no I/O (sync and async share it).

    Owned by the one thread or task that iterates the client.
    """

    def __init__(
        self,
        *,
        last_event_id: str,
        headers: Mapping[str, str] | None,
        reconnection_time: float,
        max_backoff: float,
        max_reconnects: int | None,
        max_event_size: int,
    ) -> None:
        self.parser = EventParser(last_event_id)
        self.headers = dict(headers or {})
        self.reconnection_time = reconnection_time
        self.max_backoff = max_backoff
        self.max_reconnects = max_reconnects
        self.max_event_size = max_event_size
        self.failures = 0
        self._fed = 0  # characters fed since the last event, an upper bound (O11)

    def request_headers(self) -> dict[str, str | bytes]:
        headers: dict[str, str | bytes] = {
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
            "User-Agent": _user_agent(),
        }
        headers.update(self.headers)
        if self.parser.last_event_id:
            # C8: "encoded as UTF-8"; httpx would encode a str as ASCII.
            headers["Last-Event-ID"] = self.parser.last_event_id.encode("utf-8")
        return headers

    def accept(self, status_code: int, content_type: str | None) -> bool:
        """``True`` to read the body; ``False`` to stop (204, C12).

        :raises StreamRefused: for any other status than 200, or another type (C5).
        """
        if status_code == 204:
            logger.info("event stream answered 204 No Content: not reconnecting")
            return False
        if status_code != 200 or not _is_event_stream(content_type):
            raise StreamRefused(status_code, content_type)
        self.failures = 0
        return True

    def feed(self, chunk: bytes) -> list[Event]:
        events = self.parser.feed(chunk)
        self._fed = 0 if events else self._fed + len(chunk)
        if self._fed > self.max_event_size:
            self._check_size()
        return events

    def _check_size(self) -> None:
        # Heartbeats and comments also count in _fed; only when that bound is passed
        # is the parser's real buffer measured, so this costs nothing per chunk.
        buffered = self.parser.buffered
        if buffered > self.max_event_size:
            raise EventTooLarge(
                f"the stream sent {buffered} characters without finishing an event; "
                f"max_event_size allows {self.max_event_size}"
            )
        self._fed = buffered

    def ended(self) -> None:
        """The connection is over: drop any unfinished event (F25)."""
        self.parser.close()
        self._fed = 0

    def failed(self, exc: Exception) -> None:
        """A connection attempt failed before it opened.

        :raises ReconnectFailed: after *max_reconnects* failures in a row.
        """
        self.failures += 1
        if self.max_reconnects is not None and self.failures > self.max_reconnects:
            raise ReconnectFailed(
                f"gave up after {self.max_reconnects} failed reconnection attempts"
            ) from exc
        logger.warning("event stream connection failed (%s); will retry", exc)

    def delay(self) -> float:
        """Seconds to wait before the next attempt (C8, O7)."""
        retry = self.parser.retry
        base = retry / 1000 if retry is not None else self.reconnection_time
        # A server's retry: wins over max_backoff: never come back sooner than asked.
        delay = min(base * 2.0 ** min(self.failures, 30), max(base, self.max_backoff))
        return delay * (1 + _JITTER * random.random())


_C = TypeVar("_C", httpx.Client, httpx.AsyncClient)


class _BaseEventSource(Generic[_C]):
    def __init__(
        self,
        url: str,
        *,
        last_event_id: str = "",
        headers: Mapping[str, str] | None = None,
        heartbeat: float = 15.0,
        read_timeout: float | None = None,
        connect_timeout: float = 10.0,
        reconnection_time: float = DEFAULT_RECONNECTION_TIME,
        max_backoff: float = 60.0,
        max_reconnects: int | None = None,
        max_event_size: int = 1024 * 1024,
        client: _C | None = None,
        method: str = "GET",
        content: str | bytes | None = None,
        json: Any = None,
    ) -> None:
        self.url = url
        self._body = _body(method, content, json)
        self._session = _Session(
            last_event_id=last_event_id,
            headers=headers,
            reconnection_time=reconnection_time,
            max_backoff=max_backoff,
            max_reconnects=max_reconnects,
            max_event_size=max_event_size,
        )
        read = 2 * heartbeat if read_timeout is None else read_timeout
        self._timeout = httpx.Timeout(connect_timeout, read=read)
        self._client: _C = client if client is not None else self._new_client()
        self._owns_client = client is None
        self._closed = False
        self._stop = threading.Event()  # set by close(); the sync wait watches it

    def _new_client(self) -> _C:
        raise NotImplementedError

    @property
    def last_event_id(self) -> str:
        """The last event id seen; sent as ``Last-Event-ID`` when reconnecting."""
        return self._session.parser.last_event_id

    @property
    def reconnection_time(self) -> float:
        """Seconds to wait before reconnecting: the stream's ``retry:``, or default."""
        retry = self._session.parser.retry
        return retry / 1000 if retry is not None else self._session.reconnection_time

    def _request(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "headers": self._session.request_headers(),
            "timeout": self._timeout,
            "follow_redirects": True,
            **self._body,
        }

    def _lost(self, exc: Exception, *, opened: bool) -> None:
        """Handle *exc* ending a connection: log it, count it, or re-raise it."""
        if not isinstance(exc, httpx.TransportError):
            raise exc
        if opened:
            logger.info("event stream lost (%s); reconnecting", exc)
        else:
            self._session.failed(exc)


class EventSource(_BaseEventSource[httpx.Client]):
    """Iterate the events of *url*, reconnecting as a browser's ``EventSource`` does.

    ::

        with EventSource(url, heartbeat=15) as source:
            for event in source:
                ...

    Iterating yields :class:`~flask_eventstream.Event` objects (``event`` is the type,
    ``"message"`` when none was sent; ``id`` the last event id) and ends only when the
    server answers ``204``, or when :meth:`close` is called (from any thread).

    A stream that ends is reconnected, as browsers do, and a POST is sent again
    with its body: for a one-off answer (``method="POST"``), ``break`` on the
    event that ends it.

    :param url: the stream's URL, e.g. ``http://host/stream?channel=chat``.
    :param last_event_id: resume after this id (sent as ``Last-Event-ID``).
    :param headers: extra request headers (cookies, authorization).
    :param heartbeat: the server's heartbeat interval in seconds
        (``EVENTSTREAM_HEARTBEAT``); sets the default *read_timeout*.
    :param read_timeout: seconds of silence after which the connection is taken for
        dead and replaced; default ``2 * heartbeat``.
    :param connect_timeout: seconds to wait for a connection.
    :param reconnection_time: seconds to wait before reconnecting until the stream
        sends ``retry:``.
    :param max_backoff: the longest wait after failed attempts (a longer ``retry:`` from
        the server still wins).
    :param max_reconnects: give up after this many failed attempts in a row
        (:class:`~flask_eventstream.exceptions.ReconnectFailed`); ``None``: never.
    :param max_event_size: the most characters one event (or one line) may hold.
    :param client: an :class:`httpx.Client` to use (its transport, cookies, auth);
        by default one is created and closed with this source.
    :param method: the HTTP method; ``"POST"`` for a stream that answers a request
        body (``events.stream(...)`` in a ``@app.post`` view).
    :param content: the request body, sent again at each reconnection.
    :param json: a request body sent as JSON (instead of *content*).
    :raises StreamRefused: when the server answers with another status than 200 or 204,
        or another type than ``text/event-stream``; no reconnection is tried. Its
        ``reason`` holds the start of the server's answer.
    :raises EventTooLarge: when the stream exceeds *max_event_size*.
    """

    _response: httpx.Response | None = None

    def _new_client(self) -> httpx.Client:
        return httpx.Client()

    def __iter__(self) -> Iterator[Event]:
        session = self._session
        while not self._closed:
            opened = False
            try:
                with self._client.stream(**self._request()) as response:
                    content_type = response.headers.get("content-type")
                    try:
                        if not session.accept(response.status_code, content_type):
                            return
                    except StreamRefused as refused:
                        raise _refusal(refused, _first_bytes(response)) from None
                    opened = True
                    self._response = response
                    logger.info("event stream open: %s", self.url)
                    for chunk in response.iter_bytes():
                        yield from session.feed(chunk)
                logger.info("event stream ended by the server; reconnecting")
            except Exception as exc:
                if self._closed:  # close() from elsewhere broke the read
                    return
                self._lost(exc, opened=opened)
            finally:
                self._response = None
                session.ended()
            if self._stop.wait(session.delay()):
                return

    def close(self) -> None:
        """Stop: the iteration ends at its next read or wait. Safe from any thread."""
        self._closed = True
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> EventSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncEventSource(_BaseEventSource[httpx.AsyncClient]):
    """The asyncio twin of :class:`EventSource`; same parameters and behaviour.

    ::

        async with AsyncEventSource(url) as source:
            async for event in source:
                ...

    :param client: an :class:`httpx.AsyncClient` to use; by default one is created
        and closed with this source.
    """

    _iterator: AsyncIterator[Event] | None = None
    _astop: asyncio.Event | None = None

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient()

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator

    async def _events(self) -> AsyncIterator[Event]:
        session = self._session
        self._astop = stop = asyncio.Event()
        while not self._closed:
            opened = False
            try:
                async with self._client.stream(**self._request()) as response:
                    content_type = response.headers.get("content-type")
                    try:
                        if not session.accept(response.status_code, content_type):
                            return
                    except StreamRefused as refused:
                        body = await _afirst_bytes(response)
                        raise _refusal(refused, body) from None
                    opened = True
                    logger.info("event stream open: %s", self.url)
                    async for chunk in response.aiter_bytes():
                        for event in session.feed(chunk):
                            yield event
                logger.info("event stream ended by the server; reconnecting")
            except Exception as exc:
                if self._closed:  # close() from elsewhere broke the read
                    return
                self._lost(exc, opened=opened)
            finally:
                session.ended()
            try:
                await asyncio.wait_for(stop.wait(), session.delay())
                return
            except asyncio.TimeoutError:
                pass

    async def aclose(self) -> None:
        """Stop iterating and release the connection (and the client, if ours)."""
        self._closed = True
        if self._astop is not None:
            self._astop.set()
        iterator = self._iterator
        if iterator is not None:
            await iterator.aclose()  # type: ignore[attr-defined]
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncEventSource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _body(method: str, content: str | bytes | None, json: Any) -> dict[str, Any]:
    """The request arguments besides the URL and headers: method and body.

    :raises ValueError: for both *content* and *json*.
    """
    if content is not None and json is not None:
        raise ValueError("give the request body as content= or json=, not both")
    body: dict[str, Any] = {"method": method.upper()}
    if content is not None:
        body["content"] = content
    elif json is not None:
        body["json"] = json
    return body


def _first_bytes(response: httpx.Response) -> bytes:
    """Up to :data:`_REASON_BYTES` of *response*'s body; ``b""`` if it breaks."""
    body = b""
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= _REASON_BYTES:
                break
    except httpx.TransportError:
        pass
    return body


async def _afirst_bytes(response: httpx.Response) -> bytes:
    """:func:`_first_bytes` for an async response."""
    body = b""
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= _REASON_BYTES:
                break
    except httpx.TransportError:
        pass
    return body
