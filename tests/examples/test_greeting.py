"""The greeting example (Flask-SSE style): a typed JSON event, sent by a POST."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType

import pytest

from ..conftest import LiveServer
from ..helpers import StreamClient


def test_page_listens_for_greeting_events_and_parses_json(
    example: Callable[..., ModuleType],
) -> None:
    page = example("greeting").app.test_client().get("/").text
    assert 'new EventSource("/stream")' in page
    assert 'addEventListener("greeting"' in page
    assert "JSON.parse(event.data)" in page


def test_send_publishes_a_typed_json_event(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    greeting = example("greeting")
    url = serve(greeting.app).url
    stream = open_stream(f"{url}/stream")
    response = greeting.app.test_client().post("/send")
    assert (response.status_code, response.text) == (200, "Message sent!")
    [event] = stream.read_events(1)
    assert event.event == "greeting"  # not "message": onmessage will not see it
    assert json.loads(event.data) == {"message": "Hello!"}
    assert event.id  # the broker gives every event an id, for replay


def test_send_is_post_only(example: Callable[..., ModuleType]) -> None:
    client = example("greeting").app.test_client()
    assert client.get("/send").status_code == 405


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Sec-Fetch-Site": "cross-site"}, id="fetch-site-cross-site"),
        pytest.param({"Sec-Fetch-Site": "same-site"}, id="fetch-site-same-site"),
        pytest.param({"Origin": "http://evil.example"}, id="foreign-origin"),
    ],
)
def test_send_refuses_cross_site_requests(
    example: Callable[..., ModuleType], headers: dict[str, str]
) -> None:
    greeting = example("greeting")
    assert greeting.app.test_client().post("/send", headers=headers).status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
            id="browser-same-origin",
        ),
        pytest.param({}, id="no-browser-headers"),
    ],
)
def test_send_accepts_same_origin_requests(
    example: Callable[..., ModuleType], headers: dict[str, str]
) -> None:
    greeting = example("greeting")
    assert greeting.app.test_client().post("/send", headers=headers).status_code == 200
