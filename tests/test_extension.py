"""EventStream: set-up, configuration and publish()."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from flask import Flask, Response

from flask_eventstream import (
    Event,
    EventStream,
    InvalidChannel,
    InvalidEvent,
    MemoryBroker,
)


class TestInitApp:
    def test_init_app_later_registers_the_stream_endpoint(self) -> None:
        events = EventStream()
        app = Flask(__name__)
        events.init_app(app)
        with app.test_request_context():
            from flask import url_for

            assert url_for("eventstream.stream") == "/stream"
            assert url_for("eventstream.stream", channel="chat") == "/stream/chat"

    def test_second_init_app_on_one_app_says_what_to_do(self) -> None:
        app = Flask(__name__)
        EventStream(app)
        with pytest.raises(RuntimeError, match="once per app"):
            EventStream(app)

    def test_config_defaults_are_set(self) -> None:
        app = Flask(__name__)
        EventStream(app)
        assert app.config["EVENTSTREAM_BROKER_URL"] == "memory://"
        assert app.config["EVENTSTREAM_HEARTBEAT"] == 15.0
        assert app.config["EVENTSTREAM_DEFAULT_CHANNEL"] == "sse"

    def test_url_prefix_argument_wins_over_config(self) -> None:
        app = Flask(__name__)
        app.config["EVENTSTREAM_URL_PREFIX"] = "/from-config"
        EventStream(app, url_prefix="/events")
        assert app.test_client().get("/events/x", buffered=False).status_code == 200
        assert app.test_client().get("/from-config/x").status_code == 404

    def test_unknown_broker_scheme_is_a_clear_error(self) -> None:
        app = Flask(__name__)
        app.config["EVENTSTREAM_BROKER_URL"] = "kafka://localhost"
        with pytest.raises(ValueError, match="unsupported EVENTSTREAM_BROKER_URL"):
            EventStream(app)

    @pytest.mark.parametrize("value", [1.5, "500", -1, True])
    def test_bad_retry_config_is_refused(self, value: object) -> None:
        app = Flask(__name__)
        app.config["EVENTSTREAM_RETRY"] = value
        with pytest.raises(InvalidEvent, match="retry"):
            EventStream(app)

    def test_two_apps_have_separate_brokers(self) -> None:
        events = EventStream()
        one, two = Flask("one"), Flask("two")
        events.init_app(one)
        events.init_app(two)
        with one.app_context():
            events.publish("for one", channel="c")
        with one.app_context():
            sub_one = events.broker().subscribe(["c"], last_event_id="0")
        with two.app_context():
            sub_two = events.broker().subscribe(["c"], last_event_id="0")
        assert b"for one" in (sub_one.next_chunk(1) or b"")
        assert sub_two.next_chunk(0.05) == b""

    def test_uninitialised_app_is_a_clear_error(self) -> None:
        events = EventStream()
        events.init_app(Flask("other"))
        app = Flask(__name__)
        with app.app_context(), pytest.raises(RuntimeError, match="not set up"):
            events.publish("x")

    def test_redis_url_without_the_redis_package_names_the_extra(self) -> None:
        """In a fresh interpreter where ``import redis`` fails as if not installed."""
        script = (
            "import sys; sys.modules['redis'] = None\n"
            "from flask import Flask\n"
            "from flask_eventstream import EventStream\n"
            "app = Flask('app')\n"
            "app.config['EVENTSTREAM_BROKER_URL'] = 'redis://localhost:6379/0'\n"
            "try:\n"
            "    EventStream(app)\n"
            "except ImportError as exc:\n"
            "    print(type(exc).__name__, exc)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert done.stdout == (
            "ImportError EVENTSTREAM_BROKER_URL 'redis://localhost:6379/0' needs the "
            'Redis client: pip install "flask-eventstream[redis]"\n'
        ), done.stderr


class TestPublish:
    def test_str_is_sent_as_is(self, app: Flask, events: EventStream) -> None:
        with app.app_context():
            sent = events.publish("plain {text}")
        assert sent.data == "plain {text}"

    def test_other_data_is_json_through_the_app_provider(
        self, app: Flask, events: EventStream
    ) -> None:
        with app.app_context():
            sent = events.publish({"message": "Hello!", "n": [1, 2]})
        assert json.loads(sent.data) == {"message": "Hello!", "n": [1, 2]}

    def test_type_is_an_alias_of_event(self, app: Flask, events: EventStream) -> None:
        with app.app_context():
            assert events.publish("x", type="greeting").event == "greeting"
            with pytest.raises(TypeError, match="not both"):
                events.publish("x", type="a", event="b")

    def test_returns_the_event_with_a_broker_id(
        self, app: Flask, events: EventStream
    ) -> None:
        with app.app_context():
            first = events.publish("a", channel="c")
            second = events.publish("b", channel="c")
        assert first.id is not None and second.id is not None
        assert int(second.id) > int(first.id)

    def test_given_ids_are_kept(self, app: Flask, events: EventStream) -> None:
        with app.app_context():
            assert events.publish("a", id="order-17").id == "order-17"

    def test_works_from_a_thread_without_an_app_context(
        self, app: Flask, events: EventStream
    ) -> None:
        result: list[Event] = []
        thread = threading.Thread(target=lambda: result.append(events.publish("bg")))
        thread.start()
        thread.join(timeout=5)
        assert result and result[0].data == "bg"

    def test_without_context_and_several_apps_says_which(self) -> None:
        events = EventStream()
        apps = [Flask("a"), Flask("b")]  # kept: the extension holds apps weakly
        for app in apps:
            events.init_app(app)
        with pytest.raises(RuntimeError, match="app_context"):
            events.publish("x")

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"event": "a\nb"}, "event"),
            ({"id": "1\r2"}, "id"),
            ({"id": "a\0b"}, "id"),
            ({"retry": -1}, "retry"),
        ],
    )
    def test_bad_fields_raise_invalid_event(
        self, app: Flask, events: EventStream, kwargs: dict[str, object], field: str
    ) -> None:
        with app.app_context(), pytest.raises(InvalidEvent) as info:
            events.publish("x", **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field

    def test_oversized_event_is_refused(self, app: Flask) -> None:
        app.config["EVENTSTREAM_MAX_EVENT_SIZE"] = 100
        events = EventStream(app)
        with app.app_context(), pytest.raises(InvalidEvent, match="MAX_EVENT_SIZE"):
            events.publish("x" * 200)

    @pytest.mark.parametrize("channel", ["", "a b", "a/b", "x\n", "c" * 129])
    def test_bad_channel_names_raise(
        self, app: Flask, events: EventStream, channel: str
    ) -> None:
        with app.app_context(), pytest.raises(InvalidChannel):
            events.publish("x", channel=channel)

    def test_an_explicit_broker_is_used(self) -> None:
        broker = MemoryBroker(history=5)
        app = Flask(__name__)
        events = EventStream(app, broker=broker)
        with app.app_context():
            events.publish("x", channel="c")
        sub = broker.subscribe(["c"], last_event_id="0")
        assert b"data: x" in (sub.next_chunk(1) or b"")


class TestStreamResponses:
    """Both kinds of stream response are the app's ``response_class``, and run
    the hooks registered with ``call_on_close`` when the server closes them."""

    @pytest.mark.parametrize("path", ["/stream?channel=c", "/ticks"])
    def test_app_response_class_and_call_on_close(self, path: str) -> None:
        class Tagged(Response):
            pass

        app = Flask(__name__)
        app.response_class = Tagged
        events = EventStream(app)
        seen: list[str] = []

        @app.get("/ticks")
        def ticks() -> Response:
            return events.stream(iter(["tick"]))

        @app.after_request
        def hook(response: Response) -> Response:
            seen.append(type(response).__name__)
            response.call_on_close(lambda: seen.append("closed"))
            return response

        response = app.test_client().get(path, buffered=False)
        first = next(iter(response.response))
        assert first.startswith(b":") or first.startswith(b"data:")
        assert seen == ["Tagged"]
        response.close()
        assert seen == ["Tagged", "closed"]
        assert events.broker().subscriber_count() == 0
