"""The Flask-SSE drop-in, against Flask-SSE's documented behaviour, over real HTTP.

Flask-SSE's documentation (quickstart, configuration, advanced usage) and its own
tests say what code written for it relies on; each test here checks one of those
promises, or one of the documented deliberate differences.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis
from flask import Flask, abort, request, url_for

from flask_eventstream import Event, InvalidEvent
from flask_eventstream.brokers import MemoryBroker
from flask_eventstream.compat import ServerSentEventsBlueprint, sse

from .brokers.redis_server import RedisServer
from .conftest import LiveServer
from .helpers import StreamClient, wait_for

Serve = Callable[[Flask], LiveServer]
OpenStream = Callable[..., StreamClient]

HERE = Path(__file__).parent


def load_flask_sse_app(name: str) -> ModuleType:
    """Import tests/flask_sse_app.py afresh, as one more server process would."""
    spec = importlib.util.spec_from_file_location(name, HERE / "flask_sse_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def compat_app() -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=True, EVENTSTREAM_HEARTBEAT=0.5)
    app.register_blueprint(sse, url_prefix="/stream")
    return app


def subscribed(
    app: Flask, count: int, channel: str | None = None
) -> Callable[[], bool]:
    def check() -> bool:
        state = app.extensions.get("eventstream")
        return state is not None and state.broker.subscriber_count(channel) == count

    return check


def redis_answers_on_6379() -> bool:
    try:
        with redis.Redis(port=6379, socket_timeout=2) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="module")
def localhost_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Redis on localhost:6379, where the app's ``redis://localhost`` points.

    One already running there is used as it is; else one is started for this module.
    """
    if redis_answers_on_6379():
        yield
        return
    with RedisServer(tmp_path_factory.mktemp("redis6379"), port=6379):
        yield


class TestAFlaskSSEApp:
    """Flask-SSE's README example, with only its import changed, on Redis."""

    @pytest.fixture
    def flask_sse_apps(self, localhost_redis: None) -> Iterator[list[Flask]]:
        apps: list[Flask] = []
        yield apps
        for app in apps:
            state = app.extensions.get("eventstream")
            if state is not None:
                state.broker.close()

    def test_send_reaches_the_page_stream_as_a_greeting(
        self, flask_sse_apps: list[Flask], serve: Serve, open_stream: OpenStream
    ) -> None:
        app: Flask = load_flask_sse_app("flask_sse_app_one").app
        flask_sse_apps.append(app)
        app.config["EVENTSTREAM_HEARTBEAT"] = 0.5
        base = serve(app).url
        with app.test_request_context():
            stream_path = url_for("sse.stream")  # the template's EventSource URL
        assert stream_path == "/stream"
        client = open_stream(base + stream_path)
        assert client.status == 200
        wait_for(subscribed(app, 1, "sse"), timeout=10)
        assert type(app.extensions["eventstream"].broker).__name__ == "RedisBroker"
        with StreamClient(base + "/send").response as answer:
            assert answer.read() == b"Message sent!"
        [event] = client.read_events(1, timeout=10)
        assert event.event == "greeting"
        assert json.loads(event.data) == {"message": "Hello!"}

    def test_two_server_processes_share_events_through_redis(
        self, flask_sse_apps: list[Flask], serve: Serve, open_stream: OpenStream
    ) -> None:
        """Why Flask-SSE needs Redis: a publish in one worker reaches another's page."""
        one = load_flask_sse_app("flask_sse_app_a").app
        two = load_flask_sse_app("flask_sse_app_b").app
        flask_sse_apps.extend([one, two])
        client = open_stream(serve(two).url + "/stream")
        wait_for(subscribed(two, 1, "sse"), timeout=10)
        with StreamClient(serve(one).url + "/send").response as answer:
            assert answer.status == 200
        [event] = client.read_events(1, timeout=10)
        assert (event.event, json.loads(event.data)) == (
            "greeting",
            {"message": "Hello!"},
        )

    def test_sse_redis_url_wins_over_redis_url(
        self, flask_sse_apps: list[Flask], compat_app: Flask
    ) -> None:
        """Flask-SSE's config priority: SSE_REDIS_URL, then REDIS_URL."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        compat_app.config["SSE_REDIS_URL"] = "redis://127.0.0.1:6379/0"
        compat_app.config["REDIS_URL"] = f"redis://127.0.0.1:{closed_port}/0"
        flask_sse_apps.append(compat_app)
        with compat_app.app_context():
            sent = sse.publish("via SSE_REDIS_URL", channel="priority")
        assert sent.id is not None
        broker = compat_app.extensions["eventstream"].broker
        assert type(broker).__name__ == "RedisBroker"


class TestDocumentedBehaviour:
    def test_sse_is_a_blueprint_named_sse_with_a_stream_view(self) -> None:
        assert isinstance(sse, ServerSentEventsBlueprint)
        assert sse.name == "sse"

    def test_url_for_builds_the_channel_query(self, compat_app: Flask) -> None:
        with compat_app.test_request_context():
            assert url_for("sse.stream") == "/stream"
            url = url_for("sse.stream", channel="users.social")
        assert url == "/stream?channel=users.social"

    def test_channels_select_who_receives(
        self, compat_app: Flask, serve: Serve, open_stream: OpenStream
    ) -> None:
        base = serve(compat_app).url
        default = open_stream(f"{base}/stream")
        social = open_stream(f"{base}/stream?channel=users.social")
        wait_for(subscribed(compat_app, 2))
        with compat_app.app_context():
            sse.publish({"active_users": 100}, channel="analytics")
            sse.publish({"user": "alice"}, channel="users.social")
            sse.publish("to the default channel")
        [event] = social.read_events(1)
        assert json.loads(event.data) == {"user": "alice"}
        [event] = default.read_events(1)
        assert event.data == "to the default channel"

    def test_publish_takes_flask_sse_arguments_positionally(
        self, compat_app: Flask, serve: Serve, open_stream: OpenStream
    ) -> None:
        """publish(data, type=None, id=None, retry=None, channel='sse')."""
        client = open_stream(f"{serve(compat_app).url}/stream?channel=garden")
        wait_for(subscribed(compat_app, 1))
        with compat_app.app_context():
            sent = sse.publish({"n": 1}, "example", 5, 2000, "garden")
        assert sent == Event('{"n": 1}', event="example", id="5", retry=2000)
        client.read_events(1)
        assert b'event: example\nid: 5\nretry: 2000\ndata: {"n": 1}\n\n' in client.raw
        assert client.parser.retry == 2000

    def test_before_request_access_control(
        self, compat_app: Flask, serve: Serve, open_stream: OpenStream
    ) -> None:
        """Flask-SSE's advanced docs: a before_request handler guards channels."""
        guarded = ServerSentEventsBlueprint("guarded", __name__)
        guarded.add_url_rule("", endpoint="stream", view_func=guarded.stream)

        @guarded.before_request
        def check_access() -> None:
            if request.args.get("channel") == "analytics":
                abort(403)

        app = Flask("guarded_app")
        app.register_blueprint(guarded, url_prefix="/sse")
        base = serve(app).url
        assert open_stream(f"{base}/sse?channel=analytics").status == 403
        assert open_stream(f"{base}/sse?channel=news").status == 200


class TestDeliberateDifferences:
    def test_without_redis_url_the_memory_broker_is_used_with_a_warning(
        self, compat_app: Flask, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.WARNING, "flask_eventstream.compat"):
            with compat_app.app_context():
                sse.publish("hi")
                sse.publish("again")
        assert isinstance(compat_app.extensions["eventstream"].broker, MemoryBroker)
        warnings = [r for r in caplog.records if "no SSE_REDIS_URL" in r.message]
        assert len(warnings) == 1

    def test_eventstream_broker_url_wins_over_redis_url(
        self, compat_app: Flask
    ) -> None:
        compat_app.config["EVENTSTREAM_BROKER_URL"] = "memory://"
        compat_app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"
        with compat_app.app_context():
            sse.publish("memory")
        assert isinstance(compat_app.extensions["eventstream"].broker, MemoryBroker)

    def test_payloads_flask_sse_would_break_arrive_whole(
        self, compat_app: Flask, serve: Serve, open_stream: OpenStream
    ) -> None:
        """str.splitlines() split on U+2028 and \\x0b and dropped empty data (S4)."""
        client = open_stream(f"{serve(compat_app).url}/stream")
        wait_for(subscribed(compat_app, 1))
        with compat_app.app_context():
            for data in ["a\u2028b", "c\x0bd", "", "line 1\nline 2"]:
                sse.publish(data)
        events = client.read_events(4)
        assert [e.data for e in events] == ["a\u2028b", "c\x0bd", "", "line 1\nline 2"]

    def test_a_newline_in_type_cannot_inject_fields(self, compat_app: Flask) -> None:
        with compat_app.app_context(), pytest.raises(InvalidEvent):
            sse.publish("x", type="greeting\ndata: injected")

    def test_a_reconnecting_page_gets_what_it_missed(
        self, compat_app: Flask, serve: Serve, open_stream: OpenStream
    ) -> None:
        with compat_app.app_context():
            first = sse.publish("seen")
            sse.publish("missed")
        assert first.id is not None
        client = open_stream(
            f"{serve(compat_app).url}/stream", headers={"Last-Event-ID": first.id}
        )
        [event] = client.read_events(1)
        assert event.data == "missed"

    def test_publish_without_an_app_context_when_one_app(self) -> None:
        blueprint = ServerSentEventsBlueprint("solo", __name__)
        app = Flask("solo_app")
        app.register_blueprint(blueprint)
        sent = blueprint.publish("from a thread")
        assert sent.data == "from a thread"
        assert "eventstream" in app.extensions

    def test_each_app_has_its_own_broker(self, compat_app: Flask) -> None:
        other = Flask("other")
        other.register_blueprint(sse, url_prefix="/events")
        with compat_app.app_context():
            sse.publish("one")
        with other.app_context():
            sse.publish("two")
        brokers = {
            id(app.extensions["eventstream"].broker) for app in (compat_app, other)
        }
        assert len(brokers) == 2
        with pytest.raises(RuntimeError, match="no application context"):
            sse.publish("which app?")
