"""Typed JSON events, Flask-SSE style, without Redis and without Flask-SSE's flaws.

Flask-SSE needs a Redis server, and its ``/send`` is a ``GET``: any page, link
prefetcher or crawler can trigger it. Its encoder splits data with
``str.splitlines()`` (a U+2028 or ``\\x0c`` in a payload breaks the event), writes
nothing for an empty payload, and lets a line break in ``type`` or ``id`` inject
fields (S4, S6, S7).

Here ``events.publish({"message": "Hello!"}, type="greeting")`` keeps Flask-SSE's
call, runs on the embedded memory broker, and encodes exactly. ``/send`` takes only
``POST`` and refuses cross-site requests: browsers send ``Sec-Fetch-Site`` and
``Origin`` with a ``fetch()`` POST, and either one naming another site gets 403.
(Clients that send neither, such as curl, are let through: this is a demo, not
authentication.) The page listens with ``addEventListener('greeting', ...)``,
because named events never reach ``onmessage`` (C18), and reads the data with
``JSON.parse``. Run: ``flask --app examples/greeting/app.py run``.
"""

from __future__ import annotations

from flask import Flask, render_template, request

from flask_eventstream import EventStream

# examples/static: the stylesheet all the examples share (and htmx, vendored).
app = Flask(__name__, static_folder="../static")
app.config.from_prefixed_env()  # e.g. FLASK_EVENTSTREAM_BROKER_URL=redis://...
events = EventStream(app)


def _cross_site() -> bool:
    """Whether the browser says this request comes from another site."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in {"same-origin", "none"}:
        return True
    origin = request.headers.get("Origin")
    return origin is not None and origin != request.host_url.rstrip("/")


@app.get("/")
def index() -> str:
    return render_template("greeting.html")


@app.post("/send")
def send_message() -> tuple[str, int]:
    if _cross_site():
        return "cross-site request refused", 403
    events.publish({"message": "Hello!"}, type="greeting")
    return "Message sent!", 200
