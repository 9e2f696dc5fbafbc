"""Third-party clients read our streams exactly: ``sseclient-py`` and ``httpx-sse``.

Clients nobody here wrote, installed from PyPI, are fed the nastiest events we
can publish (line breaks of every kind, leading spaces, empty data, field-like
and comment-like data, Unicode line separators, a large payload, ids with spaces)
after the stream's opening comment, and must hand back the same type, data and
id, in order, with nothing extra. ``docs/clients.md`` lists what other clients
get wrong.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from flask import Flask

from flask_eventstream import Event, EventStream

from .conftest import missing

NASTY = [
    Event("line1\nline2\r\nline3\rline4"),
    Event("  leading spaces survive"),
    Event(""),
    Event("data: not a field"),
    Event(":not a comment"),
    Event("id: not an id either"),
    Event("Unicode \u2028 separators \u0085 and \x0c stay, é 😀"),
    Event("ends with a line break\n"),
    Event("typed", event="custom-type"),
    Event("with an id", id="id with spaces é"),
    Event("with a retry", retry=1234),
    Event("a" * 100_000),
]

#: What a conforming client gives back for each: type, data and id.
Seen = tuple[str, str, str]


@pytest.fixture
def resumed(app: Flask, events: EventStream, live: str) -> tuple[str, str, list[Seen]]:
    """A stream URL, a Last-Event-ID that replays exactly NASTY, what to expect."""
    with app.app_context():
        marker = events.publish("marker", channel="nasty")
        sent = [events.broker().publish("nasty", event) for event in NASTY]
    assert marker.id is not None
    expected = [
        (
            event.event or "message",
            event.data.replace("\r\n", "\n").replace("\r", "\n"),
            event.id or "",
        )
        for event in sent
    ]
    return f"{live}/stream/nasty", marker.id, expected


def _bytes(url: str, last_event_id: str) -> Iterator[bytes]:
    with httpx.stream(
        "GET", url, headers={"Last-Event-ID": last_event_id}, timeout=10
    ) as response:
        assert response.status_code == 200
        yield from response.iter_bytes()


def test_sseclient_py_reads_every_nasty_event(
    resumed: tuple[str, str, list[Seen]],
) -> None:
    try:
        import sseclient
    except ImportError:
        missing("sseclient-py")
        raise
    url, last_event_id, expected = resumed
    got: list[Seen] = []
    for sse in sseclient.SSEClient(_bytes(url, last_event_id)).events():
        assert sse.event is not None and sse.id is not None
        got.append((sse.event, sse.data, sse.id))
        if len(got) == len(expected):
            break
    _compare(got, expected)


def test_httpx_sse_reads_every_nasty_event(
    resumed: tuple[str, str, list[Seen]],
) -> None:
    try:
        from httpx_sse import connect_sse
    except ImportError:
        missing("httpx-sse")
        raise
    url, last_event_id, expected = resumed
    got: list[Seen] = []
    headers = {"Last-Event-ID": last_event_id}
    with httpx.Client(timeout=10) as client:
        with connect_sse(client, "GET", url, headers=headers) as source:
            for sse in source.iter_sse():
                got.append((sse.event, sse.data, sse.id))
                if len(got) == len(expected):
                    break
    _compare(got, expected)


def _compare(got: list[Seen], expected: list[Seen]) -> None:
    for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        assert mine == theirs, f"event {index}: {mine[:2]!r} != {theirs[:2]!r}"
