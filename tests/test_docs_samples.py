"""Samples in docs/ run as written: each test takes the code from the page itself."""

from __future__ import annotations

import itertools
import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_eventstream import EventStream

from .conftest import LiveServer
from .helpers import StreamClient

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"

_names = itertools.count()


def code_block(page: str, language: str, containing: str) -> str:
    """The one fenced *language* block of ``docs/<page>`` (or of ``README.md``)
    that holds *containing*."""
    text = (ROOT / page if page == "README.md" else DOCS / page).read_text()
    blocks = re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, (
        f"{page}: {len(found)} {language} blocks hold {containing!r}"
    )
    return found[0]


def test_signals_sample_logs_with_flasks_default_log_levels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not in debug mode, as under a plain ``flask run``: the sample's INFO shows."""
    app = Flask(f"signals_sample_{next(_names)}")
    EventStream(app)
    sample = code_block("configuration.md", "python", "stream_opened.connect_via")
    exec(sample, {"app": app})  # noqa: S102 - the documentation's own code
    with app.test_client().get("/stream/news", buffered=False) as response:
        assert response.status_code == 200
    assert any(
        record.name == app.name and record.getMessage().startswith("stream on ")
        for record in caplog.records
    ), caplog.records


def test_readme_sample_sends_the_greeting(
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_app"}
    exec(code_block("README.md", "python", "EventStream(app)"), namespace)  # noqa: S102
    url = serve(namespace["app"]).url
    stream = open_stream(f"{url}/stream?channel=chat")
    stream.read_until(lambda s: len(s.raw) > 0)  # subscribed
    with urllib.request.urlopen(
        urllib.request.Request(f"{url}/send", method="POST"), timeout=5
    ) as response:
        assert response.read() == b"sent"
    (event,) = stream.read_events(1)
    assert (event.event, json.loads(event.data)) == ("greeting", {"message": "Hello!"})
    namespace["events"].broker().close()
