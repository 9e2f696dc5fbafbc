"""The Flask extension: configuration, the stream endpoint, ``publish()``."""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, has_app_context, url_for
from flask.ctx import has_request_context
from flask.globals import request_ctx

from . import brokers
from ._auth import TOKEN_PARAM, Authorizer, mint_token, signing_keys
from ._bodies import HEARTBEAT, SourceStream, event_from_item
from ._channels import validate_channel
from ._cors import CorsPolicy
from ._endpoint import (
    GAP_EVENT,
    CountedBody,
    StreamLimiter,
    event_stream_response,
    over_capacity,
    subscribe_response,
)
from ._event import Event, encode_comment
from ._jwt import JWTVerifier
from ._sockets import bound_dead_client, client_socket, client_timeout
from .exceptions import InvalidEvent
from .signals import event_published, subscriber_dropped

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["GAP_EVENT", "EventStream"]

logger = logging.getLogger(__name__)

_A = TypeVar("_A", bound=Authorizer)

#: Longest ``Last-Event-ID`` accepted by default, in bytes of UTF-8.
MAX_LAST_EVENT_ID = 256

_DEFAULTS: dict[str, Any] = {
    "EVENTSTREAM_BROKER_URL": "memory://",
    "EVENTSTREAM_REDIS_PREFIX": "eventstream:",
    "EVENTSTREAM_URL_PREFIX": "/stream",
    "EVENTSTREAM_DEFAULT_CHANNEL": "sse",
    "EVENTSTREAM_HEARTBEAT": 15.0,
    "EVENTSTREAM_CLIENT_TIMEOUT": None,
    "EVENTSTREAM_HEARTBEAT_EVENT": None,
    "EVENTSTREAM_HISTORY": 1000,
    "EVENTSTREAM_BUFFER": 1000,
    "EVENTSTREAM_BUFFER_BYTES": 8 * 1024 * 1024,
    "EVENTSTREAM_RETRY": None,
    "EVENTSTREAM_MAX_EVENT_SIZE": 1024 * 1024,
    "EVENTSTREAM_MAX_CHANNELS": 16,
    "EVENTSTREAM_MAX_LAST_EVENT_ID": MAX_LAST_EVENT_ID,
    "EVENTSTREAM_MAX_STREAMS": 10_000,
    "EVENTSTREAM_REQUIRE_TOKEN": False,
    "EVENTSTREAM_TOKEN_MAX_AGE": 3600,
    "EVENTSTREAM_JWT_KEY": None,
    "EVENTSTREAM_JWT_ALGORITHMS": ("HS256",),
    "EVENTSTREAM_CORS_ORIGINS": None,
    "EVENTSTREAM_CORS_CREDENTIALS": False,
    "EVENTSTREAM_METRICS": False,
}


@dataclass
class _State:
    """Per-app state, kept in ``app.extensions["eventstream"]``."""

    broker: brokers.Broker
    heartbeat: float
    heartbeat_event: str | None
    client_timeout: float
    default_channel: str
    retry: int | None
    max_event_size: int
    max_channels: int
    max_last_event_id: int
    streams: StreamLimiter
    require_token: bool
    token_max_age: int
    jwt: JWTVerifier | None

    @cached_property
    def preamble(self) -> bytes:
        """First bytes of every stream: a ``retry:`` block or a comment (S1, O1).

        Built once per app, not per connection.
        """
        if self.retry is not None:
            return f"retry: {self.retry}\n\n".encode()
        if self.heartbeat_event is not None:
            return self.heartbeat_chunk
        return encode_comment("stream open")

    @cached_property
    def heartbeat_chunk(self) -> bytes:
        """What an idle stream writes: a comment, or the named no-op event."""
        if self.heartbeat_event is None:
            return HEARTBEAT
        return Event("", event=self.heartbeat_event).encode()

    @cached_property
    def cut_off_gap(self) -> bytes:
        """The gap event for a client cut off before it got any event (no id)."""
        return Event('{"last_event_id": null}', event=GAP_EVENT).encode()


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
        self._authorizers: list[Authorizer] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Configure *app*: create its broker, register the stream blueprint.

        Configuration keys, with defaults:

        ``EVENTSTREAM_BROKER_URL`` (``"memory://"``)
            ``memory://`` or a Redis/Valkey URL.
        ``EVENTSTREAM_REDIS_PREFIX`` (``"eventstream:"``)
            Put before every Redis key, so several apps can share one Redis.
        ``EVENTSTREAM_URL_PREFIX`` (``"/stream"``)
            Where ``GET /stream?channel=...`` and ``GET /stream/<channel>`` live;
            ``None`` registers no endpoint (an app that only publishes, or the
            Flask-SSE blueprint of :mod:`flask_eventstream.compat`).
        ``EVENTSTREAM_DEFAULT_CHANNEL`` (``"sse"``)
            The channel of a request that names none, and of ``publish()``.
        ``EVENTSTREAM_HEARTBEAT`` (``15.0``)
            Most seconds between two writes to a stream: past them a heartbeat
            comment is written. The first comes within one heartbeat of opening.
        ``EVENTSTREAM_CLIENT_TIMEOUT`` (``None``)
            Seconds written bytes may go unacknowledged before the connection is
            given up (``TCP_USER_TIMEOUT``; see "Dead and stuck clients" in
            ``docs/deploying.md``).
            ``None``: half the heartbeat, at least 1 s, so a client that vanished
            is freed within two heartbeats.
        ``EVENTSTREAM_HEARTBEAT_EVENT`` (``None``)
            Send heartbeats (and the stream's first bytes) as an event of this
            type with empty data instead of a comment, for clients that turn
            comments into empty messages; pages ignore it unless they listen.
        ``EVENTSTREAM_HISTORY`` (``1000``)
            Events kept per channel for replay by ``Last-Event-ID``.
        ``EVENTSTREAM_BUFFER`` (``1000``)
            Events that may wait for one slow client before it is cut off, once
            it has also shown no progress for a second.
        ``EVENTSTREAM_BUFFER_BYTES`` (``8388608``)
            Bytes that may wait for one slow client before it is cut off (one event
            of any size may always wait).
        ``EVENTSTREAM_RETRY`` (``None``)
            Reconnection time in ms sent at the start of every stream; ``None`` keeps
            the browser's own (3 to 5 s).
        ``EVENTSTREAM_MAX_EVENT_SIZE`` (``1048576``)
            Largest data ``publish()`` accepts, in bytes of UTF-8 (of the data
            alone: the JSON text for objects; field names and line ends are not
            counted).
        ``EVENTSTREAM_MAX_CHANNELS`` (``16``)
            Most channels one connection may subscribe to.
        ``EVENTSTREAM_MAX_LAST_EVENT_ID`` (``256``)
            Longest ``Last-Event-ID`` accepted, in bytes; longer ones get 400.
        ``EVENTSTREAM_MAX_STREAMS`` (``10000``)
            Most streams this app holds open in this process; past it, 503 with
            ``Retry-After``. ``None`` for no limit. Set it to what a worker holds.
        ``EVENTSTREAM_REQUIRE_TOKEN`` (``False``)
            Refuse (401) a subscription without a subscribe token
            (:meth:`subscribe_token`).
        ``EVENTSTREAM_TOKEN_MAX_AGE`` (``3600``)
            Seconds a subscribe token is valid when minted without ``max_age``.
        ``EVENTSTREAM_JWT_KEY`` (``None``)
            When set, subscribe tokens are JWTs checked with this key (Mercure-style:
            minted elsewhere; see ``docs/security.md``; needs the ``jwt``
            extra).
        ``EVENTSTREAM_JWT_ALGORITHMS`` (``("HS256",)``)
            The JWT algorithms accepted.
        ``EVENTSTREAM_CORS_ORIGINS`` (``None``)
            Origins whose pages may read the stream cross-origin: a list of
            ``"https://host[:port]"``, or ``"*"``; ``None`` sends no CORS headers.
        ``EVENTSTREAM_CORS_CREDENTIALS`` (``False``)
            Allow ``withCredentials`` (cookies) for those origins; never with ``"*"``.
        ``EVENTSTREAM_METRICS`` (``False``)
            Count streams and events in Prometheus metrics
            (:func:`flask_eventstream.metrics.install`; needs the ``metrics`` extra).

        :raises RuntimeError: if *app* is already set up by an ``EventStream``.
        :raises ValueError: for a CORS setting that cannot be safe (``"*"`` with
            credentials) or an origin that is not ``scheme://host[:port]``.
        """
        if "eventstream" in app.extensions:
            raise RuntimeError(
                "this app is already set up for flask-eventstream; call init_app() "
                "once per app (use one EventStream, or a separate app)"
            )
        for key, value in _DEFAULTS.items():
            app.config.setdefault(key, value)
        config = app.config
        cors = CorsPolicy.from_config(
            config["EVENTSTREAM_CORS_ORIGINS"], config["EVENTSTREAM_CORS_CREDENTIALS"]
        )
        streams = StreamLimiter(config["EVENTSTREAM_MAX_STREAMS"])
        broker_options: dict[str, Any] = {
            "history": int(config["EVENTSTREAM_HISTORY"]),
            "buffer": int(config["EVENTSTREAM_BUFFER"]),
        }
        if not config["EVENTSTREAM_BROKER_URL"].startswith("memory:"):
            broker_options["key_prefix"] = config["EVENTSTREAM_REDIS_PREFIX"]
        broker = self._broker
        if broker is None:
            broker = _broker_from_url(config["EVENTSTREAM_BROKER_URL"], broker_options)
            if isinstance(fanout := getattr(broker, "fanout", None), brokers.Fanout):
                fanout.buffer_bytes = int(config["EVENTSTREAM_BUFFER_BYTES"])
        heartbeat = float(config["EVENTSTREAM_HEARTBEAT"])
        app.extensions["eventstream"] = _State(
            broker=broker,
            heartbeat=heartbeat,
            heartbeat_event=_checked_heartbeat_event(
                config["EVENTSTREAM_HEARTBEAT_EVENT"]
            ),
            client_timeout=client_timeout(
                heartbeat, config["EVENTSTREAM_CLIENT_TIMEOUT"]
            ),
            default_channel=validate_channel(config["EVENTSTREAM_DEFAULT_CHANNEL"]),
            retry=_checked_retry(config["EVENTSTREAM_RETRY"]),
            max_event_size=int(config["EVENTSTREAM_MAX_EVENT_SIZE"]),
            max_channels=int(config["EVENTSTREAM_MAX_CHANNELS"]),
            max_last_event_id=int(config["EVENTSTREAM_MAX_LAST_EVENT_ID"]),
            streams=streams,
            require_token=bool(config["EVENTSTREAM_REQUIRE_TOKEN"]),
            token_max_age=int(config["EVENTSTREAM_TOKEN_MAX_AGE"]),
            jwt=_jwt_verifier(config),
        )
        _report_drops(app, broker)
        if config["EVENTSTREAM_METRICS"]:
            from .metrics import install

            install(app)
        blueprint = Blueprint("eventstream", __name__)
        blueprint.add_url_rule("", "stream", self._subscribe_view)
        blueprint.add_url_rule("/<channel>", "stream", self._subscribe_view)
        if cors is not None:
            blueprint.after_request(cors.apply)
        prefix = self._url_prefix or config["EVENTSTREAM_URL_PREFIX"]
        if prefix is not None:
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
        idempotency_key: str | None = None,
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
        :param idempotency_key: makes a retry safe: if *channel* already stored an
            event published with this key (the Redis broker remembers keys for an
            hour, the memory broker while the event is in the history), that
            event is returned and nothing is sent again.
        :raises InvalidEvent: for a field that cannot be sent, or data larger than
            ``EVENTSTREAM_MAX_EVENT_SIZE`` bytes in UTF-8.
        :raises InvalidChannel: for a channel name outside the rules.
        :raises PublishUncertain: the broker took the event but did not answer in
            time: it may have been stored. Retry with the exception's
            ``idempotency_key``.
        :raises BrokerUnavailable: when the broker could not accept it (nothing sent).
        :raises BrokerError: when the broker refused it (nothing sent).
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
        _check_size(text, state.max_event_size)
        sent = state.broker.publish(name, sse, idempotency_key=idempotency_key)
        logger.debug("published event %s to channel %r", sent.id, name)
        event_published.send(app, channel=name, event=sent)
        return sent

    def subscriber_count(self, channel: str | None = None) -> int:
        """Live subscribers in this process, on *channel* or on all channels."""
        return _state(self._app()).broker.subscriber_count(channel)

    def broker(self) -> brokers.Broker:
        """The current app's broker."""
        return _state(self._app()).broker

    # Who may subscribe

    def authorize(self, function: _A) -> _A:
        """Register *function* to decide who may subscribe to a channel.

        ::

            @events.authorize
            def may_read(channel):
                return channel == f"user:{current_user.id}" or channel == "news"

        Called in the request context (sessions, ``flask_login.current_user`` work)
        with each channel a request asks for, the replayed ones included, before
        any stream byte is sent. Return a true value to allow; a false one answers
        403. Call ``abort(401)`` for 401. With several hooks, all must allow.
        Requests carrying a subscribe token are decided by the token instead (see
        ``docs/security.md``). Applies to every app of this extension.
        """
        self._authorizers.append(function)
        return function

    def subscribe_token(
        self, channels: str | Iterable[str], *, max_age: int | None = None
    ) -> str:
        """Mint a signed token that lets its bearer subscribe to *channels*.

        Pass it as ``?token=...`` (``EventSource`` cannot send headers); see
        :meth:`stream_url`. Signed with the app's ``SECRET_KEY`` (rotated keys in
        ``SECRET_KEY_FALLBACKS`` stay valid). The token is checked when a stream
        opens, and again at every reconnection: mint it for as long as the page
        should be able to reconnect.

        :param channels: one channel name or several.
        :param max_age: seconds the token is valid; ``EVENTSTREAM_TOKEN_MAX_AGE``
            when ``None``.
        :raises RuntimeError: if the app has no ``SECRET_KEY``.
        :raises InvalidChannel: for a channel name outside the rules.
        """
        app = self._app()
        names = [channels] if isinstance(channels, str) else list(channels)
        age = _state(app).token_max_age if max_age is None else max_age
        return mint_token(signing_keys(app), names, max_age=age)

    def stream_url(
        self,
        channels: str | Iterable[str] | None = None,
        *,
        token: bool = False,
        max_age: int | None = None,
        _external: bool = False,
    ) -> str:
        """The URL of the stream of *channels*, like ``url_for``; for templates.

        ``events.stream_url("user:42", token=True)`` gives
        ``/stream/user:42?token=...`` with a fresh :meth:`subscribe_token`.
        Needs an app context (and ``SERVER_NAME`` outside a request).
        """
        names = [channels] if isinstance(channels, str) else list(channels or ())
        query = [("channel", name) for name in names] if len(names) > 1 else []
        if token:
            grant = names or [_state(self._app()).default_channel]
            query.append((TOKEN_PARAM, self.subscribe_token(grant, max_age=max_age)))
        path = {"channel": names[0]} if len(names) == 1 else {}
        url = url_for("eventstream.stream", _external=_external, **path)
        return f"{url}?{urlencode(query)}" if query else url

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

        It counts toward ``EVENTSTREAM_MAX_STREAMS`` as the stream endpoint's
        streams do: past the limit the response is ``503`` with ``Retry-After``
        and *source* is not run.
        """
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        state = _state(app)
        if not state.streams.acquire():
            return over_capacity()
        if inspect.isgeneratorfunction(source):
            source = source()
        if callable(source) and not isinstance(source, Iterable):
            items: Iterable[Any] = _calls(source, limit)
        else:
            items = source if limit is None else _take(source, limit)
        context = request_ctx.copy() if has_request_context() else app.app_context()
        if has_request_context():
            sock = client_socket(request_ctx.request.environ)
            if sock is not None:
                bound_dead_client(sock, state.client_timeout)

        def encode(item: Any) -> bytes:
            return event_from_item(item, app.json.dumps).encode()

        try:
            body = SourceStream(
                items,
                encode=encode,
                heartbeat=state.heartbeat,
                heartbeat_chunk=state.heartbeat_chunk,
                preamble=state.preamble,
                context=context,
            )
        except BaseException:
            state.streams.release()
            raise
        return event_stream_response(CountedBody(body, state.streams))

    # The endpoint

    def _subscribe_view(self, channel: str | None = None) -> Response:
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        return subscribe_response(app, _state(app), channel, self._authorizers)

    def _app(self) -> Flask:
        return current_or_only_app(self._apps, "this EventStream serves")


def _broker_from_url(url: str, options: dict[str, Any]) -> brokers.Broker:
    """:func:`brokers.from_url`, saying which extra a Redis URL needs.

    :raises ImportError: for a Redis URL without the ``redis`` package installed.
    """
    try:
        return brokers.from_url(url, **options)
    except ModuleNotFoundError as exc:
        if exc.name != "redis":
            raise
        raise ImportError(
            f"EVENTSTREAM_BROKER_URL {url!r} needs the Redis client: "
            'pip install "flask-eventstream[redis]"'
        ) from exc


def _jwt_verifier(config: Mapping[str, Any]) -> JWTVerifier | None:
    key = config["EVENTSTREAM_JWT_KEY"]
    if key is None:
        return None
    return JWTVerifier(key, tuple(config["EVENTSTREAM_JWT_ALGORITHMS"]))


def current_or_only_app(apps: Iterable[Flask], serving: str) -> Flask:
    """The current app; out of any app context, the only one in *apps*.

    :raises RuntimeError: with no app context and not exactly one app.
    """
    if has_app_context():
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        return app
    known = list(apps)
    if len(known) == 1:
        return known[0]
    raise RuntimeError(
        f"no application context, and {serving} {len(known)} apps: "
        "say which one with 'with app.app_context():'"
    )


def _checked_heartbeat_event(value: Any) -> str | None:
    """``EVENTSTREAM_HEARTBEAT_EVENT``: an event type, never ``message`` (which
    would fire every page's ``onmessage``)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or value == "message":
        raise ValueError(
            "EVENTSTREAM_HEARTBEAT_EVENT must be an event type other than "
            f"'message' (pages ignore it unless they listen for it), got {value!r}"
        )
    Event(event=value)  # no CR or LF
    return value


def _checked_retry(value: Any) -> int | None:
    """``EVENTSTREAM_RETRY`` checked as ``Event`` checks ``retry`` (S8)."""
    if value is not None:
        Event(retry=value)
    return value  # type: ignore[no-any-return]


def _state(app: Flask) -> _State:
    try:
        state: _State = app.extensions["eventstream"]
    except KeyError:
        raise RuntimeError(
            "flask-eventstream is not set up on this app: call "
            "EventStream(app) or events.init_app(app) first"
        ) from None
    return state


def _report_drops(app: Flask, broker: brokers.Broker) -> None:
    """Send :data:`~.signals.subscriber_dropped` for subscribers cut off as too slow."""
    fanout = getattr(broker, "fanout", None)
    if not isinstance(fanout, brokers.Fanout) or fanout.on_drop is not None:
        return  # a broker without a local fan-out, or one another app watches

    def dropped(subscription: brokers.Subscription) -> None:
        logger.warning(
            "dropped a subscriber of %s: more than %d events or %d bytes behind; "
            "it will reconnect and replay",
            ", ".join(subscription.channels),
            fanout.buffer,
            fanout.buffer_bytes,
        )
        subscriber_dropped.send(app, channels=subscription.channels)

    fanout.on_drop = dropped


def _check_size(data: str, limit: int) -> None:
    """Refuse *data* longer than *limit* bytes of UTF-8 (field names, the ``id``
    and line ends are not counted: 1 MiB of data fits a 1 MiB limit)."""
    if len(data) * 4 <= limit:  # UTF-8 takes at most 4 bytes a character
        return
    size = len(data.encode())
    if size > limit:
        raise InvalidEvent(
            "data",
            f"data is {size} bytes in UTF-8; EVENTSTREAM_MAX_EVENT_SIZE allows "
            f"{limit} bytes of data",
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
