"""Flask-SSE 1.0.0 under test (gunicorn gevent worker, Redis at ``REDIS_URL``)."""

from __future__ import annotations

import os
import threading

from flask import Flask, request
from flask_sse import sse  # type: ignore[import-untyped]
from redis import Redis

from ._ticks import publish_loop, stop_all

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
app.register_blueprint(sse, url_prefix="/stream")


@app.post("/publish")
def publish() -> str:
    channel = request.args.get("channel", "sse")
    count = int(request.args.get("count", "1"))
    rate = float(request.args.get("rate", "0"))
    size = int(request.args.get("size", "100"))

    def run() -> None:
        with app.app_context():
            # Flask-SSE JSON-encodes the data; a str stays a JSON string.
            publish_loop(lambda d: sse.publish(d, channel=channel), count, rate, size)

    threading.Thread(target=run, daemon=True).start()
    return "started"


@app.post("/stop")
def stop() -> str:
    stop_all()
    return "stopped"


@app.get("/count")
def count() -> str:
    channel = request.args.get("channel", "sse")
    client = Redis.from_url(app.config["REDIS_URL"])
    try:
        return str(dict(client.pubsub_numsub(channel)).get(channel.encode(), 0))
    finally:
        client.close()


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())
