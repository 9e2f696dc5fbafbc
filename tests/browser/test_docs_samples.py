"""Browser snippets in docs/ work as written, against the example they describe."""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import BrowserContext, expect

from ..conftest import LiveServer
from ..test_docs_samples import code_block
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
