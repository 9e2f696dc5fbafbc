"""The Python client against our server over real HTTP (threaded Werkzeug)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from flask import Flask, Response, request
from werkzeug.serving import make_server

from flask_eventstream import Event, EventStream
from flask_eventstream.client import AsyncEventSource, EventSource
from flask_eventstream.exceptions import (
    EventTooLarge,
    ReconnectFailed,
    StreamRefused,
)

from .conftest import LiveServer
from .helpers import wait_for

Serve = Callable[[Flask], LiveServer]


class Collector:
    """Iterates *source* in a thread; every wait on it is bounded."""

    def __init__(self, source: EventSource) -> None:
        self.source = source
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self.source:
                self.events.append(event)
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()

    def wait_for_events(self, count: int, timeout: float = 5.0) -> list[Event]:
        wait_for(lambda: len(self.events) >= count or self.finished.is_set(), timeout)
        if self.error is not None:
            raise AssertionError(f"client failed: {self.error!r}")
        return self.events

    def wait_finished(self, timeout: float = 5.0) -> None:
        assert self.finished.wait(timeout), "client still running"

    def stop(self) -> None:
        self.source.close()
        self._thread.join(timeout=5)


@pytest.fixture
def collect() -> Iterator[Callable[[EventSource], Collector]]:
    collectors: list[Collector] = []

    def start(source: EventSource) -> Collector:
        collector = Collector(source)
        collectors.append(collector)
        return collector

    yield start
    for collector in collectors:
        collector.stop()


class _Server:
    """A threaded Werkzeug server on a given port, to restart on the same one."""

    def __init__(self, app: Flask, port: int = 0) -> None:
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def publish(app: Flask, events: EventStream, data: str, **kwargs: object) -> Event:
    with app.app_context():
        return events.publish(data, **kwargs)  # type: ignore[arg-type]


def datas(events: list[Event]) -> list[str]:
    return [event.data for event in events]


class TestEvents:
    def test_receives_published_events_with_type_and_id(
        self,
        app: Flask,
        events: EventStream,
        live: str,
        collect: Callable[..., Collector],
    ) -> None:
        client = collect(EventSource(f"{live}/stream/chat", heartbeat=0.5))
        wait_for(lambda: events.subscriber_count("chat") == 1)
        first = publish(app, events, "hello", channel="chat", event="greeting")
        publish(app, events, "line 1\nline 2", channel="chat")
        got = client.wait_for_events(2)
        assert [(e.event, e.data) for e in got] == [
            ("greeting", "hello"),
            ("message", "line 1\nline 2"),
        ]
        assert got[0].id == first.id
        assert client.source.last_event_id == got[1].id

    def test_last_event_id_resumes_after_it_sent_as_utf8(
        self,
        app: Flask,
        events: EventStream,
        live: str,
        collect: Callable[..., Collector],
    ) -> None:
        """C8: Last-Event-ID goes out encoded as UTF-8; the server replays after it."""
        for n in range(1, 4):
            publish(app, events, f"event {n}", id=f"évé-{n}")
        client = collect(EventSource(f"{live}/stream", last_event_id="évé-1"))
        assert datas(client.wait_for_events(2)) == ["event 2", "event 3"]

    def test_retry_from_the_stream_sets_the_reconnection_time(
        self, app: Flask, serve: Serve, collect: Callable[..., Collector]
    ) -> None:
        app.config["EVENTSTREAM_RETRY"] = 1234
        events = EventStream(app)
        url = serve(app).url
        source = EventSource(f"{url}/stream")
        assert source.reconnection_time == 3.0
        collect(source)
        wait_for(lambda: events.subscriber_count() == 1)
        wait_for(lambda: source.reconnection_time == 1.234)

    def test_heartbeats_do_not_count_towards_the_event_size_cap(
        self, app: Flask, serve: Serve, collect: Callable[..., Collector]
    ) -> None:
        @app.get("/chatty")
        def chatty() -> Response:
            body = [b": heartbeat\n\n"] * 50 + [b"data: after\n\n"]
            return Response(body, mimetype="text/event-stream")

        url = serve(app).url
        client = collect(EventSource(f"{url}/chatty", max_event_size=100))
        assert datas(client.wait_for_events(1)) == ["after"]


class TestReconnection:
    def test_server_restart_mid_stream_resumes_with_every_event_once(
        self, app: Flask, collect: Callable[..., Collector]
    ) -> None:
        """C6, C8, S12: after a restart the client resumes by Last-Event-ID."""
        app.config["EVENTSTREAM_RETRY"] = 50
        events = EventStream(app)
        seen_ids: list[str | None] = []

        @app.before_request
        def record() -> None:
            seen_ids.append(request.headers.get("Last-Event-ID"))

        first = _Server(app)
        url = f"http://127.0.0.1:{first.port}/stream/news"
        client = collect(EventSource(url, max_backoff=0.3))
        wait_for(lambda: events.subscriber_count("news") == 1)
        publish(app, events, "1", channel="news")
        second = publish(app, events, "2", channel="news")
        client.wait_for_events(2)

        first.stop()
        # The listener is gone; the open stream ends as when the process dies.
        events.broker().fanout.end_all()  # type: ignore[attr-defined]
        publish(app, events, "3", channel="news")
        publish(app, events, "4", channel="news")
        wait_for(lambda: len(seen_ids) == 1 and events.subscriber_count() == 0)

        restarted = _Server(app, port=first.port)
        try:
            wait_for(lambda: events.subscriber_count("news") == 1, timeout=10)
            publish(app, events, "5", channel="news")
            got = client.wait_for_events(5)
            assert datas(got) == ["1", "2", "3", "4", "5"]
            assert seen_ids == [None, second.id]
        finally:
            client.stop()
            restarted.stop()

    def test_clean_end_of_body_reconnects(
        self, app: Flask, serve: Serve, collect: Callable[..., Collector]
    ) -> None:
        """C6: a body that ends normally means "reconnect"."""
        served = []

        @app.get("/short")
        def short() -> Response:
            served.append(request.headers.get("Last-Event-ID"))
            n = len(served)
            return Response(
                [f"id: {n}\ndata: visit {n}\n\n"], mimetype="text/event-stream"
            )

        url = serve(app).url
        client = collect(EventSource(f"{url}/short", reconnection_time=0.01))
        assert datas(client.wait_for_events(3)[:3]) == ["visit 1", "visit 2", "visit 3"]
        assert served[:3] == [None, "1", "2"]

    def test_silent_connection_is_replaced_after_the_read_timeout(
        self, app: Flask, serve: Serve, collect: Callable[..., Collector]
    ) -> None:
        """O4: no heartbeat for 2 x heartbeat means a dead connection."""
        release = threading.Event()
        served: list[str | None] = []

        @app.get("/silent")
        def silent() -> Response:
            served.append(request.headers.get("Last-Event-ID"))

            def body() -> Iterator[bytes]:
                yield b"id: 7\ndata: then silence\n\n"
                release.wait(10)

            return Response(body(), mimetype="text/event-stream")

        url = serve(app).url
        try:
            collect(EventSource(f"{url}/silent", heartbeat=0.2, reconnection_time=0.01))
            wait_for(lambda: len(served) >= 2)
            assert served[:2] == [None, "7"]
        finally:
            release.set()

    def test_gives_up_after_max_reconnects(
        self, collect: Callable[..., Collector]
    ) -> None:
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        source = EventSource(
            f"http://127.0.0.1:{port}/stream",
            reconnection_time=0.01,
            max_reconnects=2,
        )
        client = collect(source)
        client.wait_finished()
        assert isinstance(client.error, ReconnectFailed)

    def test_close_from_another_thread_ends_the_iteration(
        self, events: EventStream, live: str, collect: Callable[..., Collector]
    ) -> None:
        client = collect(EventSource(f"{live}/stream"))
        wait_for(lambda: events.subscriber_count() == 1)
        client.source.close()
        client.wait_finished()
        assert client.error is None


class TestRequestBody:
    """``method=`` with ``content=`` or ``json=``: a stream that answers a POST."""

    @pytest.fixture
    def echo(self, app: Flask, events: EventStream, serve: Serve) -> str:
        @app.post("/echo")
        def echo() -> Response:
            body = request.get_data(as_text=True)
            return events.stream([f"{request.method} {request.mimetype} {body}"])

        return serve(app).url + "/echo"

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            ({"content": "plain words"}, "POST  plain words"),
            ({"content": b"raw"}, "POST  raw"),
            ({"json": ["hi"]}, 'POST application/json ["hi"]'),
        ],
        ids=["str", "bytes", "json"],
    )
    def test_post_sends_the_body(
        self, echo: str, body: dict[str, object], expected: str
    ) -> None:
        with EventSource(echo, method="post", **body) as source:  # type: ignore[arg-type]
            event = next(iter(source))
        assert event.data == expected

    def test_async_client_posts_too(self, echo: str) -> None:
        async def first() -> str:
            async with AsyncEventSource(echo, method="POST", json=[1]) as source:
                async for event in source:
                    return event.data
            return ""

        assert asyncio.run(asyncio.wait_for(first(), 10)) == "POST application/json [1]"

    def test_content_and_json_together_are_refused(self) -> None:
        with pytest.raises(ValueError, match="content= or json="):
            EventSource("http://127.0.0.1:1/", content="a", json={})


class TestRefusal:
    def test_204_stops_without_error(
        self, app: Flask, serve: Serve, collect: Callable[..., Collector]
    ) -> None:
        """C12, S11: 204 No Content tells the client to stop."""
        app.add_url_rule("/gone", "gone", lambda: Response(status=204))
        client = collect(EventSource(f"{serve(app).url}/gone"))
        client.wait_finished()
        assert client.error is None and client.events == []

    @pytest.mark.parametrize(
        ("status", "mimetype"),
        [
            (404, "text/event-stream"),
            (500, "text/event-stream"),
            (503, "text/event-stream"),
            (205, "text/event-stream"),
            (200, "text/plain"),
            (200, "text/event-streamx"),
        ],
        ids=["404", "500", "503", "205", "wrong-type", "type-prefix-only"],
    )
    def test_other_answers_fail_without_reconnecting(
        self,
        app: Flask,
        serve: Serve,
        collect: Callable[..., Collector],
        status: int,
        mimetype: str,
    ) -> None:
        """C5, C12, C14: fail the connection, never reconnect."""
        calls = []

        @app.get("/refuse")
        def refuse() -> Response:
            calls.append(1)
            return Response("data: no\n\n", status=status, mimetype=mimetype)

        client = collect(
            EventSource(f"{serve(app).url}/refuse", reconnection_time=0.01)
        )
        client.wait_finished()
        assert isinstance(client.error, StreamRefused)
        assert client.error.status_code == status
        assert len(calls) == 1

    @pytest.mark.parametrize(
        "content_type",
        [
            "text/event-stream",
            "Text/Event-Stream",
            "text/event-stream;",
            "text/event-stream; charset=windows-1252",
        ],
        ids=["plain", "case", "trailing-semicolon", "other-charset"],
    )
    def test_event_stream_type_is_matched_as_a_mime_type_and_read_as_utf8(
        self,
        app: Flask,
        serve: Serve,
        collect: Callable[..., Collector],
        content_type: str,
    ) -> None:
        """C14, F2: parameters and case do not matter; the body is always UTF-8."""

        @app.get("/typed")
        def typed() -> Response:
            body = "data: café\n\n".encode()
            return Response([body], headers={"Content-Type": content_type})

        client = collect(EventSource(f"{serve(app).url}/typed"))
        assert datas(client.wait_for_events(1))[0] == "café"


class TestEventTooLarge:
    @pytest.mark.parametrize(
        "chunk",
        [b"data: " + b"x" * 300 + b"\n", b"x" * 300],
        ids=["many-data-lines", "one-endless-line"],
    )
    def test_an_event_over_the_cap_raises(
        self, app: Flask, serve: Serve, collect: Callable[..., Collector], chunk: bytes
    ) -> None:
        """O11: a stream that never ends its event cannot fill memory."""

        @app.get("/flood")
        def flood() -> Response:
            return Response([chunk] * 10, mimetype="text/event-stream")

        client = collect(EventSource(f"{serve(app).url}/flood", max_event_size=1000))
        client.wait_finished()
        assert isinstance(client.error, EventTooLarge)

    @pytest.mark.parametrize("line", ["x", "x\n"], ids=["one-line", "many-lines"])
    def test_the_largest_event_publish_allows_is_read_by_default(
        self,
        app: Flask,
        events: EventStream,
        live: str,
        collect: Callable[..., Collector],
        line: str,
    ) -> None:
        """The server's and the client's defaults agree: 1 MiB of data passes."""
        data = (line * (1024 * 1024 // len(line)))[: 1024 * 1024]
        first = publish(app, events, "first")
        client = collect(EventSource(f"{live}/stream", last_event_id=first.id or ""))
        publish(app, events, data)
        (event,) = client.wait_for_events(1, timeout=10)
        assert event.data == data


class TestAsync:
    def test_async_client_resumes_and_reconnects(
        self, app: Flask, events: EventStream, live: str
    ) -> None:
        ids = [publish(app, events, f"old {n}").id for n in range(3)]

        def publish_when_back() -> None:
            wait_for(lambda: events.subscriber_count() == 1)
            publish(app, events, "new")

        publisher = threading.Thread(target=publish_when_back)

        async def main() -> list[str]:
            got: list[str] = []
            url = f"{live}/stream"
            async with AsyncEventSource(
                url, last_event_id=ids[0] or "", reconnection_time=0.01
            ) as source:
                async for event in source:
                    got.append(event.data)
                    if len(got) == 2:
                        # The server ends the stream; the client comes back.
                        events.broker().fanout.end_all()  # type: ignore[attr-defined]
                        publisher.start()
                    if len(got) == 3:
                        break
            return got

        got = asyncio.run(asyncio.wait_for(main(), 10))
        publisher.join(timeout=5)
        assert got == ["old 1", "old 2", "new"]

    def test_async_client_stops_on_204_and_fails_on_404(
        self, app: Flask, serve: Serve
    ) -> None:
        app.add_url_rule("/gone", "gone", lambda: Response(status=204))
        url = serve(app).url

        async def drain(path: str) -> list[Event]:
            async with AsyncEventSource(url + path) as source:
                return [event async for event in source]

        assert asyncio.run(asyncio.wait_for(drain("/gone"), 10)) == []
        with pytest.raises(StreamRefused) as info:
            asyncio.run(asyncio.wait_for(drain("/missing"), 10))
        assert info.value.status_code == 404
        assert "Not Found" in info.value.reason

    def test_refusal_keeps_the_servers_reason(
        self, events: EventStream, live: str, collect: Callable[..., Collector]
    ) -> None:
        client = collect(EventSource(f"{live}/stream?channel=", reconnection_time=0.01))
        client.wait_finished()
        assert isinstance(client.error, StreamRefused)
        assert client.error.status_code == 400
        assert client.error.reason == "channel name must not be empty"
        assert "it said: 'channel name must not be empty'" in str(client.error)

    def test_refusal_reason_is_cut_to_its_start(
        self, app: Flask, serve: Serve, collect: Callable[..., Collector]
    ) -> None:
        app.add_url_rule("/long", "long", lambda: ("why " * 10_000, 403))
        client = collect(EventSource(f"{serve(app).url}/long"))
        client.wait_finished()
        assert isinstance(client.error, StreamRefused)
        assert client.error.reason == ("why " * 125).strip()
