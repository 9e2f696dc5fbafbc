"""Exceptions raised by flask-eventstream.

The tree::

    EventStreamError
    ├── InvalidEvent (also ValueError)     an event that cannot be written as SSE
    ├── InvalidChannel (also ValueError)   a channel name outside the documented rules
    ├── InvalidLastEventId (also ValueError)
    ├── BrokerError                        the broker refused (the event was not stored)
    │   └── BrokerUnavailable              the broker cannot be reached: not stored
    │       └── PublishUncertain           no answer in time: stored or not, unknown
    └── ClientError                        raised by flask_eventstream.client
        ├── StreamRefused                  not 200 text/event-stream: do not reconnect
        ├── EventTooLarge                  a line or event over the client's size cap
        └── ReconnectFailed                gave up after max_reconnects attempts

Callers that already catch :class:`ValueError` for bad input keep working.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ClientError",
    "EventStreamError",
    "EventTooLarge",
    "InvalidChannel",
    "InvalidEvent",
    "InvalidLastEventId",
    "PublishUncertain",
    "ReconnectFailed",
    "StreamRefused",
]


class EventStreamError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidEvent(EventStreamError, ValueError):
    """An event field holds a value that cannot be written to the wire.

    :param field: the field at fault (``"data"``, ``"event"``, ``"id"``, ``"retry"``,
        ``"comment"``).
    :param message: what is wrong and what is allowed.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidChannel(EventStreamError, ValueError):
    """A channel name breaks the channel-name rules (see :func:`validate_channel`)."""


class InvalidLastEventId(EventStreamError, ValueError):
    """A ``Last-Event-ID`` value that no conforming browser could have sent."""


class BrokerError(EventStreamError):
    """The broker failed."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached; the publish was *not* accepted: retry it."""


class PublishUncertain(BrokerUnavailable):
    """The publish was sent, but no answer came: it may or may not be stored.

    Retrying with the same key cannot send the event twice: a publish with an
    ``idempotency_key`` that the channel already stored returns the stored event.

    .. code-block:: python

        try:
            events.publish(data, channel="orders")
        except PublishUncertain as exc:
            events.publish(data, channel="orders", idempotency_key=exc.idempotency_key)

    :param channel: the channel published to.
    :param idempotency_key: the key the attempt was stored under, if it was.
    """

    def __init__(self, message: str, *, channel: str, idempotency_key: str) -> None:
        super().__init__(message)
        self.channel = channel
        self.idempotency_key = idempotency_key


class ClientError(EventStreamError):
    """The Python client (:mod:`flask_eventstream.client`) stopped with an error."""


class StreamRefused(ClientError):
    """The server answered with something other than ``200 text/event-stream``.

    A browser fails the connection for good in that case (C5, C12), so the client does
    not reconnect. (``204 No Content`` is the server's way to say "stop": the client
    then ends without raising.)

    :param status_code: the HTTP status of the response.
    :param content_type: its ``Content-Type`` header, or ``None``.
    :param reason: the start of the response body, as text (the server's own
        words, such as ``channel name must not be empty``); ``""`` when empty.
    """

    def __init__(
        self, status_code: int, content_type: str | None, reason: str = ""
    ) -> None:
        message = (
            f"the server answered {status_code} with Content-Type "
            f"{content_type!r}; an event stream needs 200 and text/event-stream"
        )
        super().__init__(f"{message}; it said: {reason!r}" if reason else message)
        self.status_code = status_code
        self.content_type = content_type
        self.reason = reason


class EventTooLarge(ClientError):
    """The stream sent a line or an event larger than the client accepts (O11)."""


class ReconnectFailed(ClientError):
    """The client gave up reconnecting; the last network error is the ``__cause__``."""
