"""Browser snippets in docs/ work as written, against the example they describe."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import BrowserContext, expect

from flask_eventstream import EventStream

from ..brokers.redis_server import RedisServer
from ..conftest import LiveServer
from ..docs_blocks import code_block
from ..helpers import wait_for
from ..test_docs_samples import User, login_app
from .conftest import TIMEOUT_MS

pytestmark = pytest.mark.browser

#: The page's ``const source`` (a global binding, not a window property) is open.
OPEN = "typeof source !== 'undefined' && source.readyState === EventSource.OPEN"


def test_the_clock_tutorials_page_shows_the_time(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    snippet = code_block("tutorials.md", "html", 'new EventSource("/clock")')
    clock = example("clock")
    clock.app.add_url_rule("/snippet", "snippet", lambda: snippet)
    page = new_context().new_page()
    page.goto(serve(clock.app).url + "/snippet")
    # time.ctime(): "Wed Dec  2 11:52:00 2026"
    expect(page.locator("#target_div")).to_have_text(
        re.compile(r"\d\d:\d\d:\d\d \d{4}$"), timeout=TIMEOUT_MS
    )


def test_the_quickstart_app_shows_headlines_and_a_reload_starts_empty(
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    """Quick start, step 2, as written; and what it says of a reload."""
    namespace: dict[str, Any] = {"__name__": "quickstart_app"}
    exec(code_block("quickstart.md", "python", "PAGE = "), namespace)  # noqa: S102
    app: Flask = namespace["app"]
    url = serve(app).url
    page = new_context().new_page()
    try:
        page.goto(url + "/")
        page.wait_for_function(OPEN)
        assert page.request.post(url + "/publish").ok
        expect(page.locator("#log li")).to_have_text(["Hello!"], timeout=TIMEOUT_MS)
        # A new page's EventSource has no id to send: "Hello!" is not replayed
        # (it would arrive before the next headline).
        page.reload()
        page.wait_for_function(OPEN)
        with app.app_context():
            namespace["events"].publish(
                {"title": "Next"}, event="headline", channel="news"
            )
        expect(page.locator("#log li")).to_have_text(["Next"], timeout=TIMEOUT_MS)
    finally:
        page.close()
        namespace["events"].broker().close()  # ends the open streams


INDEX_JS = {
    "README.md": lambda: code_block("README.md", "js", 'addEventListener("greeting"'),
    "index.md": lambda: code_block("index.md", "js", 'addEventListener("greeting"'),
}


@pytest.mark.parametrize("page_name", sorted(INDEX_JS))
def test_the_index_js_logs_the_greeting(
    page_name: str,
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    """The README's page side, on the README's app: the console shows the data."""
    namespace: dict[str, Any] = {"__name__": f"index_js_{page_name}"}
    exec(code_block("README.md", "python", "EventStream(app)"), namespace)  # noqa: S102
    app: Flask = namespace["app"]
    script = INDEX_JS[page_name]()
    # console.log records what it is given, for the test to read.
    record = "<script>window.logged = []; console.log = (x) => logged.push(x);</script>"
    app.add_url_rule("/", "page", lambda: f"{record}<script>{script}</script>")
    url = serve(app).url
    page = new_context().new_page()
    try:
        page.goto(url + "/")
        page.wait_for_function(OPEN)
        assert page.request.post(url + "/send").ok
        page.wait_for_function("window.logged.length > 0", timeout=TIMEOUT_MS)
        assert page.evaluate("window.logged") == [{"message": "Hello!"}]
    finally:
        page.close()
        namespace["events"].broker().close()


@pytest.mark.redis
def test_the_migration_page_script_receives_the_greeting(
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
    tmp_path: Path,
) -> None:
    """Flask-SSE's page script, unchanged, on the drop-in and a real Redis."""
    from flask import render_template_string

    redis_server = RedisServer(tmp_path)
    redis_server.start()
    namespace: dict[str, Any] = {"__name__": "migration_js"}
    try:
        sample = code_block("migration.md", "python", "def send_message")
        sample = sample.replace('"redis://localhost"', repr(redis_server.url))
        exec(sample, namespace)  # noqa: S102
        app: Flask = namespace["app"]
        script = code_block("migration.md", "js", "url_for('sse.stream')")
        # The sample's listener keeps the data to itself; a second one shows it.
        page_source = (
            f"<script>{script}</script><script>"
            "source.addEventListener('greeting', (e) => { window.got = e.data; });"
            "</script>"
        )
        app.add_url_rule("/", "page", lambda: render_template_string(page_source))
        url = serve(app).url
        page = new_context().new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url + "/")
        page.wait_for_function("source.readyState === EventSource.OPEN")
        assert page.request.get(url + "/send").text() == "Message sent!"
        page.wait_for_function("window.got !== undefined", timeout=TIMEOUT_MS)
        assert page.evaluate("window.got") == '{"message": "Hello!"}'
        assert errors == []
        page.close()
    finally:
        if "app" in namespace:
            namespace["app"].extensions["eventstream"].broker.close()
        redis_server.kill()


HTMX = Path(__file__).resolve().parents[2] / "examples" / "htmx"


def test_the_htmx_samples_swap_a_published_comment(
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    """docs/htmx.md's view and page, with the example's templates and htmx 2."""
    from flask import render_template, render_template_string, request

    app = Flask(
        "htmx_samples",
        template_folder=str(HTMX / "templates"),
        static_folder=str(HTMX.parent / "static"),
    )
    app.config.update(TESTING=True, EVENTSTREAM_HEARTBEAT=0.5)
    events = EventStream(app)
    saved: list[SimpleNamespace] = []

    def save(form: Any) -> SimpleNamespace:  # the app's own
        comment = SimpleNamespace(
            author=form["author"], text=form["text"], posted=datetime.datetime.now()
        )
        saved.append(comment)
        return comment

    namespace: dict[str, Any] = {
        "app": app,
        "events": events,
        "request": request,
        "render_template": render_template,
        "save": save,
        "count": lambda: len(saved),
    }
    exec(code_block("htmx.md", "python", "def post_comment"), namespace)  # noqa: S102
    body = code_block("htmx.md", "html", 'sse-swap="comment"')
    page_source = (
        "<script src=\"{{ url_for('static', filename='htmx/htmx-2.0.11.min.js') }}\">"
        "</script><script src=\"{{ url_for('static', "
        "filename='htmx/htmx-ext-sse-2.2.4.js') }}\"></script>"
        f'{body}<span id="count"></span></body>'
    )
    app.add_url_rule(
        "/", "page", lambda: render_template_string(page_source, comments=[])
    )
    url = serve(app).url
    page = new_context().new_page()
    page.goto(url + "/")
    wait_for(lambda: events.subscriber_count("comments") == 1, timeout=10)
    answer = page.request.post(
        url + "/comments", form={"author": "ada", "text": "hello\nthere"}
    )
    assert answer.status == 204
    comment = page.locator("#comments li.comment")
    expect(comment.locator(".text")).to_have_text("hello\nthere", timeout=TIMEOUT_MS)
    expect(comment.locator("strong")).to_have_text("ada")
    expect(page.locator("#count")).to_have_text("1 comment")
    page.close()
    events.broker().close()


def test_the_private_channel_samples_show_a_notice_to_its_user_only(
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    """security.md: the hook, the view, the page, and a publish for one user."""
    page_source = code_block("security.md", "html", "stream_url|tojson")
    shows = "<script>function show(text) { document.body.append(text); }</script>"
    app, namespace = login_app(**{"home.html": shows + page_source})
    hook = code_block("security.md", "python", "def own_channel")
    with app.app_context():
        exec(hook, {**namespace, "user": User(1)})  # noqa: S102 - publishes, unseen
    exec(code_block("security.md", "python", "def home():"), namespace)  # noqa: S102
    events: EventStream = namespace["events"]
    url = serve(app).url
    pages = {}
    for user_id in (1, 2):
        page = new_context().new_page()
        assert page.request.post(f"{url}/login/{user_id}").ok
        page.goto(url + "/")
        pages[user_id] = page
    wait_for(lambda: events.subscriber_count() == 2, timeout=10)
    assert pages[2].request.get(f"{url}/stream/user:1").status == 403
    with app.app_context():
        exec(hook, {**namespace, "user": User(1)})  # noqa: S102 - publishes again
    expect(pages[1].locator("body")).to_contain_text(
        "Your export is ready", timeout=TIMEOUT_MS
    )
    pages[2].wait_for_timeout(500)  # had it been sent to user 2, it would be here
    expect(pages[2].locator("body")).not_to_contain_text("Your export is ready")


def test_the_reconnect_script_recovers_from_an_expired_token(
    app: Flask,
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    app.config["SECRET_KEY"] = "test"
    events = EventStream(app)
    with app.test_request_context():
        expired = events.stream_url("news", token=True, max_age=1)
    script = code_block("security.md", "js", "function connect(url)")

    @app.get("/stream-url")
    def fresh_url() -> str:
        return events.stream_url("news", token=True)

    @app.get("/")
    def page_source() -> str:
        return f"<script>{script}\nconnect({json.dumps(expired)});</script>"

    client = app.test_client()

    def refused() -> bool:
        with client.get(expired, buffered=False) as response:
            return response.status_code == 401

    wait_for(refused, timeout=10)  # the token's second has passed

    page = new_context().new_page()
    page.goto(serve(app).url + "/")
    # Refused with 401 (CLOSED), it fetched a fresh URL and connected with it.
    wait_for(lambda: events.subscriber_count("news") == 1, timeout=15)
    page.close()
