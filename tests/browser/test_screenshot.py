"""The demo's screenshot in README.md and docs/index.md, taken from the real page.

``make demo`` runs the chat example; this test opens it in Chromium as two users,
exchanges a few messages, and takes a screenshot. It is written to
``docs/images/demo.png`` only with ``UPDATE_SCREENSHOTS=1`` (so a test run never
changes the work tree); otherwise it goes to the test's temporary folder and is
compared with the committed one loosely: same size in pixels, a real image.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from playwright.sync_api import BrowserContext, expect

from ..conftest import LiveServer
from .conftest import TIMEOUT_MS
from .test_chat import say, shown

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "demo.png"
#: CSS pixels of the page; the image is twice that (device scale factor 2).
VIEWPORT = {"width": 720, "height": 400}


def png_size(image: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert image[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert image[12:16] == b"IHDR"
    width, height = struct.unpack(">II", image[16:24])
    return width, height


def test_the_demo_screenshot_is_the_chat_as_it_looks(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    browser: object,
    tmp_path: Path,
) -> None:
    url = serve(example("chat").app).url
    pages = {}
    for user in ("ada", "bob"):
        context: BrowserContext = browser.new_context(  # type: ignore[attr-defined]
            viewport=VIEWPORT, device_scale_factor=2, color_scheme="light"
        )
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto(url + "/")
        page.fill("input[name=user]", user)
        page.click("text=Set name")
        expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT_MS)
        pages[user] = page
    try:
        ada, bob = pages["ada"], pages["bob"]
        say(ada, "Hello! Is the release out?")
        say(bob, "Tagged a minute ago, the wheel is building.")
        say(ada, "Every open page sees this at once, no reload.")
        shown(
            ada,
            "ada: Hello! Is the release out?",
            "bob: Tagged a minute ago, the wheel is building.",
            "ada: Every open page sees this at once, no reload.",
        )
        taken = tmp_path / "demo.png"
        ada.screenshot(path=str(taken), full_page=False)
        image = taken.read_bytes()
        expected_size = (VIEWPORT["width"] * 2, VIEWPORT["height"] * 2)
        assert png_size(image) == expected_size
        assert len(image) > 20_000, "an almost empty picture"
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":
            SCREENSHOT.parent.mkdir(exist_ok=True)
            SCREENSHOT.write_bytes(image)
        assert SCREENSHOT.is_file(), "run with UPDATE_SCREENSHOTS=1 to make it"
        assert png_size(SCREENSHOT.read_bytes()) == expected_size
    finally:
        for page in pages.values():
            page.context.close()


@pytest.mark.parametrize(
    ("page", "reference"),
    [("README.md", "docs/images/demo.png"), ("docs/index.md", "images/demo.png")],
)
def test_the_screenshot_opens_the_readme_and_the_docs_index(
    page: str, reference: str
) -> None:
    text = (ROOT / page).read_text()
    first_lines = text.split("\n\n", 3)[:3]
    assert any(f"]({reference})" in part for part in first_lines), first_lines
