"""Reading a broker subscription in tests, every wait bounded."""

from __future__ import annotations

import time

from flask_eventstream import Event, EventParser, Subscription


def id_order(event_id: str | None) -> tuple[int, ...]:
    """Sort key of a broker-assigned id: ``"17"`` (memory) or ``"1718-0"`` (Redis)."""
    assert event_id is not None
    return tuple(int(part) for part in event_id.split("-"))


class Reader:
    """Decodes what a subscription queues; remembers the raw bytes too."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.parser = EventParser()
        self.events: list[Event] = []
        self.raw = bytearray()
        self.ended = False

    def read(self, count: int, timeout: float = 5.0) -> list[Event]:
        """Wait until *count* events in all have arrived; return them."""
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended:
                raise AssertionError(
                    f"got {len(self.events)} of {count} events "
                    f"(ended={self.ended}): {bytes(self.raw[-500:])!r}"
                )
            self._take(min(remaining, 0.5))
        return self.events[:count]

    def read_to_end(self, timeout: float = 5.0) -> None:
        """Wait until the subscription has ended."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"did not end: {bytes(self.raw[-500:])!r}")
            self._take(min(remaining, 0.5))

    def idle(self, wait: float = 0.3) -> bool:
        """True if nothing arrives within *wait* seconds."""
        before = len(self.raw)
        self._take(wait)
        return len(self.raw) == before and not self.ended

    def _take(self, timeout: float) -> None:
        chunk = self.subscription.next_chunk(timeout)
        if chunk is None:
            self.ended = True
            return
        self.raw += chunk
        self.events += self.parser.feed(chunk)
