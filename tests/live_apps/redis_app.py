"""An app on the Redis broker, run as a server process by the multi-process tests.

``python tests/live_apps/redis_app.py`` serves it with Werkzeug's threaded server on
a free port of 127.0.0.1 and prints ``port <number>`` once it listens.

Environment: ``EVENTSTREAM_BROKER_URL`` (a Redis URL), ``EVENTSTREAM_REDIS_PREFIX``,
``EVENTSTREAM_HEARTBEAT`` (seconds, default 0.5).

- ``GET /stream?channel=...``: the extension's stream endpoint;
- ``GET /count``: ``events.subscriber_count()`` in this process.
"""

from __future__ import annotations

import os

from flask import Flask
from werkzeug.serving import make_server

from flask_eventstream import EventStream

app = Flask(__name__)
app.config.update(
    EVENTSTREAM_BROKER_URL=os.environ["EVENTSTREAM_BROKER_URL"],
    EVENTSTREAM_REDIS_PREFIX=os.environ.get("EVENTSTREAM_REDIS_PREFIX", "eventstream:"),
    EVENTSTREAM_HEARTBEAT=float(os.environ.get("EVENTSTREAM_HEARTBEAT", "0.5")),
)
events = EventStream(app)


@app.get("/count")
def count() -> str:
    return str(events.subscriber_count())


if __name__ == "__main__":
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"port {server.server_port}", flush=True)
    server.serve_forever()
