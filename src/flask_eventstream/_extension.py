"""The Flask extension: configuration, the stream endpoint, ``publish()``."""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, has_app_context, url_for
from flask.ctx import has_request_context
from flask.globals import request_ctx

from . import brokers
from ._auth import TOKEN_PARAM, Authorizer, mint_token, signing_keys
from ._bodies import SourceStream, event_from_item
from ._channels import validate_channel
from ._endpoint import subscribe_response
from ._event import Event
from ._response import CountedBody, event_stream_response, over_capacity
from ._settings import AppState, Settings, app_state
from ._sockets import bound_dead_client, client_socket
from .brokers._fanout import fanout_dropped
from .brokers._protocol import GAP_EVENT
from .exceptions import InvalidEvent
from .signals import event_published, subscriber_dropped

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["GAP_EVENT", "EventStream"]

logger = logging.getLogger(__name__)

_A = TypeVar("_A", bound=Authorizer)


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
        settings = Settings.from_config(app.config)
        broker = self._broker
        if broker is None:
            broker = _broker_from_url(settings.broker_url, settings.broker_options)
        app.extensions["eventstream"] = AppState(settings, broker)
        _report_drops(app, broker)
        if settings.metrics:
            from .metrics import install

            install(app)
        blueprint = Blueprint("eventstream", __name__)
        blueprint.add_url_rule("", "stream", self._subscribe_view)
        blueprint.add_url_rule("/<channel>", "stream", self._subscribe_view)
        if settings.cors is not None:
            blueprint.after_request(settings.cors.apply)
        prefix = self._url_prefix or settings.url_prefix
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
        state = app_state(app)
        name = validate_channel(
            state.settings.default_channel if channel is None else channel
        )
        text = data if isinstance(data, str) else app.json.dumps(data)
        sse = Event(text, event=event, id=id, retry=retry)
        _check_size(text, state.settings.max_event_size)
        sent = state.broker.publish(name, sse, idempotency_key=idempotency_key)
        logger.debug("published event %s to channel %r", sent.id, name)
        event_published.send(app, channel=name, event=sent)
        return sent

    def subscriber_count(self, channel: str | None = None) -> int:
        """Live subscribers in this process, on *channel* or on all channels."""
        return app_state(self._app()).broker.subscriber_count(channel)

    def broker(self) -> brokers.Broker:
        """The current app's broker."""
        return app_state(self._app()).broker

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
        age = app_state(app).settings.token_max_age if max_age is None else max_age
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
            grant = names or [app_state(self._app()).settings.default_channel]
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
        state = app_state(app)
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
                bound_dead_client(sock, state.settings.client_timeout)

        def encode(item: Any) -> bytes:
            return event_from_item(item, app.json.dumps).encode()

        try:
            body = SourceStream(
                items,
                encode=encode,
                heartbeat=state.settings.heartbeat,
                heartbeat_chunk=state.heartbeat_chunk,
                preamble=state.preamble,
                context=context,
            )
        except BaseException:
            state.streams.release()
            raise
        return event_stream_response(app, CountedBody(body, state.streams))

    # The endpoint

    def _subscribe_view(self, channel: str | None = None) -> Response:
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        return subscribe_response(app, app_state(app), channel, self._authorizers)

    def _app(self) -> Flask:
        return current_or_only_app(self._apps, "this EventStream serves")


def _broker_from_url(url: str, options: Mapping[str, Any]) -> brokers.Broker:
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


def _report_drops(app: Flask, broker: brokers.Broker) -> None:
    """Send :data:`~.signals.subscriber_dropped` for *app* with each subscriber
    of *broker* cut off as too slow (and log it)."""
    fanout = broker.fanout
    app_ref = weakref.ref(app)  # the receiver must not keep the app alive

    def dropped(sender: brokers.Fanout, subscription: brokers.Subscription) -> None:
        owner = app_ref()
        if owner is None:
            return
        logger.warning(
            "dropped a subscriber of %s: more than %d events or %d bytes behind; "
            "it will reconnect and replay",
            ", ".join(subscription.channels),
            fanout.buffer,
            fanout.buffer_bytes,
        )
        subscriber_dropped.send(owner, channels=subscription.channels)

    fanout_dropped.connect(dropped, sender=fanout, weak=False)


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
