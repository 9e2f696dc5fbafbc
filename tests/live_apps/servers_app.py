"""A small app for tests that run it under a real server process (gunicorn, nginx).

Environment: ``EVENTSTREAM_HEARTBEAT`` (seconds, default 15),
``EVENTSTREAM_BROKER_URL`` (default ``memory://``), and, when set,
``EVENTSTREAM_REDIS_PREFIX`` and ``EVENTSTREAM_HISTORY``.

- ``GET /stream?channel=...``: the extension's stream endpoint;
- ``POST /publish?channel=...``: publishes the request body as the data of an event,
  answers its id;
- ``GET /count``: ``events.subscriber_count()``;
- ``GET /fds``: how many file descriptors this worker process has open;
- ``GET /gc-frozen``: how many objects the worker's garbage collector has frozen.
"""

from __future__ import annotations

import gc
import os

from flask import Flask, request

from flask_eventstream import EventStream

app = Flask(__name__)
app.config["EVENTSTREAM_HEARTBEAT"] = float(
    os.environ.get("EVENTSTREAM_HEARTBEAT", "15")
)
app.config["EVENTSTREAM_BROKER_URL"] = os.environ.get(
    "EVENTSTREAM_BROKER_URL", "memory://"
)
for name in ("EVENTSTREAM_REDIS_PREFIX", "EVENTSTREAM_HISTORY"):
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
