"""htmx 4's ``hx-sse`` in Chromium, with the sample of docs/htmx.md as written.

htmx 4.0.1 and its ``hx-sse`` extension are vendored in ``examples/static/htmx``
(``VENDORED.md``); the page's ``<script src="/static/htmx.min.js">`` and
``/static/hx-sse.js`` are served from those files. What docs/htmx.md says of
htmx 4 is checked here: unnamed events are swapped into the target, named ones
are dispatched as DOM events (``event.detail.data``) and not swapped, and after
a dropped stream it reconnects with ``Last-Event-ID`` and gets the missed events.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, send_file
from playwright.sync_api import BrowserContext, Page, expect

from flask_eventstream import EventStream

from ..conftest import LiveServer
from ..docs_blocks import code_block
from ..helpers import wait_for
from .conftest import TIMEOUT_MS
from .test_chat import StreamCutter

pytestmark = pytest.mark.browser

HTMX4 = Path(__file__).resolve().parents[2] / "examples" / "static" / "htmx"
SCRIPTS = {
    "htmx.min.js": HTMX4 / "htmx-4.0.1.min.js",
    "hx-sse.js": HTMX4 / "hx-sse-4.0.1.js",
}

#: After the sample: a listener that records the named events the element gets.
LISTENER = """
<script>
  window.named = [];
  document.querySelector("[hx-sse\\\\:connect]").addEventListener(
    "notice", (event) => window.named.push(event.detail.data));
</script>
"""


def htmx4_app(**config: Any) -> tuple[Flask, EventStream]:
    app = Flask(__name__, static_folder=None)
    app.config.update(TESTING=True, EVENTSTREAM_HEARTBEAT=0.5, **config)
    events = EventStream(app)
    sample = code_block("htmx.md", "html", "hx-sse:connect")
    page = f"<!doctype html>\n<title>htmx 4</title>\n<body>\n{sample}{LISTENER}"

    @app.get("/")
    def index() -> str:
        return page

    @app.get("/static/<name>")
    def script(name: str) -> Any:
        return send_file(SCRIPTS[name], mimetype="text/javascript")

    return app, events


def open_page(context: BrowserContext, url: str, events: EventStream) -> Page:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url + "/")
    assert page.evaluate("htmx.version").startswith("4."), "not htmx 4"
    wait_for(lambda: events.subscriber_count("comments") == 1, timeout=10)
    assert errors == []
    return page


def publish(app: Flask, events: EventStream, data: str, **options: Any) -> None:
    with app.app_context():
        events.publish(data, channel="comments", **options)


def test_unnamed_events_are_swapped_and_named_ones_dispatched(
    serve: Callable[[Flask], LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    app, events = htmx4_app()
    page = open_page(new_context(), serve(app).url, events)
    target = page.locator("[hx-sse\\:connect]")
    publish(app, events, '<p class="comment">first,\n  two lines</p>')
    publish(app, events, "a notice", event="notice")
    publish(app, events, '<p class="comment">second</p>')
    expect(target.locator("p.comment")).to_have_text(
        ["first,\n  two lines", "second"], timeout=TIMEOUT_MS, use_inner_text=False
    )
    page.wait_for_function("window.named.length === 1", timeout=TIMEOUT_MS)
    assert page.evaluate("window.named") == ["a notice"]
    expect(target).not_to_contain_text("a notice")


def test_after_a_dropped_stream_it_reconnects_and_replays(
    serve: Callable[[Flask], LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    app, events = htmx4_app()
    cutter = StreamCutter(app.wsgi_app)
    app.wsgi_app = cutter  # type: ignore[method-assign]
    page = open_page(new_context(), serve(app).url, events)
    comments = page.locator("[hx-sse\\:connect] p")
    publish(app, events, "<p>before</p>")
    expect(comments).to_have_text(["before"], timeout=TIMEOUT_MS)

    connections = len(cutter.last_event_ids)
    cutter.cut()
    publish(app, events, "<p>cut</p>")  # ends the stream, never reaches the page
    wait_for(lambda: events.subscriber_count("comments") == 0, timeout=10)
    publish(app, events, "<p>during</p>")
    cutter.resume()

    expect(comments).to_have_text(["before", "cut", "during"], timeout=TIMEOUT_MS)
    publish(app, events, "<p>after</p>")
    expect(comments).to_have_text(
        ["before", "cut", "during", "after"], timeout=TIMEOUT_MS
    )
    # It sent the id of the last event it had: "before"'s.
    resumed = cutter.last_event_ids[connections:]
    assert resumed and all(resumed), resumed
