"""The greeting example in Chromium: a typed JSON event reaches its listener."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
from playwright.sync_api import BrowserContext, expect

from ..conftest import LiveServer
from .conftest import TIMEOUT_MS

pytestmark = pytest.mark.browser


def test_greeting_listener_gets_the_parsed_json(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    greeting = example("greeting")
    url = serve(greeting.app).url
    page = new_context().new_page()
    page.goto(url + "/")
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT_MS)
    page.click("#send")  # fetch() POST, same origin
    page.click("#send")
    # data.message from JSON.parse, not the raw '{"message": "Hello!"}'
    expect(page.locator("#greetings li")).to_have_text(
        ["Hello!", "Hello!"], timeout=TIMEOUT_MS
    )
