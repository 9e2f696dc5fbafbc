"""Browser snippets in docs/ work as written, against the example they describe."""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType

import pytest
from playwright.sync_api import BrowserContext, expect

from ..conftest import LiveServer
from ..test_docs_samples import code_block
from .conftest import TIMEOUT_MS

pytestmark = pytest.mark.browser


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
