"""The stream endpoint and events.stream() over real HTTP (threaded Werkzeug)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
from flask import Flask, request

from flask_eventstream import GAP_EVENT, Event, EventParser, EventStream
from flask_eventstream.brokers._subscription import TOO_SLOW

from .conftest import LiveServer
from .helpers import StreamClient, wait_for

OpenStream = Callable[..., StreamClient]


def publish(app: Flask, events: EventStream, data: object, **kwargs: object) -> str:
    with app.app_context():
        sent = events.publish(data, **kwargs)  # type: ignore[arg-type]
    assert sent.id is not None
    return sent.id


class TestResponse:
    def test_headers_follow_the_server_duties(
        self, live: str, open_stream: OpenStream
    ) -> None:
        client = open_stream(f"{live}/stream")
        assert client.status == 200
        assert client.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert client.headers["Cache-Control"] == "no-cache"
        assert client.headers["X-Accel-Buffering"] == "no"
        assert "Content-Length" not in client.headers

    def test_first_bytes_go_out_at_once(
        self, live: str, open_stream: OpenStream
    ) -> None:
        client = open_stream(f"{live}/stream/chat")
        client.read_until(lambda c: len(c.raw) > 0, timeout=2)
        assert client.raw.startswith(b":")

    def test_retry_config_is_sent_first(
        self,
        app: Flask,
        serve: Callable[[Flask], LiveServer],
        open_stream: OpenStream,
    ) -> None:
        app.config["EVENTSTREAM_RETRY"] = 1500
        EventStream(app)
        client = open_stream(f"{serve(app).url}/stream")
        client.read_until(lambda c: c.parser.retry is not None, timeout=2)
        assert client.parser.retry == 1500

    def test_no_hop_by_hop_header_from_the_app(
        self, app: Flask, events: EventStream
    ) -> None:
        # PEP 3333: the app must not send Connection & co (S13); wsgiref would fail.
        response = app.test_client().get("/stream", buffered=False)
        names = {name.lower() for name in response.headers.keys()}
        assert not names & {"connection", "keep-alive", "transfer-encoding"}
        response.close()


class TestFanOut:
    def test_two_subscribers_each_receive_every_event_in_order(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        first = open_stream(f"{live}/stream?channel=chat")
        second = open_stream(f"{live}/stream/chat")
        wait_for(lambda: events_count(app, events, "chat") == 2)
        sent = [f"message {n}\nline two" for n in range(20)]
        for text in sent:
            publish(app, events, text, channel="chat")
        for client in (first, second):
            assert [e.data for e in client.read_events(20)] == sent

    def test_channels_are_isolated(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        client = open_stream(f"{live}/stream/a")
        wait_for(lambda: events_count(app, events, "a") == 1)
        publish(app, events, "for b", channel="b")
        publish(app, events, "for a", channel="a")
        assert [e.data for e in client.read_events(1)] == ["for a"]

    def test_several_channels_in_one_connection(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        client = open_stream(f"{live}/stream?channel=a&channel=b")
        wait_for(lambda: events_count(app, events) == 1)
        publish(app, events, "1", channel="a")
        publish(app, events, "2", channel="b")
        publish(app, events, "3", channel="c")
        publish(app, events, "4", channel="a")
        assert [e.data for e in client.read_events(3)] == ["1", "2", "4"]

    def test_json_and_event_type_reach_the_client(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        client = open_stream(f"{live}/stream")
        wait_for(lambda: events_count(app, events, "sse") == 1)
        publish(app, events, {"message": "Hello!"}, type="greeting")
        (event,) = client.read_events(1)
        assert event.event == "greeting"
        assert json.loads(event.data) == {"message": "Hello!"}

    def test_a_stalled_reader_does_not_block_publishing(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        app.extensions["eventstream"].broker._fanout.buffer = 50
        stalled = raw_subscribe(live, "/stream/busy")  # never reads
        reader = open_stream(f"{live}/stream/busy")
        wait_for(lambda: events_count(app, events, "busy") == 2)
        payload = "x" * 100_000
        # 20 MB in all: far more than the stalled socket's buffers hold, so its
        # queue fills; the reader keeps up batch by batch.
        for batch in range(20):
            for _ in range(10):
                publish(app, events, payload, channel="busy")
            reader.read_events(10 * (batch + 1), timeout=10)
        assert len(reader.events) == 200
        # The stalled one was cut off, so its memory is bounded.
        wait_for(lambda: events_count(app, events, "busy") == 1, timeout=10)
        stalled.close()


class TestReplay:
    def test_last_event_id_gets_missed_events_then_live_ones(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        ids = [publish(app, events, f"old {n}", channel="r") for n in range(5)]
        client = open_stream(f"{live}/stream/r", headers={"Last-Event-ID": ids[1]})
        assert [e.data for e in client.read_events(3)] == ["old 2", "old 3", "old 4"]
        publish(app, events, "new", channel="r")
        assert client.read_events(4)[-1].data == "new"
        assert [e.id for e in client.events] == ids[2:] + [client.events[-1].id]

    def test_query_parameter_for_polyfills(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        ids = [publish(app, events, f"e{n}", channel="p") for n in range(3)]
        client = open_stream(f"{live}/stream/p?lastEventId={ids[0]}")
        assert [e.data for e in client.read_events(2)] == ["e1", "e2"]

    def test_no_gap_no_duplicate_while_publishing(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        first = publish(app, events, "0", channel="g")
        stop = threading.Event()
        counter = iter(range(1, 10**9))

        def keep_publishing() -> None:
            while not stop.is_set():
                publish(app, events, str(next(counter)), channel="g")
                time.sleep(0.001)

        thread = threading.Thread(target=keep_publishing, daemon=True)
        thread.start()
        try:
            time.sleep(0.05)
            client = open_stream(f"{live}/stream/g", headers={"Last-Event-ID": first})
            client.read_events(50, timeout=10)
        finally:
            stop.set()
            thread.join(timeout=5)
        numbers = [int(e.data) for e in client.events]
        assert numbers == list(range(1, len(numbers) + 1))

    def test_unknown_id_starts_with_a_gap_event_then_what_is_retained(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        publish(app, events, "kept", channel="u")
        client = open_stream(
            f"{live}/stream/u", headers={"Last-Event-ID": "no-such-id"}
        )
        gap, kept = client.read_events(2)
        assert gap.event == GAP_EVENT
        assert json.loads(gap.data) == {"last_event_id": "no-such-id"}
        assert kept.data == "kept"

    def test_id_evicted_from_history_is_a_gap(
        self, app: Flask, serve: Callable[[Flask], LiveServer], open_stream: OpenStream
    ) -> None:
        app.config["EVENTSTREAM_HISTORY"] = 3
        events = EventStream(app)
        url = serve(app).url
        ids = [publish(app, events, str(n), channel="h") for n in range(6)]
        client = open_stream(f"{url}/stream/h", headers={"Last-Event-ID": ids[0]})
        got = client.read_events(4)
        assert got[0].event == GAP_EVENT
        assert [e.data for e in got[1:]] == ["3", "4", "5"]


class TestCutOff:
    """A client cut off for falling behind learns what it lost on reconnection;
    one with no id to resume from is told at once (a gap event)."""

    def _cut_off(self, headers: dict[str, str], first: int = 0) -> list[Event]:
        app = Flask(__name__)
        # Two events of ~40 bytes are more than a subscriber may have waiting.
        app.config.update(EVENTSTREAM_BUFFER_BYTES=60, EVENTSTREAM_HEARTBEAT=5)
        events = EventStream(app)
        response = app.test_client().get("/stream", headers=headers, buffered=False)
        body = iter(response.response)
        next(body)  # the preamble
        with app.app_context():
            for n in range(first):
                events.publish(f"got {n}")
        taken = [next(body) for _ in range(first)]
        with app.app_context():  # nobody reads now
            for n in range(3):
                events.publish(f"lost {n}")
        rest = b"".join(body)
        response.close()
        assert rest.startswith(TOO_SLOW)
        return EventParser().feed(b"".join(taken) + rest)

    def test_a_client_without_an_id_is_sent_a_gap_event(self) -> None:
        (gap,) = self._cut_off({})
        assert gap.event == GAP_EVENT
        assert json.loads(gap.data) == {"last_event_id": None}

    def test_a_client_resuming_from_an_id_reconnects_with_it(self) -> None:
        assert self._cut_off({"Last-Event-ID": "0"}) == []

    def test_a_client_that_got_an_event_reconnects_with_its_id(self) -> None:
        assert [e.data for e in self._cut_off({}, first=1)] == ["got 0"]


class TestDisconnect:
    def test_subscription_removed_within_a_heartbeat_without_publish(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        client = open_stream(f"{live}/stream/d")
        wait_for(lambda: events_count(app, events, "d") == 1)
        client.close()
        # Heartbeat is 0.5 s in tests: the failed write removes it.
        wait_for(lambda: events_count(app, events, "d") == 0, timeout=5)

    def test_heartbeats_flow_when_idle(
        self, live: str, open_stream: OpenStream
    ) -> None:
        client = open_stream(f"{live}/stream/quiet")
        client.read_until(lambda c: c.raw.count(b": heartbeat\n\n") >= 2, timeout=5)
        assert client.events == []


class TestBadRequests:
    @pytest.mark.parametrize(
        ("path", "headers", "message"),
        [
            ("/stream?channel=", {}, "empty"),
            ("/stream?channel=" + "x" * 129, {}, "at most 128"),
            ("/stream?channel=a%01b", {}, "control"),
            ("/stream/a%20b", {}, "whitespace"),
            (
                "/stream?" + "&".join(f"channel=c{n}" for n in range(17)),
                {},
                "at most 16",
            ),
            ("/stream", {"Last-Event-ID": "x" * 300}, "longer than"),
            ("/stream?lastEventId=a%00b", {}, "NUL"),
        ],
        ids=[
            "empty-channel",
            "long-channel",
            "control-char",
            "space",
            "too-many",
            "long-id",
            "nul-id",
        ],
    )
    def test_answered_400_with_a_clear_message(
        self,
        app: Flask,
        events: EventStream,
        path: str,
        headers: dict[str, str],
        message: str,
    ) -> None:
        response = app.test_client().get(path, headers=headers)
        assert response.status_code == 400
        assert message in response.get_data(as_text=True)
        assert events.subscriber_count() == 0

    def test_a_last_event_id_that_is_not_utf8_gets_the_gap_event(
        self, app: Flask, events: EventStream, live: str
    ) -> None:
        """Latin-1 bytes (as some clients send): an unknown id, not a 400 that
        would end the client for good."""
        publish(app, events, "kept", channel="l1")
        sock = raw_subscribe(live, "/stream/l1", extra=b"Last-Event-ID: caf\xe9\r\n")
        data = read_raw_until(sock, b"data: kept")
        sock.close()
        assert data.startswith(b"HTTP/1.1 200")
        assert b"event: eventstream-gap\n" in data
        assert data.index(b"eventstream-gap") < data.index(b"data: kept")

    def test_utf8_last_event_id_is_decoded(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        publish(app, events, "before", channel="u8", id="caf\u00e9")
        publish(app, events, "after", channel="u8")
        sock = raw_subscribe(
            live, "/stream/u8", extra="Last-Event-ID: caf\u00e9\r\n".encode()
        )
        data = read_raw_until(sock, b"data: after")
        assert b"data: before" not in data
        sock.close()


class TestSourceStreams:
    def test_generator_items_become_events(
        self,
        app: Flask,
        events: EventStream,
        serve: Callable[[Flask], LiveServer],
        open_stream: OpenStream,
    ) -> None:
        from flask_eventstream import Event

        @app.get("/gen")
        def gen() -> object:
            def items() -> Iterator[object]:
                yield "text"
                yield {"n": 1}
                yield Event("typed", event="t", id="7")
                yield request.args["who"]  # runs in the request context

            return events.stream(items())

        client = open_stream(f"{serve(app).url}/gen?who=me")
        client.read_to_end()
        assert [(e.data, e.event) for e in client.events] == [
            ("text", "message"),
            ('{"n": 1}', "message"),
            ("typed", "t"),
            ("me", "message"),
        ]
        assert client.events[-1].id == "7"

    def test_function_called_up_to_limit(
        self,
        app: Flask,
        events: EventStream,
        serve: Callable[[Flask], LiveServer],
        open_stream: OpenStream,
    ) -> None:
        calls = iter(range(100))

        @app.get("/func")
        def func() -> object:
            return events.stream(lambda: f"call {next(calls)}", limit=3)

        client = open_stream(f"{serve(app).url}/func")
        client.read_to_end()
        assert [e.data for e in client.events] == ["call 0", "call 1", "call 2"]

    def test_silent_source_still_gets_heartbeats(
        self,
        app: Flask,
        events: EventStream,
        serve: Callable[[Flask], LiveServer],
        open_stream: OpenStream,
    ) -> None:
        release = threading.Event()

        @app.get("/slow")
        def slow() -> object:
            def items() -> Iterator[str]:
                release.wait(10)
                yield "late"

            return events.stream(items())

        client = open_stream(f"{serve(app).url}/slow")
        client.read_until(lambda c: c.raw.count(b": heartbeat") >= 2, timeout=5)
        release.set()
        assert client.read_events(1)[0].data == "late"

    def test_generator_closed_when_client_goes_away(
        self,
        app: Flask,
        events: EventStream,
        serve: Callable[[Flask], LiveServer],
        open_stream: OpenStream,
    ) -> None:
        closed = threading.Event()

        @app.get("/forever")
        def forever() -> object:
            def items() -> Iterator[str]:
                try:
                    while True:
                        time.sleep(0.05)
                        yield "tick"
                finally:
                    closed.set()

            return events.stream(items())

        client = open_stream(f"{serve(app).url}/forever")
        client.read_events(2)
        client.close()
        assert closed.wait(10), "generator's finally did not run"


def events_count(app: Flask, events: EventStream, channel: str | None = None) -> int:
    with app.app_context():
        return events.subscriber_count(channel)


def raw_subscribe(base: str, path: str, extra: bytes = b"") -> socket.socket:
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n")
    return sock


def read_raw_until(sock: socket.socket, marker: bytes, timeout: float = 5) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        assert time.monotonic() < deadline, data
        data += sock.recv(65536)
    return data


class TestHeartbeatEvent:
    """``EVENTSTREAM_HEARTBEAT_EVENT``: no comment on the wire, a no-op event."""

    def test_heartbeats_and_the_first_bytes_are_the_named_event(
        self, serve: Callable[[Flask], LiveServer], open_stream: OpenStream
    ) -> None:
        app = Flask(__name__)
        app.config.update(EVENTSTREAM_HEARTBEAT=0.3, EVENTSTREAM_HEARTBEAT_EVENT="ping")
        events = EventStream(app)

        @app.get("/ticks")
        def ticks() -> object:
            def slow() -> Iterator[str]:
                time.sleep(1.0)
                yield "tick"

            return events.stream(slow())

        base = serve(app).url
        for path in ("/stream/hb", "/ticks"):
            client = open_stream(f"{base}{path}")
            client.read_until(lambda c: len(c.events) >= 3)
            assert bytes(client.raw).startswith(b"event: ping\ndata: \n\n")
            assert not [line for line in client.raw.split(b"\n") if line[:1] == b":"]
            assert {(e.event, e.data) for e in client.events[:3]} == {("ping", "")}

    @pytest.mark.parametrize("value", ["message", "", "a\nb", 3])
    def test_a_type_that_pages_would_see_is_refused(self, value: object) -> None:
        app = Flask(__name__)
        app.config["EVENTSTREAM_HEARTBEAT_EVENT"] = value
        with pytest.raises(ValueError, match="EVENTSTREAM_HEARTBEAT_EVENT|event"):
            EventStream(app)
