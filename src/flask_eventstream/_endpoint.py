"""Request handling for the stream endpoint: reading the request, limits, refusals.

Everything here runs before the first stream byte, so every refusal is a plain
HTTP answer a client can read: 400 for a malformed request, 401/403 from
:mod:`~flask_eventstream._auth`, 503 with ``Retry-After`` when the process already
holds its maximum of open streams. Browsers do not reconnect after any of these
(``docs/protocol.md``: C5, C12): a page that wants to retry must do so itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from flask import Request, Response, request

from ._auth import TOKEN_PARAM, Authorizer, check_access
from ._bodies import SubscriptionStream
from ._channels import validate_channel
from ._event import Event
from ._response import CountedBody, event_stream_response, over_capacity, plain_response
from ._sockets import abort, bound_dead_client, client_socket
from .brokers._protocol import GAP_EVENT
from .exceptions import InvalidChannel, InvalidLastEventId
from .signals import stream_closed, stream_opened

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.datastructures import MultiDict

    from ._settings import AppState


def subscribe_response(
    app: Flask,
    state: AppState,
    channel: str | None,
    authorizers: Sequence[Authorizer],
) -> Response:
    """The stream endpoint: check the request, then stream its subscription.

    :param channel: the channel in the path (``/stream/<channel>``), if any.
    """
    settings = state.settings
    # Looked up once: every ``request.`` is a context-variable lookup.
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    # Read once: each ``req.args`` goes through Werkzeug's cached_property.
    args = req.args
    try:
        channels = requested_channels(
            args,
            channel,
            default=settings.default_channel,
            max_channels=settings.max_channels,
        )
        last_event_id = requested_last_event_id(req, args, settings.max_last_event_id)
    except ValueError as exc:
        return plain_response(str(exc), 400)
    # Replay reads the same channels, so this one check covers it too.
    refusal = check_access(
        app,
        channels,
        token=_token(req, args, bearer_allowed=settings.jwt is not None),
        require_token=settings.require_token,
        authorizers=authorizers,
        jwt=settings.jwt,
    )
    if refusal is not None:
        return plain_response(refusal.message, refusal.status)
    if not state.streams.acquire():
        return over_capacity()
    try:
        subscription = state.broker.subscribe(channels, last_event_id=last_event_id)
    except BaseException:
        state.streams.release()
        raise
    preamble = state.preamble
    if subscription.missed:
        note = app.json.dumps({"last_event_id": last_event_id})
        preamble += Event(note, event=GAP_EVENT).encode()
    sock = client_socket(req.environ)
    if sock is not None:
        bound_dead_client(sock, settings.client_timeout)
        subscription.on_cut_off = functools.partial(abort, sock)
    body = SubscriptionStream(
        subscription,
        heartbeat=settings.heartbeat,
        heartbeat_chunk=state.heartbeat_chunk,
        preamble=preamble,
        gap=state.cut_off_gap if last_event_id is None else b"",
        sock=sock,
    )
    # Signals only when someone listens (metrics, an app's receivers): a stream
    # that nobody watches opens and closes without them.
    closed: Callable[[], None] | None = None
    if stream_opened.receivers:
        stream_opened.send(
            app,
            channels=subscription.channels,
            last_event_id=last_event_id,
            missed=subscription.missed,
        )
    if stream_closed.receivers:

        def closed() -> None:
            stream_closed.send(app, channels=subscription.channels)

    return event_stream_response(app, CountedBody(body, state.streams, on_close=closed))


def _token(
    req: Request, args: MultiDict[str, str], *, bearer_allowed: bool
) -> str | None:
    """``?token=`` (from *args*, *req*'s query); with JWTs also
    ``Authorization: Bearer`` (non-browser clients)."""
    token = _first(args, TOKEN_PARAM)
    if token is None and bearer_allowed:
        scheme, _, value = req.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    return token


def _first(args: MultiDict[str, str], name: str) -> str | None:
    """The first value of *name* in *args*, or ``None``.

    Looked for first: for a missing name, ``args.get()`` and ``args.getlist()``
    raise and catch an exception (``get()`` an HTTP one, with its message), and
    most names asked for (the token, ``lastEventId``) are missing.
    """
    if name not in args:
        return None
    values = args.getlist(name)
    return values[0] if values else None


def requested_channels(
    args: MultiDict[str, str],
    channel: str | None,
    *,
    default: str,
    max_channels: int,
) -> list[str]:
    """The channels asked for: the path's, else ``?channel=`` in the query's
    *args*, else *default*.

    Duplicates are dropped; order is kept.

    :raises InvalidChannel: for more than *max_channels* or an invalid name.
    """
    if channel is not None:
        names = [channel]
    elif "channel" in args:  # see _first
        names = args.getlist("channel")
        if len(names) > 1:
            names = list(dict.fromkeys(names))
    else:
        names = [default]
    if len(names) > max_channels:
        raise InvalidChannel(
            f"{len(names)} channels asked for; at most {max_channels} allowed"
        )
    return [validate_channel(name) for name in names]


def requested_last_event_id(
    req: Request, args: MultiDict[str, str], max_length: int
) -> str | None:
    """*req*'s ``Last-Event-ID`` (or ``?lastEventId=`` from polyfills, S12), validated.

    A header that is not UTF-8 (some clients send ids as Latin-1) is kept as the
    server read it: it names no event of ours, so the broker treats it as an
    unknown id and the stream starts with the gap event. Refusing it would end
    the client for good, since a client does not reconnect after a 400.

    :param max_length: longest value accepted, in bytes of UTF-8.
    :raises InvalidLastEventId: for a value no conforming client sends (NUL, CR or
        LF), or one longer than *max_length*.
    """
    # The environ, not request.headers: the same value, one dict lookup instead
    # of a header-name translation through the headers view.
    raw = req.environ.get("HTTP_LAST_EVENT_ID")
    if raw is not None:
        try:  # WSGI gives headers as latin-1; browsers send UTF-8.
            raw = raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass  # not UTF-8: an id we never gave out (see above)
    else:
        raw = _first(args, "lastEventId")
    if not raw:
        return None
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeError:  # a lone surrogate: not text any browser could send
        raise InvalidLastEventId("Last-Event-ID is not valid UTF-8") from None
    if size > max_length:
        raise InvalidLastEventId(f"Last-Event-ID is longer than {max_length} bytes")
    if any(c in raw for c in "\0\r\n"):
        raise InvalidLastEventId("Last-Event-ID must not hold NUL, CR or LF (C11)")
    return raw
