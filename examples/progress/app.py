"""A live progress bar and a time display, with no Redis and no shared queue.

The answer (pyFlaskBootstrap4's ``sse_bp.py``) feeds a page from a function
(``streamFunc(getTimeEvent)``) and from a ``PubSub`` class. Its flaws: one
``Queue`` per channel is shared by every subscriber, so each message reaches only
one open page; the queue holds 15 messages and ``put()`` then blocks the publisher
for good when no page reads; ``listen()`` yields a single message and stops; the
``/sse/<channel>`` view forgets to ``return``; ``withContext`` is always off; all
state sits in class attributes; ``'data: {}\\n\\n'.format(...)`` breaks on a line
break in the data.

Here a ``POST /start`` runs a long job in a background thread that publishes its
progress, 0 to 100, to its own channel with ``events.publish``: every page watching
the job sees every step, and publishing never blocks. The start response carries
the id of the job's first event; the page subscribes with ``?lastEventId=`` that
id, so whatever the job published before the page connected is replayed, not lost.
The time display is ``events.stream(current_time)``: a function called again and
again, each result one event, stopped when the page goes away.
Run: ``flask --app examples/progress/app.py run``.

Each job's channel keeps its events in the broker's history (at most
``EVENTSTREAM_HISTORY``); a real app would give jobs a lifetime.
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from typing import Any

from flask import Flask, Response, render_template, request, url_for

from flask_eventstream import EventStream

# examples/static: the stylesheet all the examples share (and htmx, vendored).
app = Flask(__name__, static_folder="../static")
#: Seconds per percent: the whole job takes 100 times this.
app.config["PROGRESS_STEP_SECONDS"] = 0.05
app.config.from_prefixed_env()  # e.g. FLASK_PROGRESS_STEP_SECONDS=0.2
events = EventStream(app)


def current_time() -> str:
    """The UTC time, after a second's wait: a blocking call, made again and again."""
    time.sleep(1.0)
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def run_job(channel: str, step: float) -> None:
    """The long job: report each percent done on *channel*."""
    # A thread has no app context of its own; publish() needs to know the app.
    with app.app_context():
        for percent in range(1, 101):
            time.sleep(step)
            events.publish({"percent": percent}, event="progress", channel=channel)


def _cross_site() -> bool:
    """Whether the browser says this request comes from another site."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in {"same-origin", "none"}:
        return True
    origin = request.headers.get("Origin")
    return origin is not None and origin != request.host_url.rstrip("/")


@app.get("/")
def index() -> str:
    return render_template("progress.html")


@app.post("/start")
def start() -> tuple[dict[str, Any] | str, int]:
    if _cross_site():
        return "cross-site request refused", 403
    job = uuid.uuid4().hex
    channel = f"job-{job}"
    first = events.publish({"percent": 0}, event="progress", channel=channel)
    step = float(app.config["PROGRESS_STEP_SECONDS"])
    threading.Thread(
        target=run_job, args=(channel, step), name=f"job-{job}", daemon=True
    ).start()
    stream = url_for("eventstream.stream", channel=channel, lastEventId=first.id)
    return {"job": job, "percent": 0, "stream": stream}, 202


@app.get("/time")
def time_feed() -> Response:
    # ?limit=N ends the stream after N readings (for tests and demos).
    return events.stream(current_time, limit=request.args.get("limit", type=int))
