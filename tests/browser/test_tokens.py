"""The tokens example in Chromium: fetch() reads the POST's stream; Stop frees the
server's generator."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
from playwright.sync_api import BrowserContext, expect

from ..conftest import LiveServer
from ..examples.test_tokens import GeventServer, gevent_server  # noqa: F401
from ..helpers import wait_for
from .conftest import TIMEOUT_MS

pytestmark = pytest.mark.browser


def test_the_answer_streams_into_the_page(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    tokens = example("tokens", TOKENS_DELAY_SECONDS=0.001)
    page = new_context().new_page()
    page.goto(serve(tokens.app).url + "/")
    page.fill("#prompt", "Tell me")
    page.click("#send")
    expect(page.locator("#status")).to_have_text("done", timeout=TIMEOUT_MS)
    expect(page.locator("#answer")).to_have_text(
        f"You asked: Tell me\n\n{tokens.ANSWER}", timeout=TIMEOUT_MS
    )


def test_stop_aborts_the_fetch_and_the_generators_finally_runs(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    new_context: Callable[[], BrowserContext],
) -> None:
    tokens = example("tokens", TOKENS_DELAY_SECONDS=0.2)
    page = new_context().new_page()
    page.goto(serve(tokens.app).url + "/")
    page.click("#send")
    expect(page.locator("#answer")).to_contain_text("Each piece", timeout=TIMEOUT_MS)
    reply = page.locator("#answer").get_attribute("data-reply")
    assert reply is not None and tokens.replies[reply] == "running"
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("stopped", timeout=TIMEOUT_MS)
    wait_for(lambda: tokens.replies[reply] == "stopped", timeout=10)
    expect(page.locator("#send")).to_be_enabled()


@pytest.mark.slow
def test_stop_ends_the_generator_on_gunicorn_gevent(
    gevent_server: GeventServer,  # noqa: F811
    new_context: Callable[[], BrowserContext],
) -> None:
    page = new_context().new_page()
    page.goto(gevent_server.url + "/")
    page.click("#send")
    expect(page.locator("#answer")).to_contain_text("Each piece", timeout=TIMEOUT_MS)
    reply = page.locator("#answer").get_attribute("data-reply")
    assert reply is not None and gevent_server.state(reply) == "running"
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("stopped", timeout=TIMEOUT_MS)
    wait_for(lambda: gevent_server.state(reply) == "stopped", timeout=10)
