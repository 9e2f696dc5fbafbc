"""The least a WSGI event stream can cost on gunicorn's gevent worker: a reference.

Not an SSE library: a bare WSGI app (no Flask) whose stream body writes a comment,
then parks its greenlet on one shared ``gevent.event.Event`` per channel and writes
the newest event when it is set. No queue per stream, no replay, no heartbeat, no
check of the request: a stream costs only what gunicorn and gevent need to hold
a connection and park its greenlet. It serves the ``idle`` and ``churn`` scenarios
(it may skip events under load, so it is not a fan-out peer): the figures are the
floor any WSGI library meets on this server, to read ours against.

The protocol of ``_ticks.py``, in plain WSGI (``app``); ``flask_app`` is the same
with the stream endpoint as a Flask view (routing, request context), the floor
of any Flask extension.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import gevent.event
from flask import Flask, Response, request

from ._ticks import publish_loop, stop_all

StartResponse = Callable[..., Any]

_HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
_changed: dict[str, gevent.event.Event] = {}
_latest: dict[str, bytes] = {}
_parked: dict[str, int] = {}


def _publish(channel: str, data: str) -> None:
    _latest[channel] = f"data: {data}\n\n".encode()
    changed = _changed.pop(channel, None)
    if changed is not None:
        changed.set()  # wakes every stream parked on it; later ones get a new Event


def _stream(channel: str) -> Iterator[bytes]:
    yield b": open\n\n"
    while True:
        changed = _changed.setdefault(channel, gevent.event.Event())
        _parked[channel] = _parked.get(channel, 0) + 1
        try:
            changed.wait()
        finally:
            _parked[channel] -= 1
        yield _latest[channel]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    channel = query.get("channel", "sse")
    if path == "/stream":
        start_response("200 OK", _HEADERS)
        return _stream(channel)
    if path == "/publish":
        count, rate = int(query.get("count", "1")), float(query.get("rate", "0"))
        size = int(query.get("size", "100"))
        threading.Thread(
            target=publish_loop,
            args=(lambda d: _publish(channel, d), count, rate, size),
            daemon=True,
        ).start()
        body = b"started"
    elif path == "/stop":
        stop_all()
        body = b"stopped"
    elif path == "/count":
        body = str(_parked.get(channel, 0)).encode()
    elif path == "/pid":
        body = str(os.getpid()).encode()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


_flask = Flask(__name__)


@_flask.get("/stream")
def _flask_stream() -> Response:
    channel = request.args.get("channel", "sse")
    return Response(_stream(channel), headers=_HEADERS, direct_passthrough=True)


def flask_app(
    environ: dict[str, Any], start_response: StartResponse
) -> Iterable[bytes]:
    """The stream endpoint through Flask; the rest (not measured) as in ``app``."""
    target = _flask if environ["PATH_INFO"] == "/stream" else app
    return target(environ, start_response)
