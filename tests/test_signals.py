"""Signals: stream opened and closed, event published, subscriber dropped."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

from flask import Flask

from flask_eventstream import EventStream
from flask_eventstream.brokers._fanout import fanout_dropped
from flask_eventstream.signals import (
    event_published,
    stream_closed,
    stream_opened,
    subscriber_dropped,
)

from .helpers import StreamClient, wait_for

OpenStream = Callable[..., StreamClient]


class Recorder:
    """A receiver that keeps every call's keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, sender: Flask, **kwargs: Any) -> None:
        self.calls.append({"sender": sender, **kwargs})


class TestStreamSignals:
    def test_opened_then_closed_when_the_client_goes_away(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        opened, closed = Recorder(), Recorder()
        with (
            stream_opened.connected_to(opened, sender=app),
            stream_closed.connected_to(closed, sender=app),
        ):
            client = open_stream(f"{live}/stream?channel=a&channel=b")
            wait_for(lambda: len(opened.calls) == 1)
            assert opened.calls == [
                {
                    "sender": app,
                    "channels": ("a", "b"),
                    "last_event_id": None,
                    "missed": False,
                }
            ]
            assert closed.calls == []
            client.close()
            # The server notices at its next heartbeat (0.5 s here).
            wait_for(lambda: len(closed.calls) == 1)
            assert closed.calls == [{"sender": app, "channels": ("a", "b")}]

    def test_opened_tells_a_resumed_stream_and_a_missed_id(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        opened = Recorder()
        with app.app_context():
            kept = events.publish("kept", channel="news")
        with stream_opened.connected_to(opened, sender=app):
            open_stream(f"{live}/stream/news", headers={"Last-Event-ID": kept.id})
            open_stream(f"{live}/stream/news", headers={"Last-Event-ID": "1"})
            wait_for(lambda: len(opened.calls) == 2)
        resumed = sorted((c["last_event_id"], c["missed"]) for c in opened.calls)
        assert resumed == sorted([(kept.id, False), ("1", True)])

    def test_refused_requests_open_nothing(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        opened = Recorder()
        with stream_opened.connected_to(opened, sender=app):
            client = open_stream(f"{live}/stream?channel=")
            assert client.status == 400
        assert opened.calls == []


class TestPublishSignals:
    def test_event_published_carries_the_event_as_sent(
        self, app: Flask, events: EventStream
    ) -> None:
        published = Recorder()
        with event_published.connected_to(published, sender=app), app.app_context():
            sent = events.publish({"n": 1}, event="tick", channel="clock")
        assert published.calls == [{"sender": app, "channel": "clock", "event": sent}]
        assert sent.id is not None and sent.data == '{"n": 1}'

    def test_receivers_of_another_app_are_not_called(
        self, app: Flask, events: EventStream
    ) -> None:
        other = Flask("other")
        EventStream(other)
        published = Recorder()
        with event_published.connected_to(published, sender=other):
            with app.app_context():
                events.publish("only for app")
        assert published.calls == []

    def test_subscriber_dropped_when_it_falls_too_far_behind(self) -> None:
        app = Flask(__name__)
        app.config["EVENTSTREAM_BUFFER"] = 2
        events = EventStream(app)
        dropped = Recorder()
        with app.app_context(), subscriber_dropped.connected_to(dropped, sender=app):
            subscription = events.broker().subscribe(["busy"])  # never read
            for n in range(3):
                events.publish(str(n), channel="busy")
        assert dropped.calls == [{"sender": app, "channels": ("busy",)}]
        subscription.close()


def test_an_app_gone_leaves_no_drop_receiver_behind() -> None:
    """Reporting drops keeps neither the app nor its broker alive."""
    gc.collect()  # apps of earlier tests
    before = len(fanout_dropped.receivers)
    apps = [Flask(__name__) for _ in range(5)]
    for app in apps:
        EventStream(app)
    assert len(fanout_dropped.receivers) == before + 5
    refs = [weakref.ref(app) for app in apps]
    del apps, app
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []
    assert len(fanout_dropped.receivers) == before
