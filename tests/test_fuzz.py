"""Hostile input: the parser, the encoder and the stream endpoint, fuzzed.

- The parser never raises on arbitrary bytes, however chunked.
- The encoder either builds an event that parses back to itself, or raises
  :class:`InvalidEvent`, whatever the field values.
- The endpoint, given arbitrary paths, query strings, headers and ``Last-Event-ID``
  values, answers only 200, 204, 400, 401, 403, 404, 405 or 503, never 500, and
  what it streams holds only the fields it wrote itself (no injected field).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import hypothesis
import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_eventstream import GAP_EVENT, Event, EventParser, EventStream, InvalidEvent

from .conftest import LiveServer
from .strategies import awkward_text, chunkings, stream_like_bytes

ALLOWED = {200, 204, 400, 401, 403, 404, 405, 503}

#: What a parsed stream may contain: events this module published, and gap notes.
PUBLISHED = {f"event {n} on {channel}" for n in range(3) for channel in ("a", "b")}

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class TestParserFuzz:
    @FUZZ
    @given(st.binary(max_size=2000) | stream_like_bytes, st.data())
    def test_never_raises_on_arbitrary_bytes(
        self, stream: bytes, data: st.DataObject
    ) -> None:
        parser = EventParser()
        for chunk in data.draw(chunkings(stream)):
            for event in parser.feed(chunk):
                assert isinstance(event, Event)
        assert parser.close() == []

    @pytest.mark.parametrize(
        "stream",
        [
            b"retry: " + b"9" * 5000 + b"\n\ndata: x\n\n",
            b"retry: " + b"0" * 5000 + b"7\n\n",
            b"data: " + b"x" * 100_000 + b"\n\n",
            b"\xff\xfe" * 1000 + b"\n\n",
            b":" * 10_000,
            b"\r" * 10_000 + b"data: x\n\n",
        ],
        ids=[
            "huge-retry",
            "zero-padded-retry",
            "long-line",
            "bad-utf8",
            "colons",
            "crs",
        ],
    )
    def test_extreme_inputs(self, stream: bytes) -> None:
        parser = EventParser()
        events = parser.feed(stream)
        parser.close()
        assert all(isinstance(event, Event) for event in events)

    def test_zero_padded_retry_still_counts(self) -> None:
        parser = EventParser()
        parser.feed(b"retry: " + b"0" * 5000 + b"7\n\n")
        assert parser.retry == 7  # F17: leading zeros are fine


#: Field values of any kind: text (lone surrogates included), and wrong types.
any_text = st.text() | awkward_text() | st.text(st.characters(codec=None), max_size=8)
any_value = (
    any_text
    | st.none()
    | st.integers()
    | st.booleans()
    | st.floats()
    | st.binary(max_size=4)
)


class TestEncoderFuzz:
    @FUZZ
    @given(
        data=any_value,
        event=any_value,
        id=any_value,
        retry=st.none()
        | st.integers(min_value=-(10**30), max_value=10**30)
        | any_value,
    )
    def test_round_trips_or_raises_invalid_event(
        self, data: Any, event: Any, id: Any, retry: Any
    ) -> None:
        try:
            sent = Event(data, event=event, id=id, retry=retry)
        except InvalidEvent:
            return
        parser = EventParser()
        received = parser.feed(sent.encode())
        assert len(received) == 1
        got = received[0]
        # The client joins lines with LF: CR and CRLF come back as LF (S4).
        assert got.data == sent.data.replace("\r\n", "\n").replace("\r", "\n")
        assert got.event == (sent.event or "message")
        assert got.id == (sent.id or "")
        assert parser.retry == sent.retry

    def test_absurd_retry_is_an_invalid_event(self) -> None:
        with pytest.raises(InvalidEvent):
            Event("x", retry=10**5000)


@pytest.fixture(scope="module")
def fuzz_app() -> Iterator[tuple[Flask, EventStream]]:
    """An app with every security feature on and some history to replay."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SECRET_KEY="fuzz",
        EVENTSTREAM_HEARTBEAT=0.01,
        EVENTSTREAM_MAX_STREAMS=1000,
        EVENTSTREAM_CORS_ORIGINS=["https://app.example.com"],
        EVENTSTREAM_CORS_CREDENTIALS=True,
        EVENTSTREAM_RETRY=2000,
    )
    events = EventStream(app)
    events.authorize(lambda channel: not channel.startswith("deny"))
    with app.app_context():
        for n in range(3):
            for channel in ("a", "b"):
                events.publish(f"event {n} on {channel}", channel=channel)
    yield app, events
    events.broker().close()


#: The only lines the server writes (S9, S10): comments, its fields, blank lines.
OWN_LINES = (b":", b"data: ", b"id: ", b"retry: 2000", b"event: " + GAP_EVENT.encode())


def check_stream(raw: bytes) -> None:
    """*raw*, the start of a stream, holds only what the server wrote itself."""
    parser = EventParser()
    for event in parser.feed(raw):
        if event.event == GAP_EVENT:
            note = json.loads(event.data)
            assert list(note) == ["last_event_id"]
            assert not set("\0\r\n") & set(note["last_event_id"])
        else:
            assert event.event == "message"
            assert event.data in PUBLISHED
    for line in raw.split(b"\n"):
        assert line == b"" or line.startswith(OWN_LINES)


#: Header values an HTTP server can hand over: latin-1 text without CR or LF.
header_value = st.text(
    st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n"),
    max_size=300,
) | st.sampled_from(
    ["0", "999999999999", "\u00e9".encode().decode("latin-1"), "x" * 257]
)

query_pieces = st.sampled_from(
    [
        "channel=a",
        "channel=b",
        "channel=deny",
        "channel=",
        "channel=a%0Adata:%20pwned",
        "channel=%FF",
        "lastEventId=1",
        "lastEventId=a%0Ddata:%20x",
        "lastEventId=%00",
        "token=",
        "token=abc.def.ghi",
        "channel=" + "c" * 129,
        "&",
        "=",
        "%",
    ]
) | st.text(max_size=20).map(lambda text: quote(text, safe="=&%"))


class TestEndpointFuzz:
    @FUZZ
    @given(
        method=st.sampled_from(["GET", "GET", "GET", "HEAD", "OPTIONS", "POST"]),
        path=st.sampled_from(["/stream", "/stream/a", "/stream/deny"])
        | st.text(max_size=30).map(lambda t: "/stream/" + quote(t, safe="")),
        query=st.lists(query_pieces, max_size=6).map("&".join),
        last_event_id=st.none() | header_value,
        origin=st.none()
        | st.sampled_from(["https://app.example.com", "null"])
        | header_value,
        extra=st.dictionaries(
            st.sampled_from(
                ["Accept", "Cookie", "Access-Control-Request-Method", "X-Forwarded-For"]
            ),
            header_value,
            max_size=3,
        ),
    )
    def test_only_expected_statuses_and_no_injected_field(
        self,
        fuzz_app: tuple[Flask, EventStream],
        method: str,
        path: str,
        query: str,
        last_event_id: str | None,
        origin: str | None,
        extra: dict[str, str],
    ) -> None:
        app, events = fuzz_app
        headers = dict(extra)
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        if origin is not None:
            headers["Origin"] = origin
        response = app.test_client().open(
            path, method=method, query_string=query, headers=headers, buffered=False
        )
        try:
            assert response.status_code in ALLOWED
            hypothesis.event(f"{method} {response.status_code}")
            if response.status_code == 200 and method == "GET":
                assert response.mimetype == "text/event-stream"
                body = iter(response.response)
                raw = next(body) + next(body)  # preamble, then replay or heartbeat
                check_stream(raw)
        finally:
            response.close()
        assert app.extensions["eventstream"].streams.open == 0


class TestEndpointOverHttp:
    """A few fuzz cases over a real threaded server, raw bytes on a socket."""

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        target=st.binary(max_size=40).map(lambda b: "/stream?" + quote(b, safe="=&")),
        last_event_id=st.binary(max_size=300).filter(
            lambda b: b"\r" not in b and b"\n" not in b
        ),
    )
    def test_raw_requests(
        self,
        live_fuzz: str,
        target: str,
        last_event_id: bytes,
    ) -> None:
        status, head, body = raw_get(live_fuzz, target, last_event_id)
        assert status in ALLOWED
        if status == 200:
            assert b"text/event-stream" in head
            check_stream(body)


@pytest.fixture(scope="module")
def live_fuzz(fuzz_app: tuple[Flask, EventStream]) -> Iterator[str]:
    server = LiveServer(fuzz_app[0])
    yield server.url
    server.stop()


def raw_get(base: str, target: str, last_event_id: bytes) -> tuple[int, bytes, bytes]:
    """GET with raw ``Last-Event-ID`` bytes; return status, head, first body bytes."""
    parts = urlsplit(base)
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode()
        + b"Last-Event-ID: "
        + last_event_id
        + b"\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, raw = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        chunked = b"transfer-encoding: chunked" in head.lower()
        body = dechunk(raw) if chunked else raw
        # The preamble, then the replay or a heartbeat.
        while status == 200 and body.count(b"\n\n") < 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
            body = dechunk(raw) if chunked else raw
    return status, head, body


def dechunk(raw: bytes) -> bytes:
    """The payload of the complete chunks at the start of a chunked body."""
    body = b""
    while b"\r\n" in raw:
        size_line, _, rest = raw.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if len(rest) < size + 2:
            break
        body += rest[:size]
        raw = rest[size + 2 :]
    return body
