"""The least a WSGI event stream can cost on gunicorn's gevent worker: a reference.

Not an SSE library: a bare WSGI app (no Flask) whose stream body writes a comment,
then parks its greenlet on one shared ``gevent.event.Event`` per channel. Events
go into one append-only list per channel; a woken stream writes every event after
its own cursor in one write, so it never skips or repeats one. No queue per
stream, no replay, no heartbeat, no buffer limit, no check of the request: a
stream costs only what gunicorn and gevent need to hold a connection and park its
greenlet, and an event only an append and a wake-up. The figures are the floor
any WSGI library meets on this server, to read ours against (``idle``, ``churn``
and ``fanout-burst``).

The protocol of ``_ticks.py``, in plain WSGI (``app``); ``flask_app`` is the same
with the stream endpoint as a Flask view (routing, request context), the floor
of any Flask extension; ``flask_redis_app`` is ``flask_app`` with every event
going through Redis (one ``PUBLISH`` per event, one subscribed connection per
process that appends what it reads), the floor of a Flask extension whose events
cross processes through Redis. ``REDIS_URL`` names the server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import gevent.event
from flask import Flask, Response, request
from redis import Redis
from redis.client import PubSub

from ._ticks import publish_loop, stop_all

StartResponse = Callable[..., Any]

_HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
_changed: dict[str, gevent.event.Event] = {}
_log: dict[str, list[bytes]] = {}
_parked: dict[str, int] = {}


def _append(channel: str, event: bytes) -> None:
    _log.setdefault(channel, []).append(event)
    changed = _changed.pop(channel, None)
    if changed is not None:
        changed.set()  # wakes every stream parked on it; later ones get a new Event


def _publish(channel: str, data: str) -> None:
    _append(channel, f"data: {data}\n\n".encode())


def _stream(channel: str) -> Iterator[bytes]:
    log = _log.setdefault(channel, [])
    return _follow(channel, log, len(log))  # from the request on, not the 1st write


def _follow(channel: str, log: list[bytes], cursor: int) -> Iterator[bytes]:
    yield b": open\n\n"
    while True:
        if cursor < len(log):
            end = len(log)
            yield b"".join(log[cursor:end])
            cursor = end
            continue
        changed = _changed.setdefault(channel, gevent.event.Event())
        _parked[channel] = _parked.get(channel, 0) + 1
        try:
            changed.wait()
        finally:
            _parked[channel] -= 1


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    return _serve(environ, start_response, _publish)


def _serve(
    environ: dict[str, Any],
    start_response: StartResponse,
    publish: Callable[[str, str], object],
) -> Iterable[bytes]:
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
            args=(lambda d: publish(channel, d), count, rate, size),
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


_redis: list[Redis] = []  # the process's client, made at its first request
_redis_lock = threading.Lock()


def _redis_client() -> Redis:
    """The process's Redis client; the first call subscribes and starts reading."""
    if _redis:  # no lock once made: this runs on every request and publish
        return _redis[0]
    with _redis_lock:
        if not _redis:
            client = Redis.from_url(os.environ["REDIS_URL"])
            pubsub = client.pubsub()  # type: ignore[no-untyped-call]
            pubsub.psubscribe("floor:*")
            if pubsub.get_message(timeout=10) is None:  # the confirmation
                raise RuntimeError("no answer to PSUBSCRIBE")
            threading.Thread(target=_listen, args=(pubsub,), daemon=True).start()
            _redis.append(client)
        return _redis[0]


def _listen(pubsub: PubSub) -> None:
    for message in pubsub.listen():  # type: ignore[no-untyped-call]
        if message["type"] == "pmessage":
            _append(message["channel"][len(b"floor:") :].decode(), message["data"])


def _redis_publish(channel: str, data: str) -> None:
    _redis_client().publish(f"floor:{channel}", f"data: {data}\n\n")


def flask_redis_app(
    environ: dict[str, Any], start_response: StartResponse
) -> Iterable[bytes]:
    """``flask_app`` with every event going through Redis."""
    _redis_client()
    if environ["PATH_INFO"] == "/stream":
        return _flask(environ, start_response)
    return _serve(environ, start_response, _redis_publish)
