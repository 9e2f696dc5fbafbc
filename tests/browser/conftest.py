"""A real Chromium, driven by Playwright's sync API, for the browser tests.

The browser is the system Chromium (``/usr/bin/chromium``, installed by
``scripts/system-deps.sh``): ``playwright install`` needs a download this project
does not rely on. One browser serves the whole session; each test gets fresh
browser contexts (separate cookies, so separate chat users).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from ..conftest import missing
from ..examples.conftest import example  # noqa: F401  (the example apps, loaded)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext

CHROMIUM = os.environ.get("EVENTSTREAM_CHROMIUM", "/usr/bin/chromium")

#: Every Playwright action and assertion waits at most this long (ms).
TIMEOUT_MS = 10_000


def chromium_args() -> list[str]:
    args = [
        "--headless=new",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    # Chromium refuses to start its sandbox as root (containers, CI).
    if os.geteuid() == 0:
        args.insert(0, "--no-sandbox")
    return args


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        missing("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop running: the sync API can start its own
    else:
        pytest.fail("Playwright's sync API cannot run inside a running asyncio loop")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=chromium_args(),
            timeout=30_000,
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[[], BrowserContext]]:
    """``new_context()``: a fresh browser profile (own cookies), closed after."""
    contexts: list[BrowserContext] = []

    def make() -> BrowserContext:
        context = browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
