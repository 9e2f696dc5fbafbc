"""A clock streamed from a generator, with heartbeats and clean-up.

The answer writes ``'data: {}\\n\\n'.format(get_message())`` in an endless
generator and returns it as a ``Response``. That works for ``time.ctime()`` but:
a line break in the data would end the event early or inject fields (S4); no
``Cache-Control`` or ``X-Accel-Buffering`` header, so a proxy may hold the ticks
back (O1, O5); the generator has no request context; and nothing tells the browser
how soon to reconnect.

Here the view returns ``events.stream(ticks())``: each yielded string becomes one
correctly framed event with the right headers, the generator runs in the request
context, and when the tab closes the generator is closed (its ``finally`` runs)
instead of ticking for nobody. Run: ``flask --app examples/clock/app.py run``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, render_template

from flask_eventstream import EventStream

# examples/static: the stylesheet all the examples share (and htmx, vendored).
app = Flask(__name__, static_folder="../static")
app.config.from_prefixed_env()  # e.g. FLASK_EVENTSTREAM_HEARTBEAT=5
events = EventStream(app)


def ticks() -> Iterator[str]:
    """The time, once a second, for as long as the page is open."""
    while True:
        time.sleep(1.0)
        yield time.ctime()


@app.get("/")
def index() -> str:
    return render_template("clock.html")


@app.get("/clock")
def clock() -> Response:
    return events.stream(ticks())
