"""A live comments feed with htmx: the server publishes rendered HTML fragments.

The page is plain server-rendered HTML. htmx's SSE extension (htmx 2 with
``htmx-ext-sse`` 2, served from ``static/``) subscribes to the ``comments``
channel and appends each ``comment`` event to the list as it is: the event's
data is a fragment rendered with Jinja, several lines long, published with
``events.publish(render_template(...), event="comment")``. The same fragment
carries an out-of-band ``<span id="count" hx-swap-oob="true">``, so one event
also updates the comment count elsewhere on the page.

The page lists the comments it was rendered with and subscribes with
``?lastEventId=`` the id of the last of them, so a comment posted between the
render and the stream's opening is replayed, not lost; later reconnections send
``Last-Event-ID`` as browsers do.
Run: ``flask --app examples/htmx/app.py run``.
"""

from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass

from flask import Flask, abort, render_template, request, url_for

from flask_eventstream import EventStream

# examples/static: the stylesheet all the examples share (and htmx, vendored).
app = Flask(__name__, static_folder="../static")
app.config.from_prefixed_env()
events = EventStream(app)

CHANNEL = "comments"
MAX_TEXT = 2000


@dataclass(frozen=True)
class Comment:
    author: str
    text: str
    posted: datetime.datetime


class Feed:
    """The comments so far and the id of the event that published the last one.

    A lock keeps the two in step with the channel: a page rendered from
    :meth:`snapshot` and subscribed after its id misses nothing and sees nothing
    twice. A real app would keep the comments in its database.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._comments: list[Comment] = []
        self._last_id = ""

    def snapshot(self) -> tuple[list[Comment], str]:
        with self._lock:
            return list(self._comments), self._last_id

    def add(self, comment: Comment) -> None:
        """Keep *comment* and publish it, rendered, to every open page."""
        with self._lock:
            self._comments.append(comment)
            html = render_template(
                "_published.html", comment=comment, count=len(self._comments)
            )
            self._last_id = events.publish(html, event="comment", channel=CHANNEL).id


feed = Feed()


@app.get("/")
def index() -> str:
    comments, last_id = feed.snapshot()
    query = {"lastEventId": last_id} if last_id else {}
    stream = url_for("eventstream.stream", channel=CHANNEL, **query)
    return render_template("comments.html", comments=comments, stream=stream)


@app.post("/comments")
def post_comment() -> tuple[str, int]:
    # htmx sends this header; another site's form cannot (a cheap CSRF guard).
    if request.headers.get("HX-Request") != "true":
        abort(403, "post comments from the page")
    author = request.form.get("author", "").strip()
    text = request.form.get("text", "").strip()
    if not author or not text or len(text) > MAX_TEXT or len(author) > 40:
        abort(
            400,
            f"a comment needs a name (40 characters at most) and a text "
            f"({MAX_TEXT} at most)",
        )
    now = datetime.datetime.now(datetime.timezone.utc)
    feed.add(Comment(author, text, now))
    return "", 204
