"""flask-eventstream under test (run by gunicorn with the gevent worker).

``EVENTSTREAM_BROKER_URL`` picks the broker (``memory://`` by default).
"""

from __future__ import annotations

import os
import threading

from flask import Flask, request

from flask_eventstream import EventStream

from ._ticks import publish_loop, stop_all

app = Flask(__name__)
app.config["EVENTSTREAM_BROKER_URL"] = os.environ.get(
    "EVENTSTREAM_BROKER_URL", "memory://"
)
events = EventStream(app)


@app.post("/publish")
def publish() -> str:
    channel = request.args.get("channel", "sse")
    count = int(request.args.get("count", "1"))
    rate = float(request.args.get("rate", "0"))
    size = int(request.args.get("size", "100"))

    def run() -> None:
        with app.app_context():
            publish_loop(
                lambda d: events.publish(d, channel=channel), count, rate, size
            )

    threading.Thread(target=run, daemon=True).start()
    return "started"


@app.post("/stop")
def stop() -> str:
    stop_all()
    return "stopped"


@app.get("/count")
def count() -> str:
    return str(events.subscriber_count(request.args.get("channel")))


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())
