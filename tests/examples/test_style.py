"""Every example page uses the examples' one stylesheet, served by its own app."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from .loader import EXAMPLES

NAMES = sorted(path.parent.name for path in EXAMPLES.glob("*/app.py"))


@pytest.mark.parametrize("name", NAMES)
def test_page_links_the_shared_stylesheet(
    example: Callable[..., ModuleType], name: str
) -> None:
    client = example(name).app.test_client()
    page = client.get("/").text
    assert '<link rel="stylesheet" href="/static/examples.css">' in page
    assert 'name="viewport"' in page
    with client.get("/static/examples.css") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/css"
        assert b".state[data-state" in response.data


@pytest.mark.parametrize("name", ["chat", "greeting", "htmx", "progress", "tokens"])
def test_connection_state_is_an_element_styles_can_follow(
    example: Callable[..., ModuleType], name: str
) -> None:
    page = example(name).app.test_client().get("/").text
    assert 'id="status" class="state" data-state="' in page


@pytest.mark.parametrize("name", ["chat", "greeting", "htmx"])
def test_pages_with_a_live_stream_load_the_shared_connection_badge(
    example: Callable[..., ModuleType], name: str
) -> None:
    """The badge (connecting / live / reconnecting / replayed N missed) is one
    script, ``examples/static/examples.js``; tests/browser/ checks what it shows."""
    client = example(name).app.test_client()
    assert '<script src="/static/examples.js"></script>' in client.get("/").text
    with client.get("/static/examples.js") as response:
        assert response.status_code == 200
        assert b"class ConnectionBadge" in response.data
