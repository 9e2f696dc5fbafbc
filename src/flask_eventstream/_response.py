"""Response plumbing shared by the stream endpoint and ``EventStream.stream()``:
the ``text/event-stream`` response, the count of open streams, short refusals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from flask import current_app

from .brokers._wakeup import short_lock

if TYPE_CHECKING:
    from flask import Flask, Response

# Content-Type given in full: Werkzeug then skips working out a mimetype per response.
_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
)

#: Seconds a client refused for capacity is asked to wait (``Retry-After``).
RETRY_AFTER = 10


def event_stream_response(app: Flask, body: CountedBody) -> Response:
    """A ``text/event-stream`` response of *app*'s class, streaming *body*
    (``docs/protocol.md``: S1, S13, O1, O5)."""
    # direct_passthrough: Werkzeug hands our iterable (and its close()) to the
    # server untouched, so it skips the response's own close(): the body calls it,
    # and the response's call_on_close hooks run. No hop-by-hop header (S13).
    response = app.response_class(body, headers=_HEADERS, direct_passthrough=True)
    body.response = response
    return response


class StreamLimiter:
    """Counts the open streams of one app in this process, up to *limit*.

    Any request thread or greenlet may call :meth:`acquire` and :meth:`release`; the
    count is guarded by one (short) lock, so a burst of connections cannot overshoot.

    :param limit: most open streams; ``None`` for no limit.
    """

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"EVENTSTREAM_MAX_STREAMS must be at least 1, got {limit}")
        self.limit = limit
        self._open = 0
        self._lock = short_lock()

    @property
    def open(self) -> int:
        """Streams open now."""
        return self._open

    def acquire(self) -> bool:
        """Take a slot; ``False`` when all are taken."""
        with self._lock:
            if self.limit is not None and self._open >= self.limit:
                return False
            self._open += 1
            return True

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        with self._lock:
            self._open -= 1


class CountedBody:
    """A response body that gives its :class:`StreamLimiter` slot back on ``close()``.

    ``__iter__`` hands the server the wrapped body's own iterator, so writing costs
    nothing extra; the WSGI server calls ``close()`` on this object when the client
    is gone or the stream ended (PEP 3333): it closes the body, releases the slot,
    calls *on_close*, then closes :attr:`response` (its ``call_on_close`` hooks),
    once.
    """

    __slots__ = ("_body", "_limiter", "_closed", "_on_close", "response")

    def __init__(
        self,
        body: Iterable[bytes],
        limiter: StreamLimiter,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._body = body
        self._limiter = limiter
        self._closed = False
        self._on_close = on_close
        #: The response that streams this body, closed after it.
        self.response: Response | None = None

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._limiter.release()
            try:
                if self._on_close is not None:
                    self._on_close()
            finally:
                if self.response is not None:
                    self.response.close()  # its hooks; its close() of us returns


def plain_response(
    message: str, status: int, headers: Mapping[str, str] | None = None
) -> Response:
    """A short ``text/plain`` answer, for refusals before any stream byte."""
    response: Response = current_app.response_class(
        f"{message}\n", status, headers, mimetype="text/plain"
    )
    return response


def over_capacity() -> Response:
    """503 with ``Retry-After``: IANA's advice for capacity problems (C12)."""
    return plain_response(
        "too many open event streams on this server; retry later",
        503,
        {"Retry-After": str(RETRY_AFTER)},
    )
