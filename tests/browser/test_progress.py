"""The progress example in Chromium: the bar fills to 100 and the clock runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType

import pytest
from playwright.sync_api import BrowserContext, expect

from ..conftest import LiveServer
from .conftest import TIMEOUT_MS

pytestmark = pytest.mark.browser


def test_job_progress_reaches_100_and_time_is_shown(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    progress = example("progress", PROGRESS_STEP_SECONDS=0.01)
    url = serve(progress.app).url
    page = new_context().new_page()
    page.goto(url + "/")
    page.click("#start")
    expect(page.locator("#status")).to_have_text("done", timeout=TIMEOUT_MS)
    expect(page.locator("#percent")).to_have_text("100")
    assert page.eval_on_selector("#bar", "bar => bar.value") == 100
    expect(page.locator("#time")).to_have_text(
        re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"), timeout=TIMEOUT_MS
    )
