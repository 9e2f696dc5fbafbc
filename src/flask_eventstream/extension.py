"""The Flask extension: configuration, the stream endpoint, ``publish()``."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, has_app_context, request
from flask.ctx import has_request_context
from flask.globals import request_ctx

from . import brokers
from .channels import validate_channel
from .event import Event, encode_comment
from .exceptions import InvalidChannel, InvalidEvent, InvalidLastEventId
from .stream import SourceStream, SubscriptionStream, event_from_item

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["EventStream"]

#: Name of the event written first when a client resumes from an id the broker no
#: longer has: events may have been missed. Its data is JSON:
#: ``{"last_event_id": "<the id asked for>"}``. Listen with
#: ``source.addEventListener("eventstream-gap", ...)`` and reload the page's state.
GAP_EVENT = "eventstream-gap"

#: Longest ``Last-Event-ID`` accepted, in bytes of UTF-8.
MAX_LAST_EVENT_ID = 256

_DEFAULTS: dict[str, Any] = {
    "EVENTSTREAM_BROKER_URL": "memory://",
    "EVENTSTREAM_URL_PREFIX": "/stream",
    "EVENTSTREAM_DEFAULT_CHANNEL": "sse",
    "EVENTSTREAM_HEARTBEAT": 15.0,
    "EVENTSTREAM_HISTORY": 1000,
    "EVENTSTREAM_BUFFER": 1000,
    "EVENTSTREAM_RETRY": None,
    "EVENTSTREAM_MAX_EVENT_SIZE": 1024 * 1024,
    "EVENTSTREAM_MAX_CHANNELS": 16,
}

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class _State:
    """Per-app state, kept in ``app.extensions["eventstream"]``."""

    broker: brokers.Broker
    heartbeat: float
    default_channel: str
    retry: int | None
    max_event_size: int
    max_channels: int

    @property
    def preamble(self) -> bytes:
        """First bytes of every stream: a ``retry:`` block or a comment (S1, O1)."""
        if self.retry is not None:
            return f"retry: {self.retry}\n\n".encode()
        return encode_comment("stream open")


class EventStream:
    """Server-Sent Events for a Flask app.

    ::

        events = EventStream(app)            # or EventStream(); events.init_app(app)
        events.publish({"message": "Hi"}, event="greeting", channel="chat")

    Browsers subscribe with ``new EventSource("/stream?channel=chat")``.

    :param app: the app to set up now; or call :meth:`init_app` later, for each app.
    :param broker: a broker to use instead of the one ``EVENTSTREAM_BROKER_URL``
        names (for one app).
    :param url_prefix: where the stream endpoint goes; wins over
        ``EVENTSTREAM_URL_PREFIX``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        broker: brokers.Broker | None = None,
        url_prefix: str | None = None,
    ) -> None:
        self._broker = broker
        self._url_prefix = url_prefix
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Configure *app*: create its broker, register the stream blueprint.

        Configuration keys, with defaults:

        ``EVENTSTREAM_BROKER_URL`` (``"memory://"``)
            ``memory://`` or a Redis/Valkey URL.
        ``EVENTSTREAM_URL_PREFIX`` (``"/stream"``)
            Where ``GET /stream?channel=...`` and ``GET /stream/<channel>`` live.
        ``EVENTSTREAM_DEFAULT_CHANNEL`` (``"sse"``)
            The channel of a request that names none, and of ``publish()``.
        ``EVENTSTREAM_HEARTBEAT`` (``15.0``)
            Seconds of silence before a heartbeat comment is written.
        ``EVENTSTREAM_HISTORY`` (``1000``)
            Events kept per channel for replay by ``Last-Event-ID``.
        ``EVENTSTREAM_BUFFER`` (``1000``)
            Events that may wait for one slow client before it is cut off.
        ``EVENTSTREAM_RETRY`` (``None``)
            Reconnection time in ms sent at the start of every stream; ``None`` keeps
            the browser's own (3 to 5 s).
        ``EVENTSTREAM_MAX_EVENT_SIZE`` (``1048576``)
            Largest encoded event ``publish()`` accepts, in bytes.
        ``EVENTSTREAM_MAX_CHANNELS`` (``16``)
            Most channels one connection may subscribe to.

        :raises RuntimeError: if *app* is already set up by an ``EventStream``.
        """
        if "eventstream" in app.extensions:
            raise RuntimeError(
                "this app is already set up for flask-eventstream; call init_app() "
                "once per app (use one EventStream, or a separate app)"
            )
        for key, value in _DEFAULTS.items():
            app.config.setdefault(key, value)
        config = app.config
        broker = self._broker or brokers.from_url(
            config["EVENTSTREAM_BROKER_URL"],
            history=int(config["EVENTSTREAM_HISTORY"]),
            buffer=int(config["EVENTSTREAM_BUFFER"]),
        )
        app.extensions["eventstream"] = _State(
            broker=broker,
            heartbeat=float(config["EVENTSTREAM_HEARTBEAT"]),
            default_channel=validate_channel(config["EVENTSTREAM_DEFAULT_CHANNEL"]),
            retry=config["EVENTSTREAM_RETRY"],
            max_event_size=int(config["EVENTSTREAM_MAX_EVENT_SIZE"]),
            max_channels=int(config["EVENTSTREAM_MAX_CHANNELS"]),
        )
        blueprint = Blueprint("eventstream", __name__)
        blueprint.add_url_rule("", "stream", self._subscribe_view)
        blueprint.add_url_rule("/<channel>", "stream", self._subscribe_view)
        prefix = self._url_prefix or config["EVENTSTREAM_URL_PREFIX"]
        app.register_blueprint(blueprint, url_prefix=prefix)
        self._apps.add(app)

    # Publishing

    def publish(
        self,
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        channel: str | None = None,
        type: str | None = None,
    ) -> Event:
        """Send an event to every subscriber of *channel*; return it as sent.

        Works in a request, in a CLI command, in a background thread (with an app
        context, or with no context when this extension serves exactly one app).

        :param data: ``str`` is sent as is; anything else as JSON, through the app's
            JSON provider.
        :param event: the event type (``addEventListener(type)`` on the client);
            ``None`` means ``message`` (``onmessage``).
        :param id: the event id; ``None`` lets the broker assign one (increasing).
        :param retry: a reconnection time in ms for the clients.
        :param channel: defaults to ``EVENTSTREAM_DEFAULT_CHANNEL`` (``"sse"``).
        :param type: Flask-SSE's name for *event*.
        :raises InvalidEvent: for a field that cannot be sent, or an event larger than
            ``EVENTSTREAM_MAX_EVENT_SIZE``.
        :raises InvalidChannel: for a channel name outside the rules.
        :raises BrokerUnavailable: when the broker could not accept it (nothing sent).
        """
        if type is not None:
            if event is not None and event != type:
                raise TypeError("give the event type as event= or type=, not both")
            event = type
        app = self._app()
        state = _state(app)
        name = validate_channel(state.default_channel if channel is None else channel)
        text = data if isinstance(data, str) else app.json.dumps(data)
        sse = Event(text, event=event, id=id, retry=retry)
        size = len(sse.encode())
        if size > state.max_event_size:
            raise InvalidEvent(
                "data",
                f"event is {size} bytes encoded; EVENTSTREAM_MAX_EVENT_SIZE allows "
                f"{state.max_event_size}",
            )
        return state.broker.publish(name, sse)

    def subscriber_count(self, channel: str | None = None) -> int:
        """Live subscribers in this process, on *channel* or on all channels."""
        return _state(self._app()).broker.subscriber_count(channel)

    def broker(self) -> brokers.Broker:
        """The current app's broker."""
        return _state(self._app()).broker

    # Streams of your own

    def stream(
        self,
        source: Iterable[Any] | Callable[[], Any],
        *,
        limit: int | None = None,
    ) -> Response:
        """A streaming response from a generator, an iterable or a function.

        Items: ``str`` is data, :class:`Event` goes as is, anything else is JSON. A
        zero-argument callable is called again and again (at most *limit* times),
        each result an item. The source runs in the request context; while it is
        silent, heartbeats go out. When the client goes away the generator is
        closed after the item it is producing (its ``finally`` runs).

        Call it in a view: ``return events.stream(ticks())``.
        """
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        state = _state(app)
        if inspect.isgeneratorfunction(source):
            source = source()
        if callable(source) and not isinstance(source, Iterable):
            items: Iterable[Any] = _calls(source, limit)
        else:
            items = source if limit is None else _take(source, limit)
        context = request_ctx.copy() if has_request_context() else app.app_context()

        def encode(item: Any) -> bytes:
            return event_from_item(item, app.json.dumps).encode()

        body = SourceStream(
            items,
            encode=encode,
            heartbeat=state.heartbeat,
            preamble=state.preamble,
            context=context,
        )
        return _event_stream_response(body)

    # The endpoint

    def _subscribe_view(self, channel: str | None = None) -> Response:
        state = _state(current_app)
        try:
            channels = _requested_channels(channel, state)
            last_event_id = _requested_last_event_id()
        except ValueError as exc:
            return Response(f"{exc}\n", 400, mimetype="text/plain")
        subscription = state.broker.subscribe(channels, last_event_id=last_event_id)
        preamble = state.preamble
        if subscription.missed:
            note = current_app.json.dumps({"last_event_id": last_event_id})
            preamble += Event(note, event=GAP_EVENT).encode()
        body = SubscriptionStream(
            subscription, heartbeat=state.heartbeat, preamble=preamble
        )
        return _event_stream_response(body)

    def _app(self) -> Flask:
        if has_app_context():
            app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
            return app
        apps = list(self._apps)
        if len(apps) == 1:
            return apps[0]
        raise RuntimeError(
            "no application context: this EventStream serves "
            f"{len(apps)} apps, so say which one with 'with app.app_context():'"
        )


def _state(app: Flask) -> _State:
    try:
        state: _State = app.extensions["eventstream"]
    except KeyError:
        raise RuntimeError(
            "flask-eventstream is not set up on this app: call "
            "EventStream(app) or events.init_app(app) first"
        ) from None
    return state


def _requested_channels(channel: str | None, state: _State) -> list[str]:
    names = [channel] if channel is not None else request.args.getlist("channel")
    names = list(dict.fromkeys(names)) or [state.default_channel]
    if len(names) > state.max_channels:
        raise InvalidChannel(
            f"{len(names)} channels asked for; at most {state.max_channels} allowed"
        )
    return [validate_channel(name) for name in names]


def _requested_last_event_id() -> str | None:
    """``Last-Event-ID`` (or ``?lastEventId=`` from polyfills, S12), validated."""
    raw = request.headers.get("Last-Event-ID")
    if raw is not None:
        try:  # WSGI gives headers as latin-1; browsers send UTF-8 (C8).
            raw = raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise InvalidLastEventId("Last-Event-ID is not valid UTF-8") from None
    else:
        raw = request.args.get("lastEventId")
    if not raw:
        return None
    if len(raw.encode()) > MAX_LAST_EVENT_ID:
        raise InvalidLastEventId(
            f"Last-Event-ID is longer than {MAX_LAST_EVENT_ID} bytes"
        )
    if any(c in raw for c in "\0\r\n"):
        raise InvalidLastEventId("Last-Event-ID must not hold NUL, CR or LF (C11)")
    return raw


def _event_stream_response(body: Iterable[bytes]) -> Response:
    # direct_passthrough: Werkzeug hands our iterable (and its close()) to the server
    # untouched. No Connection or other hop-by-hop header (S13).
    return Response(
        body, mimetype="text/event-stream", headers=_HEADERS, direct_passthrough=True
    )


def _calls(function: Callable[[], Any], limit: int | None) -> Iterator[Any]:
    count = 0
    while limit is None or count < limit:
        count += 1
        yield function()


def _take(items: Iterable[Any], limit: int) -> Iterator[Any]:
    iterator = iter(items)
    try:
        for count, item in enumerate(iterator):
            if count >= limit:
                break
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
