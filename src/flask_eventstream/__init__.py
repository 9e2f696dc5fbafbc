"""Server-Sent Events for Flask: standard-exact, with replay, on memory or Redis."""

from __future__ import annotations

from ._channels import validate_channel
from ._event import Event, encode_comment
from ._extension import EventStream
from ._parser import EventParser
from .brokers import Broker, MemoryBroker, Subscription
from .brokers._fanout import end_all_streams
from .brokers._protocol import GAP_EVENT
from .exceptions import (
    BrokerError,
    BrokerUnavailable,
    EventStreamError,
    InvalidChannel,
    InvalidEvent,
    InvalidLastEventId,
    PublishUncertain,
)

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
    "end_all_streams",
    "validate_channel",
]
