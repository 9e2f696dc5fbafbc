"""Limits with safe defaults: open streams, event size, channels, ids; no publishing."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Generator

import pytest
from flask import Flask, Response
from werkzeug.test import TestResponse

from flask_eventstream import EventStream, InvalidEvent
from flask_eventstream._channels import MAX_CHANNEL_LENGTH

from .conftest import LiveServer
from .helpers import StreamClient, wait_for

OpenStream = Callable[..., StreamClient]


def make_app(**config: object) -> tuple[Flask, EventStream]:
    app = Flask(__name__)
    app.config.update(TESTING=True, EVENTSTREAM_HEARTBEAT=0.3, **config)
    return app, EventStream(app)


def open_streams(app: Flask) -> int:
    return int(app.extensions["eventstream"].streams.open)


def release_and_take_again(app: Flask, held: list[TestResponse], path: str) -> None:
    """Close the first of two held streams: its slot serves *path*; then close all."""
    held[0].close()
    assert open_streams(app) == 1
    again = app.test_client().get(path, buffered=False)
    assert again.status_code == 200
    again.close()
    held[1].close()
    assert open_streams(app) == 0


class TestMaxStreams:
    def test_default_is_a_finite_limit(self) -> None:
        app, _ = make_app()
        assert app.config["EVENTSTREAM_MAX_STREAMS"] == 10_000

    def test_beyond_the_limit_is_503_with_retry_after(self) -> None:
        app, events = make_app(EVENTSTREAM_MAX_STREAMS=2)
        client = app.test_client()
        held = [client.get("/stream/a", buffered=False) for _ in range(2)]
        assert [r.status_code for r in held] == [200, 200]
        refused = client.get("/stream/a")
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.mimetype == "text/plain"
        assert "too many open event streams" in refused.get_data(as_text=True)
        with app.app_context():
            assert events.subscriber_count() == 2
        release_and_take_again(app, held, "/stream/a")

    def test_a_burst_never_overshoots(self) -> None:
        app, _ = make_app(EVENTSTREAM_MAX_STREAMS=5)
        codes: list[int] = []
        responses = []
        lock = threading.Lock()
        start = threading.Barrier(20)

        def connect() -> None:
            start.wait(timeout=10)
            response = app.test_client().get("/stream/burst", buffered=False)
            with lock:
                codes.append(response.status_code)
                responses.append(response)

        threads = [threading.Thread(target=connect) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert sorted(codes) == [200] * 5 + [503] * 15
        for response in responses:
            response.close()
        assert open_streams(app) == 0

    def test_head_request_gives_its_slot_back(self) -> None:
        app, _ = make_app(EVENTSTREAM_MAX_STREAMS=1)
        client = app.test_client()
        client.head("/stream/a").close()
        assert open_streams(app) == 0

    def test_refused_requests_take_no_slot(self) -> None:
        app, events = make_app(EVENTSTREAM_MAX_STREAMS=1)
        events.authorize(lambda channel: channel == "ok")
        client = app.test_client()
        assert client.get("/stream/no").status_code == 403
        assert client.get("/stream/a%20b").status_code == 400
        assert open_streams(app) == 0

    def test_none_means_no_limit(self) -> None:
        app, _ = make_app(EVENTSTREAM_MAX_STREAMS=None)
        held = [app.test_client().get("/stream", buffered=False) for _ in range(50)]
        assert {r.status_code for r in held} == {200}
        for response in held:
            response.close()

    def test_zero_is_a_setup_error(self) -> None:
        with pytest.raises(ValueError, match="EVENTSTREAM_MAX_STREAMS"):
            make_app(EVENTSTREAM_MAX_STREAMS=0)

    def test_streams_of_your_own_count_too(self) -> None:
        app, events = make_app(EVENTSTREAM_MAX_STREAMS=2)
        sources: list[Generator[str, None, None]] = []

        @app.get("/ticks")
        def ticks() -> Response:
            def source() -> Generator[str, None, None]:
                while True:
                    yield "tick"

            sources.append(source())
            return events.stream(sources[-1])

        client = app.test_client()
        held = [client.get("/stream/a", buffered=False)]
        held.append(client.get("/ticks", buffered=False))
        assert [r.status_code for r in held] == [200, 200]
        refused = client.get("/ticks")
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) > 0
        assert inspect.getgeneratorstate(sources[-1]) == inspect.GEN_CREATED
        assert client.get("/stream/b").status_code == 503  # one limit for both
        release_and_take_again(app, held[::-1], "/ticks")

    def test_slots_come_back_when_real_clients_leave(
        self, serve: Callable[[Flask], LiveServer], open_stream: OpenStream
    ) -> None:
        app, _ = make_app(EVENTSTREAM_MAX_STREAMS=2)
        url = serve(app).url
        first = open_stream(f"{url}/stream/a")
        second = open_stream(f"{url}/stream/b")
        assert (first.status, second.status) == (200, 200)
        third = open_stream(f"{url}/stream/c")
        assert third.status == 503
        assert third.headers["Retry-After"]
        first.close()
        # The server notices at the next heartbeat write and closes the body (O9).
        wait_for(lambda: open_streams(app) == 1, timeout=10)
        fourth = open_stream(f"{url}/stream/d")
        assert fourth.status == 200
        fourth.read_until(lambda c: len(c.raw) > 0)


class TestMaxEventSize:
    """The limit counts the bytes of the data, not the encoded event."""

    def test_data_at_the_limit_is_published(self) -> None:
        app, events = make_app(EVENTSTREAM_MAX_EVENT_SIZE=64)
        with app.app_context():
            sent = events.publish("x" * 64, id="1", event="big")
        assert len(sent.encode()) > 64

    def test_one_byte_over_is_a_clear_invalid_event(self) -> None:
        app, events = make_app(EVENTSTREAM_MAX_EVENT_SIZE=64)
        with app.app_context(), pytest.raises(InvalidEvent) as info:
            events.publish("x" * 65, id="1")
        assert info.value.field == "data"
        assert str(info.value) == (
            "data: data is 65 bytes in UTF-8; EVENTSTREAM_MAX_EVENT_SIZE allows "
            "64 bytes of data"
        )

    def test_size_counts_utf8_bytes_not_characters(self) -> None:
        app, events = make_app(EVENTSTREAM_MAX_EVENT_SIZE=64)
        with app.app_context(), pytest.raises(InvalidEvent, match="80 bytes"):
            events.publish("é" * 40, id="1")  # 40 characters, 80 bytes

    def test_json_data_counts_its_json_text(self) -> None:
        app, events = make_app(EVENTSTREAM_MAX_EVENT_SIZE=64)
        with app.app_context(), pytest.raises(InvalidEvent, match="66 bytes"):
            events.publish({"text": "x" * 54})  # {"text": "..."} is 66 bytes

    def test_default_accepts_one_mebibyte_of_data(self) -> None:
        app, events = make_app()
        with app.app_context():
            sent = events.publish("x" * 1024 * 1024, event="upload")
        assert len(sent.data) == 1024 * 1024
        with app.app_context(), pytest.raises(InvalidEvent):
            events.publish("x" * (1024 * 1024 + 1))

    def test_oversized_event_reaches_nobody(self) -> None:
        app, events = make_app(EVENTSTREAM_MAX_EVENT_SIZE=64)
        with app.app_context():
            subscription = events.broker().subscribe(["sse"])
            with pytest.raises(InvalidEvent):
                events.publish("x" * 100)
            assert subscription.next_chunk(0.05) == b""
            subscription.close()


class TestMaxChannels:
    def test_default_allows_16_channels(self) -> None:
        app, _ = make_app()
        query = "&".join(f"channel=c{n}" for n in range(16))
        response = app.test_client().get(f"/stream?{query}", buffered=False)
        assert response.status_code == 200
        response.close()

    def test_configured_limit_is_enforced(self) -> None:
        app, _ = make_app(EVENTSTREAM_MAX_CHANNELS=2)
        response = app.test_client().get("/stream?channel=a&channel=b&channel=c")
        assert response.status_code == 400
        assert "at most 2 allowed" in response.get_data(as_text=True)

    def test_duplicates_count_once(self) -> None:
        app, _ = make_app(EVENTSTREAM_MAX_CHANNELS=2)
        query = "channel=a&channel=b&channel=a&channel=b"
        response = app.test_client().get(f"/stream?{query}", buffered=False)
        assert response.status_code == 200
        response.close()


class TestNameAndIdLengths:
    @pytest.mark.parametrize("form", ["/stream/{}", "/stream?channel={}"])
    def test_channel_name_length(self, form: str) -> None:
        app, _ = make_app()
        client = app.test_client()
        ok = client.get(form.format("c" * MAX_CHANNEL_LENGTH), buffered=False)
        assert ok.status_code == 200
        ok.close()
        long = client.get(form.format("c" * (MAX_CHANNEL_LENGTH + 1)))
        assert long.status_code == 400
        assert f"at most {MAX_CHANNEL_LENGTH}" in long.get_data(as_text=True)

    def test_last_event_id_default_limit_is_256_bytes(self) -> None:
        app, _ = make_app()
        client = app.test_client()
        ok = client.get("/stream", headers={"Last-Event-ID": "x" * 256}, buffered=False)
        assert ok.status_code == 200
        ok.close()
        # 129 two-byte characters: 258 bytes, though only 129 characters.
        wide = "é" * 129
        response = client.get(f"/stream?lastEventId={wide}")
        assert response.status_code == 400

    def test_last_event_id_limit_is_configurable(self) -> None:
        app, _ = make_app(EVENTSTREAM_MAX_LAST_EVENT_ID=16)
        client = app.test_client()
        response = client.get("/stream", headers={"Last-Event-ID": "x" * 17})
        assert response.status_code == 400
        assert "longer than 16 bytes" in response.get_data(as_text=True)
        ok = client.get("/stream", headers={"Last-Event-ID": "x" * 16}, buffered=False)
        assert ok.status_code == 200
        ok.close()


class TestNoPublishEndpoint:
    @pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
    @pytest.mark.parametrize("path", ["/stream", "/stream/chat"])
    def test_writing_methods_are_405(self, method: str, path: str) -> None:
        app, events = make_app()
        response = app.test_client().open(
            path, method=method, data={"data": "injected", "channel": "chat"}
        )
        assert response.status_code == 405
        assert "GET" in response.headers["Allow"]
        with app.app_context():
            subscription = events.broker().subscribe(["chat"], last_event_id="0")
            assert subscription.next_chunk(0.05) == b""  # nothing was published
            subscription.close()

    def test_the_extension_adds_only_get_routes(self) -> None:
        app, _ = make_app()
        rules = [
            r for r in app.url_map.iter_rules() if r.endpoint.startswith("eventstream")
        ]
        assert rules
        for rule in rules:
            assert rule.methods == {"GET", "HEAD", "OPTIONS"}
