"""Server-Sent Events for Flask: standard-exact, with replay, on memory or Redis."""

from __future__ import annotations

from .brokers import Broker, MemoryBroker, Subscription
from .channels import validate_channel
from .event import Event, encode_comment
from .exceptions import (
    BrokerError,
    BrokerUnavailable,
    EventStreamError,
    InvalidChannel,
    InvalidEvent,
    InvalidLastEventId,
    PublishUncertain,
)
from .extension import GAP_EVENT, EventStream
from .parser import EventParser

__all__ = [
    "GAP_EVENT",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Event",
    "EventParser",
    "EventStream",
    "EventStreamError",
    "InvalidChannel",
    "InvalidEvent",
    "InvalidLastEventId",
    "MemoryBroker",
    "PublishUncertain",
    "Subscription",
    "encode_comment",
    "validate_channel",
]
