"""The htmx example in Chromium: htmx 2 and htmx-ext-sse swap published fragments."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from ..conftest import LiveServer
from .conftest import TIMEOUT_MS
from .test_chat import StreamCutter

pytestmark = pytest.mark.browser


def open_page(context: BrowserContext, url: str) -> Page:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url + "/")
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    assert errors == []  # e.g. an extension written for another htmx
    return page


def post(page: Page, author: str, text: str) -> None:
    page.fill("input[name=author]", author)
    page.fill("textarea[name=text]", text)
    page.click("#post")
    expect(page.locator("textarea[name=text]")).to_have_value("", timeout=TIMEOUT_MS)


def test_a_posted_comment_is_swapped_into_every_page(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    url = serve(example("htmx").app).url
    ada, bob = open_page(new_context(), url), open_page(new_context(), url)
    post(ada, "ada", "two lines:\nthe second")
    for page in (ada, bob):
        comment = page.locator("#comments li.comment")
        expect(comment).to_have_count(1, timeout=TIMEOUT_MS)
        expect(comment.locator("strong")).to_have_text("ada")
        expect(comment.locator(".text")).to_have_text("two lines:\nthe second")
        # The fragment's out-of-band <span> replaced the count, not appended.
        expect(page.locator("#count")).to_have_text("1 comment")
        expect(page.locator("#comments #count")).to_have_count(0)


def test_comments_posted_while_the_stream_was_down_are_replayed(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    htmx = example("htmx", EVENTSTREAM_RETRY=500)
    cutter = StreamCutter(htmx.app.wsgi_app)
    htmx.app.wsgi_app = cutter
    page = open_page(new_context(), serve(htmx.app).url)
    post(page, "ada", "before")
    expect(page.locator("#comments li")).to_have_count(1, timeout=TIMEOUT_MS)

    cutter.cut()
    expect(page.locator("#status")).to_have_text("reconnecting", timeout=TIMEOUT_MS)
    client = htmx.app.test_client()
    for text in ("during one", "during two"):
        form = {"author": "bob", "text": text}
        client.post("/comments", data=form, headers={"HX-Request": "true"})
    cutter.resume()

    expect(page.locator("#status")).to_have_text(
        "replayed 2 missed", timeout=TIMEOUT_MS
    )
    expect(page.locator("#comments .text")).to_have_text(
        ["before", "during one", "during two"], timeout=TIMEOUT_MS
    )
    expect(page.locator("#count")).to_have_text("3 comments")


def test_a_page_rendered_with_comments_does_not_repeat_them(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    htmx = example("htmx")
    client = htmx.app.test_client()
    client.post(
        "/comments", data={"author": "a", "text": "old"}, headers={"HX-Request": "true"}
    )
    page = open_page(new_context(), serve(htmx.app).url)
    post(page, "b", "new")
    expect(page.locator("#comments .text")).to_have_text(
        ["old", "new"], timeout=TIMEOUT_MS
    )
