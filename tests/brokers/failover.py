"""What a failover test needs: a steady publisher, and the check of what each
subscriber got against what was acknowledged (``docs/redis.md``, "Guarantees")."""

from __future__ import annotations

import json
import threading
import time

from flask_eventstream import GAP_EVENT, BrokerUnavailable, Event, PublishUncertain
from flask_eventstream.brokers.redis import RedisBroker

from .reading import Reader, id_order


class SteadyPublisher:
    """Publishes ``0``, ``1``, ... to a channel about every 20 ms, in a thread;
    records what Redis acknowledged (id by data) and when publishing failed."""

    def __init__(self, broker: RedisBroker, channel: str) -> None:
        self.broker = broker
        self.channel = channel
        self.acknowledged: dict[str, str] = {}
        self.failures: list[float] = []
        self.resumed_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyPublisher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        count = 0
        while not self._stop.is_set():
            data = str(count)
            try:
                sent = self.broker.publish(self.channel, Event(data))
            except BrokerUnavailable:
                self.failures.append(time.monotonic())
                self._stop.wait(0.05)
                continue
            except PublishUncertain:  # maybe stored: its data is not used again
                self.failures.append(time.monotonic())
                count += 1
                self._stop.wait(0.05)
                continue
            assert sent.id is not None
            self.acknowledged[data] = sent.id
            if self.failures and self.resumed_at is None:
                self.resumed_at = time.monotonic()
            count += 1
            self._stop.wait(0.02)

    def wait_acknowledged(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"{len(self.acknowledged)} published"
            time.sleep(0.02)


def check_delivery(
    reader: Reader, acknowledged: dict[str, str], *, ids_increase: bool = False
) -> None:
    """Every acknowledged event once and in order, or a gap event before the
    first event after any that is missing; with *ids_increase*, no id lower
    than one delivered before it."""
    order = {data: position for position, data in enumerate(acknowledged)}
    if ids_increase:
        ids = [id_order(e.id) for e in reader.events if e.event != GAP_EVENT]
        assert ids == sorted(ids) and len(set(ids)) == len(ids), "an id went back"
    expected = 0
    gap_seen = False
    seen: set[str] = set()
    for event in reader.events:
        if event.event == GAP_EVENT:
            assert json.loads(event.data)["channel"] == "ticks"
            gap_seen = True
            continue
        assert event.data not in seen, f"{event.data} delivered twice"
        seen.add(event.data)
        if event.data not in order:
            continue  # stored, but its publish raised PublishUncertain
        position = order[event.data]
        assert position >= expected, f"{event.data} out of order"
        if position > expected:
            assert gap_seen, f"events {expected}..{position - 1} lost, no gap event"
        expected = position + 1
        gap_seen = False
