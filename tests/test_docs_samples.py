"""Samples in docs/ run as written: each test takes the code from the page itself."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from flask import Flask

from flask_eventstream import EventStream

DOCS = Path(__file__).parent.parent / "docs"

_names = itertools.count()


def code_block(page: str, language: str, containing: str) -> str:
    """The one fenced *language* block of ``docs/<page>`` that holds *containing*."""
    text = (DOCS / page).read_text()
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
