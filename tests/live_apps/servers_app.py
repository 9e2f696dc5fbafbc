"""A small app for tests that run it under a real server process (gunicorn, nginx).

Environment: ``EVENTSTREAM_HEARTBEAT`` (seconds, default 15),
``EVENTSTREAM_BROKER_URL`` (default ``memory://``), and, when set,
``EVENTSTREAM_REDIS_PREFIX``, ``EVENTSTREAM_HISTORY``, ``EVENTSTREAM_BUFFER`` and
``EVENTSTREAM_BUFFER_BYTES``.

- ``GET /stream?channel=...``: the extension's stream endpoint;
- ``POST /publish?channel=...``: publishes the request body as the data of an event,
  answers its id;
- ``GET /count``: ``events.subscriber_count()``;
- ``GET /fds``: how many file descriptors this worker process has open;
- ``GET /gc-frozen``: how many objects the worker's garbage collector has frozen;
- ``POST /burst?count=...&size=...``: publishes *count* events (numbered, padded to
  about *size* bytes) in one loop, as a request handler that never yields would;
- ``GET /stats``: JSON of what open streams hold in this worker: subscribers,
  stream slots, file descriptors, resident memory, threads and greenlets.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from typing import Any

from flask import Flask, request

from flask_eventstream import EventStream

app = Flask(__name__)
app.config["EVENTSTREAM_HEARTBEAT"] = float(
    os.environ.get("EVENTSTREAM_HEARTBEAT", "15")
)
app.config["EVENTSTREAM_BROKER_URL"] = os.environ.get(
    "EVENTSTREAM_BROKER_URL", "memory://"
)
for name in (
    "EVENTSTREAM_REDIS_PREFIX",
    "EVENTSTREAM_HISTORY",
    "EVENTSTREAM_BUFFER",
    "EVENTSTREAM_BUFFER_BYTES",
):
    if name in os.environ:
        app.config[name] = os.environ[name]
events = EventStream(app)


@app.post("/publish")
def publish() -> str:
    channel = request.args.get("channel", "sse")
    sent = events.publish(request.get_data(as_text=True), channel=channel)
    return sent.id or ""


@app.get("/count")
def count() -> str:
    return str(events.subscriber_count())


@app.get("/fds")
def fds() -> str:
    return str(len(os.listdir("/proc/self/fd")))


@app.get("/gc-frozen")
def gc_frozen() -> str:
    return str(gc.get_freeze_count())


@app.post("/burst")
def burst() -> str:
    count = int(request.args["count"])
    padding = "x" * int(request.args.get("size", "0"))
    channel = request.args.get("channel", "sse")
    for n in range(count):
        events.publish(f"{n} {padding}", channel=channel)
    return str(count)


@app.get("/stats")
def stats() -> dict[str, Any]:
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {
        "subscribers": events.subscriber_count(),
        "streams": app.extensions["eventstream"].streams.open,
        "fds": len(os.listdir("/proc/self/fd")),
        "rss": rss,
        "threads": threading.active_count(),
        "greenlets": _greenlets(),
    }


def _greenlets() -> int:
    """Greenlets alive in this process (0 without gevent)."""
    if "greenlet" not in sys.modules:
        return 0
    from greenlet import greenlet

    return sum(
        1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead
    )
