"""Prometheus metrics for flask-eventstream, counted from its signals.

::

    from flask_eventstream import metrics

    metrics.install(app)          # or app.config["EVENTSTREAM_METRICS"] = True

Needs ``pip install 'flask-eventstream[metrics]'``. The metrics go into
``prometheus_client``'s default registry (or the one given); serve them as any
other, e.g. ``DispatcherMiddleware(app.wsgi_app, {"/metrics": make_wsgi_app()})``.

Every value is of this process (run one scrape target per worker, or use
``prometheus_client``'s multiprocess mode):

``eventstream_open_streams``
    Streams of the stream endpoint open now (gauge).
``eventstream_events_published_total``
    Events accepted by ``publish()``.
``eventstream_events_delivered_total``
    Approximate: for each event published here, the subscribers its channel had
    in this process at that moment. Exact for the memory broker (less the slow
    subscribers dropped); with Redis, subscribers in other processes are not counted.
``eventstream_subscribers_dropped_total``
    Subscribers cut off for falling more than ``EVENTSTREAM_BUFFER`` events behind.
``eventstream_replays_total``
    Streams opened with a ``Last-Event-ID`` (a reconnection that resumes).
``eventstream_replay_gaps_total``
    Of those, the ones whose id was no longer retained (they got the gap event).
``eventstream_broker_reconnects_total``
    Times the broker's connection (the Redis listener's) was lost and came back.
    Counted once per broker, however many apps in the registry share it.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "flask_eventstream.metrics needs prometheus-client: "
        "pip install 'flask-eventstream[metrics]'"
    ) from exc

from ._event import Event
from .brokers import Broker
from .signals import (
    broker_reconnected,
    event_published,
    stream_closed,
    stream_opened,
    subscriber_dropped,
)

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["Metrics", "install"]


class Metrics:
    """The metric objects in one registry, shared by every app installed into it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open_streams = Gauge(
            "eventstream_open_streams",
            "Event streams open now in this process.",
            registry=registry,
        )
        self.events_published = Counter(
            "eventstream_events_published",
            "Events accepted by publish().",
            registry=registry,
        )
        self.events_delivered = Counter(
            "eventstream_events_delivered",
            "Approximate: subscribers in this process of each published event.",
            registry=registry,
        )
        self.subscribers_dropped = Counter(
            "eventstream_subscribers_dropped",
            "Subscribers cut off for falling too far behind.",
            registry=registry,
        )
        self.replays = Counter(
            "eventstream_replays",
            "Streams opened with a Last-Event-ID.",
            registry=registry,
        )
        self.replay_gaps = Counter(
            "eventstream_replay_gaps",
            "Streams resumed from an id no longer retained.",
            registry=registry,
        )
        self.broker_reconnects = Counter(
            "eventstream_broker_reconnects",
            "Times the broker's connection was lost and came back.",
            registry=registry,
        )
        # Brokers whose reconnections are counted here: once each, even when
        # several apps share one.
        self.brokers: weakref.WeakSet[Broker] = weakref.WeakSet()


# prometheus_client refuses to register one name twice in a registry, and its
# default registry is global; so the metrics are made once per registry and shared
# by every app (and test) installed into it. Weak: a dropped registry goes with them.
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = (
    weakref.WeakKeyDictionary()
)


def install(app: Flask, *, registry: CollectorRegistry | None = None) -> Metrics:
    """Count *app*'s streams and events in Prometheus metrics; return them.

    Call after ``EventStream(app)`` (or set ``EVENTSTREAM_METRICS = True``). Calling
    it again for the same app returns the metrics already installed.

    :param registry: where the metrics go; ``prometheus_client.REGISTRY`` by default.
    """
    installed: Metrics | None = app.extensions.get("eventstream.metrics")
    if installed is not None:
        return installed
    target = REGISTRY if registry is None else registry
    metrics = _by_registry.get(target)
    if metrics is None:
        metrics = _by_registry[target] = Metrics(target)
    _connect(app, metrics)
    app.extensions["eventstream.metrics"] = metrics
    return metrics


def _connect(app: Flask, metrics: Metrics) -> None:
    def opened(
        sender: Flask,
        *,
        last_event_id: str | None = None,
        missed: bool = False,
        **extra: Any,
    ) -> None:
        metrics.open_streams.inc()
        if last_event_id is not None:
            metrics.replays.inc()
            if missed:
                metrics.replay_gaps.inc()

    def closed(sender: Flask, **extra: Any) -> None:
        metrics.open_streams.dec()

    def published(sender: Flask, *, channel: str, event: Event, **extra: Any) -> None:
        metrics.events_published.inc()
        broker = sender.extensions["eventstream"].broker
        metrics.events_delivered.inc(broker.subscriber_count(channel))

    def dropped(sender: Flask, **extra: Any) -> None:
        metrics.subscribers_dropped.inc()

    def reconnected(sender: Broker, **extra: Any) -> None:
        metrics.broker_reconnects.inc()

    # weak=False: these closures live as long as the app's connection, not this call.
    stream_opened.connect(opened, sender=app, weak=False)
    stream_closed.connect(closed, sender=app, weak=False)
    event_published.connect(published, sender=app, weak=False)
    subscriber_dropped.connect(dropped, sender=app, weak=False)
    broker = app.extensions["eventstream"].broker
    if broker not in metrics.brokers:
        metrics.brokers.add(broker)
        broker_reconnected.connect(reconnected, sender=broker, weak=False)
