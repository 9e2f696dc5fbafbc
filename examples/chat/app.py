"""A chat pushed to every open page, without Redis.

A form POSTs to ``/post``; the user name comes from the session; messages are
time-stamped and published to the ``chat`` channel; every open page shows them
through ``onmessage``. Run: ``flask --app examples/chat/app.py run``.
"""

from __future__ import annotations

import datetime
import os

from flask import Flask, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from flask_eventstream import EventStream

# examples/static: the stylesheet all the examples share (and htmx, vendored).
app = Flask(__name__, static_folder="../static")
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev-only-change-me")
app.config.from_prefixed_env()  # e.g. FLASK_EVENTSTREAM_BROKER_URL=redis://...
events = EventStream(app)

#: Longest message accepted; far below EVENTSTREAM_MAX_EVENT_SIZE, so a long paste
#: gets a 400 here instead of a 500 from publish().
MAX_MESSAGE = 2000


@app.get("/")
def index() -> str:
    return render_template("chat.html", user=session.get("user", "anonymous"))


def _cross_origin() -> bool:
    """Whether the browser says another site sent this form (it sends ``Origin``)."""
    origin = request.headers.get("Origin")
    return origin is not None and origin != request.host_url.rstrip("/")


@app.post("/login")
def login() -> Response | tuple[str, int]:
    if _cross_origin():  # else any site could rename our users
        return "cross-origin post refused", 403
    session["user"] = request.form.get("user", "").strip()[:40] or "anonymous"
    return redirect(url_for("index"))


@app.post("/post")
def post() -> tuple[str, int]:
    if _cross_origin():  # the form is posted by our own page, never by another
        return "cross-origin post refused", 403
    message = request.form.get("message", "")
    if not message.strip():
        return "empty message", 400
    if len(message) > MAX_MESSAGE:
        return f"message longer than {MAX_MESSAGE} characters", 400
    user = session.get("user", "anonymous")
    now = datetime.datetime.now().replace(microsecond=0).time()
    events.publish(f"[{now.isoformat()}] {user}: {message}", channel="chat")
    return "", 204
