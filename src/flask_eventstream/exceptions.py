"""Exceptions raised by flask-eventstream.

The tree::

    EventStreamError
    ├── InvalidEvent (also ValueError)     an event that cannot be written as SSE
    ├── InvalidChannel (also ValueError)   a channel name outside the documented rules
    ├── InvalidLastEventId (also ValueError)
    └── BrokerError
        └── BrokerUnavailable              the broker cannot accept a publish right now

Callers that already catch :class:`ValueError` for bad input keep working.
"""

from __future__ import annotations


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
