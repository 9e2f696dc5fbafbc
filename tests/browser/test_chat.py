"""The chat example in Chromium: every open page shows every message, once.

``EVENTSTREAM_RETRY=500`` makes the browser reconnect after 0.5 s instead of its
default 3 s (docs/protocol.md: C10, O7), which keeps the reconnection test short.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from ..conftest import LiveServer
from .conftest import TIMEOUT_MS

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

pytestmark = pytest.mark.browser


def open_chat(context: BrowserContext, url: str, user: str) -> Page:
    """A chat page signed in as *user*, its event stream open."""
    page = context.new_page()
    page.goto(url + "/")
    page.fill("input[name=user]", user)
    page.click("text=Set name")
    expect(page.locator("input[name=user]")).to_have_value(user, timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT_MS)
    return page


def say(page: Page, message: str) -> None:
    """Post *message* with the page's form; return once the POST is answered."""
    page.fill("#message", message)
    page.click("#say button")
    expect(page.locator("#message")).to_have_value("", timeout=TIMEOUT_MS)


def shown(page: Page, *lines: str) -> None:
    """The page lists exactly *lines* (user: message), in order, each once."""
    expect(page.locator("#messages li")).to_have_text(
        [re.compile(rf"\[\d\d:\d\d:\d\d\] {re.escape(line)}") for line in lines],
        timeout=TIMEOUT_MS,
    )


def test_a_message_appears_once_on_every_open_page(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    chat = example("chat")
    url = serve(chat.app).url
    ada = open_chat(new_context(), url, "ada")
    bob = open_chat(new_context(), url, "bob")
    say(ada, "hello from ada")
    say(bob, "hi ada")
    for page in (ada, bob):
        shown(page, "ada: hello from ada", "bob: hi ada")


class StreamCutter:
    """WSGI middleware in front of the app: the server side of a network outage.

    :meth:`cut` ends every open event stream at its next chunk, dropping that chunk
    (a clean end of body: the browser reconnects, C6), and holds new stream requests
    until :meth:`resume`. Events published meanwhile can only reach the page by
    replay from ``Last-Event-ID``.
    """

    def __init__(self, app: WSGIApplication, prefix: str = "/stream") -> None:
        self.app = app
        self.prefix = prefix
        self.last_event_ids: list[str | None] = []
        self._up = threading.Event()
        self._up.set()
        self._outages = 0

    def cut(self) -> None:
        self._up.clear()
        self._outages += 1

    def resume(self) -> None:
        self._up.set()

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if not environ["PATH_INFO"].startswith(self.prefix):
            return self.app(environ, start_response)
        self._up.wait(timeout=TIMEOUT_MS / 1000)
        self.last_event_ids.append(environ.get("HTTP_LAST_EVENT_ID"))
        outages = self._outages
        return self._until_cut(self.app(environ, start_response), outages)

    def _until_cut(self, body: Iterable[bytes], outages: int) -> Iterator[bytes]:
        try:
            for chunk in body:
                if self._outages != outages:
                    return
                yield chunk
        finally:
            close: Any = getattr(body, "close", None)
            if close is not None:
                close()


def test_a_page_that_lost_its_stream_shows_what_it_missed_once(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    chat = example("chat", EVENTSTREAM_RETRY=500)
    cutter = StreamCutter(chat.app.wsgi_app)
    chat.app.wsgi_app = cutter
    url = serve(chat.app).url
    ada = open_chat(new_context(), url, "ada")
    say(ada, "before")
    shown(ada, "ada: before")

    connections = len(cutter.last_event_ids)
    cutter.cut()
    expect(ada.locator("#status")).to_have_text("reconnecting", timeout=TIMEOUT_MS)
    say(ada, "during one")
    say(ada, "during two")
    cutter.resume()

    expect(ada.locator("#status")).to_have_text("replayed 2 missed", timeout=TIMEOUT_MS)
    expect(ada.locator("#status")).to_have_attribute("data-state", "replayed")
    say(ada, "after")
    shown(ada, "ada: before", "ada: during one", "ada: during two", "ada: after")
    # The browser resumed from the last event it had seen (C8, C11).
    resumed = cutter.last_event_ids[connections:]
    assert resumed and all(resumed), resumed
