"""Who may subscribe: authorization hooks and signed subscribe tokens (auth.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from flask import Flask, abort, request, session
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

from flask_eventstream import EventStream, InvalidChannel
from flask_eventstream._auth import TOKEN_SALT

from .conftest import LiveServer
from .helpers import StreamClient, wait_for

OpenStream = Callable[..., StreamClient]


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=True, EVENTSTREAM_HEARTBEAT=0.5, SECRET_KEY="s3cret")
    return app


def status(client: FlaskClient, url: str, **kwargs: object) -> tuple[int, str]:
    """Open *url*, return its status and, for a refusal, its text; close it."""
    response = client.get(url, buffered=False, **kwargs)  # type: ignore[arg-type]
    try:
        if response.status_code == 200:
            assert response.mimetype == "text/event-stream"
            return 200, ""
        assert response.mimetype != "text/event-stream"  # no stream byte was sent
        return response.status_code, response.get_data(as_text=True)
    finally:
        response.close()


def backdated_token(key: str, channels: list[str], max_age: int, ago: int) -> str:
    """A genuine token, as minted *ago* seconds in the past."""

    class Backdated(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - ago

    serializer = URLSafeTimedSerializer(key, salt=TOKEN_SALT, signer=Backdated)
    return serializer.dumps({"c": channels, "m": max_age})


class TestAuthorizeHook:
    def test_without_hooks_every_channel_is_open(
        self, app: Flask, events: EventStream
    ) -> None:
        assert status(app.test_client(), "/stream/anything")[0] == 200

    def test_refused_channel_is_403_before_any_stream_byte(
        self, app: Flask, events: EventStream
    ) -> None:
        events.authorize(lambda channel: channel == "public")
        client = app.test_client()
        assert status(client, "/stream/public")[0] == 200
        code, text = status(client, "/stream/private")
        assert code == 403
        assert "'private'" in text
        assert events.subscriber_count() == 0

    def test_hook_runs_in_the_request_context_with_the_session(
        self, app: Flask, events: EventStream
    ) -> None:
        @app.post("/login/<user>")
        def login(user: str) -> str:
            session["user"] = user
            return "ok"

        @events.authorize
        def own_channel_only(channel: str) -> bool:
            return channel == f"user:{session.get('user')}"

        client = app.test_client()
        assert status(client, "/stream/user:1")[0] == 403
        client.post("/login/1")
        assert status(client, "/stream/user:1")[0] == 200
        assert status(client, "/stream/user:2")[0] == 403

    def test_every_channel_of_a_multi_channel_request_is_checked(
        self, app: Flask, events: EventStream
    ) -> None:
        asked: list[str] = []

        @events.authorize
        def record(channel: str) -> bool:
            asked.append(channel)
            return channel != "b"

        client = app.test_client()
        assert status(client, "/stream?channel=a&channel=c")[0] == 200
        assert asked == ["a", "c"]
        code, text = status(client, "/stream?channel=a&channel=b&channel=c")
        assert (code, "'b'" in text) == (403, True)

    def test_default_channel_is_checked_too(
        self, app: Flask, events: EventStream
    ) -> None:
        events.authorize(lambda channel: channel != "sse")
        assert status(app.test_client(), "/stream")[0] == 403

    def test_replay_is_refused_with_the_channel(
        self, app: Flask, events: EventStream
    ) -> None:
        events.authorize(lambda channel: request.headers.get("X-User") == "owner")
        with app.app_context():
            events.publish("secret", channel="vault", id="1")
            events.publish("secret 2", channel="vault", id="2")
        client = app.test_client()
        code, text = status(client, "/stream/vault", headers={"Last-Event-ID": "1"})
        assert code == 403
        assert "secret" not in text

    def test_all_hooks_must_allow(self, app: Flask, events: EventStream) -> None:
        events.authorize(lambda channel: channel.startswith("team:"))
        events.authorize(lambda channel: channel != "team:admin")
        client = app.test_client()
        assert status(client, "/stream/team:dev")[0] == 200
        assert status(client, "/stream/team:admin")[0] == 403
        assert status(client, "/stream/other")[0] == 403

    def test_hook_may_answer_401(self, app: Flask, events: EventStream) -> None:
        @events.authorize
        def must_log_in(channel: str) -> bool:
            if "user" not in session:
                abort(401)
            return True

        assert status(app.test_client(), "/stream/x")[0] == 401
        assert events.subscriber_count() == 0

    def test_authorized_subscriber_receives_events_over_http(
        self,
        app: Flask,
        events: EventStream,
        serve: Callable[[Flask], LiveServer],
        open_stream: OpenStream,
    ) -> None:
        events.authorize(lambda channel: request.headers.get("X-User") == channel)
        url = serve(app).url
        refused = open_stream(f"{url}/stream/alice", headers={"X-User": "bob"})
        assert refused.status == 403
        client = open_stream(f"{url}/stream/alice", headers={"X-User": "alice"})
        wait_for(lambda: subscribers(app, events) == 1)
        with app.app_context():
            events.publish("hi alice", channel="alice")
        assert [e.data for e in client.read_events(1)] == ["hi alice"]


def subscribers(app: Flask, events: EventStream) -> int:
    with app.app_context():
        return events.subscriber_count()


class TestSubscribeTokens:
    def mint(
        self, app: Flask, events: EventStream, channels: object, **kwargs: object
    ) -> str:
        with app.app_context():
            return events.subscribe_token(channels, **kwargs)  # type: ignore[arg-type]

    def test_token_grants_the_channels_it_names(
        self, app: Flask, events: EventStream
    ) -> None:
        token = self.mint(app, events, ["a", "b"])
        client = app.test_client()
        assert status(client, f"/stream?channel=a&channel=b&token={token}")[0] == 200
        assert status(client, f"/stream/a?token={token}")[0] == 200

    def test_channel_outside_the_token_is_403(
        self, app: Flask, events: EventStream
    ) -> None:
        token = self.mint(app, events, "a")
        code, text = status(
            app.test_client(), f"/stream?channel=a&channel=b&token={token}"
        )
        assert code == 403
        assert "does not cover channel 'b'" in text

    def test_expired_token_is_401(self, app: Flask, events: EventStream) -> None:
        token = backdated_token("s3cret", ["a"], max_age=60, ago=120)
        code, text = status(app.test_client(), f"/stream/a?token={token}")
        assert code == 401
        assert "expired" in text

    def test_token_from_the_future_is_refused(
        self, app: Flask, events: EventStream
    ) -> None:
        token = backdated_token("s3cret", ["a"], max_age=60, ago=-3600)
        assert status(app.test_client(), f"/stream/a?token={token}")[0] == 401

    def test_token_within_its_max_age_is_accepted(
        self, app: Flask, events: EventStream
    ) -> None:
        token = backdated_token("s3cret", ["a"], max_age=60, ago=30)
        assert status(app.test_client(), f"/stream/a?token={token}")[0] == 200

    def test_default_max_age_comes_from_config(self, app: Flask) -> None:
        app.config["EVENTSTREAM_TOKEN_MAX_AGE"] = 7
        events = EventStream(app)
        signer = URLSafeTimedSerializer("s3cret", salt=TOKEN_SALT)
        assert signer.loads(self.mint(app, events, "a")) == {"c": ["a"], "m": 7}
        assert signer.loads(self.mint(app, events, "a", max_age=9))["m"] == 9

    def test_tampered_signature_is_401(self, app: Flask, events: EventStream) -> None:
        token = self.mint(app, events, "a")
        spot = len(token) - 6
        forged = token[:spot] + ("A" if token[spot] != "A" else "B") + token[spot + 1 :]
        code, text = status(app.test_client(), f"/stream/a?token={forged}")
        assert code == 401
        assert "invalid" in text

    def test_widened_payload_with_the_old_signature_is_401(
        self, app: Flask, events: EventStream
    ) -> None:
        token = self.mint(app, events, "a")
        _, stamp, signature = token.split(".")
        wider = base64_encode(json.dumps({"c": ["a", "admin"], "m": 3600}))
        forged = f"{wider.decode()}.{stamp}.{signature}"
        assert status(app.test_client(), f"/stream/admin?token={forged}")[0] == 401

    @pytest.mark.parametrize(
        "token",
        ["", "garbage", "a.b.c", "%00", "x" * 5000],
        ids=["empty", "word", "three-parts", "nul", "long"],
    )
    def test_junk_token_is_401(
        self, app: Flask, events: EventStream, token: str
    ) -> None:
        assert status(app.test_client(), f"/stream/a?token={token}")[0] == 401

    def test_token_signed_with_another_key_is_401(
        self, app: Flask, events: EventStream
    ) -> None:
        token = URLSafeTimedSerializer("other", salt=TOKEN_SALT).dumps(
            {"c": ["a"], "m": 60}
        )
        assert status(app.test_client(), f"/stream/a?token={token}")[0] == 401

    def test_same_key_other_salt_is_401(self, app: Flask, events: EventStream) -> None:
        # e.g. a value signed for the session cookie is no subscribe token.
        token = URLSafeTimedSerializer("s3cret", salt="cookie-session").dumps(
            {"c": ["a"], "m": 60}
        )
        assert status(app.test_client(), f"/stream/a?token={token}")[0] == 401

    def test_token_survives_key_rotation_via_fallbacks(
        self, app: Flask, events: EventStream
    ) -> None:
        token = self.mint(app, events, "a")
        app.config.update(SECRET_KEY="new", SECRET_KEY_FALLBACKS=["s3cret"])
        assert status(app.test_client(), f"/stream/a?token={token}")[0] == 200
        app.config.update(SECRET_KEY_FALLBACKS=[])
        assert status(app.test_client(), f"/stream/a?token={token}")[0] == 401

    def test_token_decides_without_consulting_hooks(
        self, app: Flask, events: EventStream
    ) -> None:
        events.authorize(lambda channel: False)
        token = self.mint(app, events, "a")
        assert status(app.test_client(), f"/stream/a?token={token}")[0] == 200
        assert status(app.test_client(), "/stream/a")[0] == 403

    def test_mint_rejects_bad_arguments(self, app: Flask, events: EventStream) -> None:
        with pytest.raises(InvalidChannel):
            self.mint(app, events, ["ok", "not ok"])
        with pytest.raises(ValueError, match="at least one channel"):
            self.mint(app, events, [])
        with pytest.raises(ValueError, match="max_age"):
            self.mint(app, events, "a", max_age=0)

    def test_mint_without_secret_key_says_what_to_do(self) -> None:
        app = Flask(__name__)
        events = EventStream(app)
        with app.app_context(), pytest.raises(RuntimeError, match="SECRET_KEY"):
            events.subscribe_token("a")

    def test_stream_url_with_token_in_a_view_names_secret_key(self) -> None:
        app = Flask(__name__)
        app.testing = True
        events = EventStream(app)

        @app.get("/")
        def page() -> str:
            return events.stream_url("a", token=True)

        with pytest.raises(RuntimeError) as info:
            app.test_client().get("/")
        assert "stream_url(token=True)" in str(info.value)
        assert "app.config['SECRET_KEY']" in str(info.value)

    def test_without_secret_key_the_token_parameter_is_ignored(self) -> None:
        app = Flask(__name__)
        EventStream(app)
        assert status(app.test_client(), "/stream/a?token=whatever")[0] == 200


class TestRequireToken:
    def test_missing_token_is_401(self, app: Flask) -> None:
        app.config["EVENTSTREAM_REQUIRE_TOKEN"] = True
        EventStream(app)
        code, text = status(app.test_client(), "/stream/a")
        assert code == 401
        assert "token is required" in text

    def test_valid_token_opens_the_stream(self, app: Flask) -> None:
        app.config["EVENTSTREAM_REQUIRE_TOKEN"] = True
        events = EventStream(app)
        with app.app_context():
            token = events.subscribe_token("a")
        assert status(app.test_client(), f"/stream/a?token={token}")[0] == 200

    def test_required_without_secret_key_is_a_loud_error(self) -> None:
        app = Flask(__name__)
        app.config.update(TESTING=True, EVENTSTREAM_REQUIRE_TOKEN=True)
        EventStream(app)
        with pytest.raises(RuntimeError, match="no SECRET_KEY"):
            app.test_client().get("/stream/a")


class TestStreamUrl:
    def test_url_with_token_opens_the_stream(
        self, app: Flask, events: EventStream
    ) -> None:
        with app.test_request_context():
            url = events.stream_url(["a", "b"], token=True)
            plain = events.stream_url("a")
        assert url.startswith("/stream?channel=a&channel=b&token=")
        assert plain == "/stream/a"
        assert status(app.test_client(), url)[0] == 200

    def test_token_over_http_delivers_events(
        self,
        app: Flask,
        serve: Callable[[Flask], LiveServer],
        open_stream: OpenStream,
    ) -> None:
        app.config["EVENTSTREAM_REQUIRE_TOKEN"] = True
        events = EventStream(app)
        base = serve(app).url
        with app.test_request_context():
            url = events.stream_url("news", token=True)
        assert open_stream(f"{base}/stream/news").status == 401
        client = open_stream(base + url)
        assert client.status == 200
        wait_for(lambda: subscribers(app, events) == 1)
        with app.app_context():
            events.publish("headline", channel="news")
        assert [e.data for e in client.read_events(1)] == ["headline"]


class TestIsolationOverHttp:
    def test_replay_and_multi_channel_streams_hold_only_their_channels(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        with app.app_context():
            start = events.publish("start", channel="a")
            for channel in ("b", "a", "private", "c", "b"):
                events.publish(f"{channel} event", channel=channel)
        assert start.id is not None
        client = open_stream(
            f"{live}/stream?channel=a&channel=b",
            headers={"Last-Event-ID": start.id},
        )
        wait_for(lambda: subscribers(app, events) == 1)
        with app.app_context():
            events.publish("live private", channel="private")
            events.publish("live a", channel="a")
        got = [e.data for e in client.read_events(4)]
        assert got == ["b event", "a event", "b event", "live a"]
