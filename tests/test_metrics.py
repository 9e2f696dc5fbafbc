"""Prometheus metrics, counted from the signals, read back from a real registry."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from prometheus_client import REGISTRY, CollectorRegistry

from flask_eventstream import EventStream, metrics

from .helpers import StreamClient, wait_for

OpenStream = Callable[..., StreamClient]


@pytest.fixture
def registry(app: Flask, events: EventStream) -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics.install(app, registry=registry)
    return registry


def value(registry: CollectorRegistry, name: str) -> float:
    sample = registry.get_sample_value(name)
    assert sample is not None, f"{name} is not registered"
    return sample


class TestMetrics:
    def test_open_streams_follow_connections(
        self, registry: CollectorRegistry, live: str, open_stream: OpenStream
    ) -> None:
        first = open_stream(f"{live}/stream")
        open_stream(f"{live}/stream/other")
        wait_for(lambda: value(registry, "eventstream_open_streams") == 2)
        first.close()
        wait_for(lambda: value(registry, "eventstream_open_streams") == 1)

    def test_published_and_delivered(
        self,
        app: Flask,
        events: EventStream,
        registry: CollectorRegistry,
        live: str,
        open_stream: OpenStream,
    ) -> None:
        for _ in range(2):
            open_stream(f"{live}/stream/chat")
        wait_for(lambda: events.subscriber_count("chat") == 2)
        with app.app_context():
            events.publish("to two", channel="chat")
            events.publish("to nobody", channel="empty")
        assert value(registry, "eventstream_events_published_total") == 2
        assert value(registry, "eventstream_events_delivered_total") == 2

    def test_replays_and_gaps(
        self,
        app: Flask,
        events: EventStream,
        registry: CollectorRegistry,
        live: str,
        open_stream: OpenStream,
    ) -> None:
        with app.app_context():
            kept = events.publish("kept")
        assert kept.id is not None
        open_stream(f"{live}/stream", headers={"Last-Event-ID": kept.id})
        open_stream(f"{live}/stream", headers={"Last-Event-ID": "1"})
        open_stream(f"{live}/stream")
        wait_for(lambda: value(registry, "eventstream_open_streams") == 3)
        assert value(registry, "eventstream_replays_total") == 2
        assert value(registry, "eventstream_replay_gaps_total") == 1

    def test_slow_subscriber_drops(self) -> None:
        app = Flask(__name__)
        app.config["EVENTSTREAM_BUFFER"] = 1
        events = EventStream(app)
        registry = CollectorRegistry()
        metrics.install(app, registry=registry)
        with app.app_context():
            subscription = events.broker().subscribe(["busy"])  # never read
            events.publish("1", channel="busy")
            events.publish("2", channel="busy")
        assert value(registry, "eventstream_subscribers_dropped_total") == 1
        subscription.close()

    def test_broker_reconnects_start_at_zero(self, registry: CollectorRegistry) -> None:
        """The memory broker never reconnects; the Redis broker's reconnects are
        counted in tests/brokers/test_redis_stats.py, with a real restart."""
        assert value(registry, "eventstream_broker_reconnects_total") == 0


class TestInstall:
    def test_config_installs_into_the_default_registry(self) -> None:
        apps = [Flask(f"app{n}") for n in range(2)]
        for app in apps:  # two apps, one registry: no duplicate-name error
            app.config["EVENTSTREAM_METRICS"] = True
            EventStream(app)
        shared = apps[0].extensions["eventstream.metrics"]
        assert apps[1].extensions["eventstream.metrics"] is shared
        assert REGISTRY.get_sample_value("eventstream_open_streams") is not None

    def test_install_twice_returns_the_same_metrics(
        self, app: Flask, events: EventStream
    ) -> None:
        registry = CollectorRegistry()
        first = metrics.install(app, registry=registry)
        assert metrics.install(app, registry=registry) is first
        with app.app_context():
            events.publish("once")
        assert value(registry, "eventstream_events_published_total") == 1
