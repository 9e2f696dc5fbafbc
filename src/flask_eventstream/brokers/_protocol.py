"""The broker protocol: what every broker does, and what it tells a subscriber
that may have missed events.

A broker stores recent events per channel (for replay) and hands each published
event to every :class:`~._subscription.Subscription` of its channel in this
process, through its :class:`~._fanout.Fanout`. The memory broker does both in
memory; the Redis broker stores in Redis and feeds its fan-out from one listener
per process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType

from .._event import Event
from ._fanout import Fanout
from ._subscription import Subscription

#: Name of the event that tells a subscriber it may have missed events: at the start
#: of a stream that resumed from an id the broker cannot vouch for, or in an open
#: stream when the broker lost track of a channel (its data is JSON and names the
#: channel). It has no ``id:`` field, so it never moves the client's last event id.
#: Listen with ``source.addEventListener("eventstream-gap", ...)`` and reload the
#: page's state. Also written last, with ``{"last_event_id": null}``, to a client
#: cut off for falling behind before it got any event: it has no id to resume from.
GAP_EVENT = "eventstream-gap"


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
    def publish(
        self, channel: str, event: Event, *, idempotency_key: str | None = None
    ) -> Event:
        """Store and deliver *event*; return it as sent (with its id).

        :param idempotency_key: a publish with a key that *channel* already
            stored returns the stored event and sends nothing again, so a publish
            whose outcome was unknown can be retried without a duplicate.
        :raises BrokerUnavailable: if the event was not accepted.
        :raises PublishUncertain: if it is not known whether it was.
        """

    @abstractmethod
    def subscribe(
        self, channels: Sequence[str], *, last_event_id: str | None = None
    ) -> Subscription:
        """Subscribe to *channels*; replay what came after *last_event_id* first."""

    @property
    @abstractmethod
    def fanout(self) -> Fanout:
        """This process's subscribers, which the broker delivers to."""

    def subscriber_count(self, channel: str | None = None) -> int:
        """Live subscribers in this process, on *channel* or on all channels."""
        return self.fanout.count(channel)

    @abstractmethod
    def close(self) -> None:
        """Release resources and end every open subscription."""

    def cluster_subscriber_counts(self) -> dict[str, int]:
        """Live subscribers per channel in every process that shares this broker's
        events (a subscription to several channels counts in each).

        This default, for a broker that shares nothing (the memory broker), counts
        this process's; the Redis broker adds up every process's.
        """
        return self.fanout.counts()

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
