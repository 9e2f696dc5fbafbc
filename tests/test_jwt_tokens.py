"""JWT subscribe tokens (Mercure-style): EVENTSTREAM_JWT_KEY."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
import pytest
from flask import Flask

from flask_eventstream import EventStream

from .conftest import LiveServer
from .helpers import StreamClient
from .test_auth import status

KEY = "a-jwt-secret-of-at-least-32-bytes!"


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=True, EVENTSTREAM_HEARTBEAT=0.5, EVENTSTREAM_JWT_KEY=KEY)
    return app


def token(claims: dict[str, object], key: str = KEY, alg: str = "HS256") -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, key, algorithm=alg)


class TestJWT:
    def test_mercure_subscribe_claim_grants_its_channels(
        self, app: Flask, events: EventStream
    ) -> None:
        grant = token({"mercure": {"subscribe": ["chat", "user:42"]}})
        client = app.test_client()
        assert (
            status(client, f"/stream?channel=chat&channel=user:42&token={grant}")[0]
            == 200
        )
        code, text = status(client, f"/stream/user:43?token={grant}")
        assert code == 403 and "user:43" in text

    def test_channels_claim_and_wildcard(self, app: Flask, events: EventStream) -> None:
        client = app.test_client()
        assert status(client, f"/stream/a?token={token({'channels': ['a']})}")[0] == 200
        assert (
            status(client, f"/stream/any?token={token({'channels': ['*']})}")[0] == 200
        )

    @pytest.mark.parametrize(
        ("claims", "channel", "code"),
        [
            ({"channels": "*"}, "any", 200),
            ({"channels": "a"}, "a", 200),
            ({"channels": "a"}, "b", 403),
            ({"mercure": {"subscribe": "*"}}, "any", 200),
            ({"channels": 42}, "a", 403),
        ],
        ids=["wildcard", "one", "other", "mercure-wildcard", "not-a-name"],
    )
    def test_a_single_string_grants_one_channel_or_all(
        self,
        app: Flask,
        events: EventStream,
        claims: dict[str, object],
        channel: str,
        code: int,
    ) -> None:
        grant = token(claims)
        assert status(app.test_client(), f"/stream/{channel}?token={grant}")[0] == code

    def test_bearer_header_is_accepted(self, app: Flask, events: EventStream) -> None:
        headers = {"Authorization": f"Bearer {token({'channels': ['a']})}"}
        assert status(app.test_client(), "/stream/a", headers=headers)[0] == 200

    @pytest.mark.parametrize(
        ("make", "message"),
        [
            (
                lambda: token(
                    {"channels": ["a"]}, key="another-key-of-32-bytes-or-more!!"
                ),
                "invalid",
            ),
            (
                lambda: jwt.encode({"channels": ["a"]}, KEY, algorithm="HS256"),
                "invalid",
            ),
            (
                lambda: jwt.encode(
                    {"channels": ["a"], "exp": int(time.time()) - 120}, KEY, "HS256"
                ),
                "expired",
            ),
            (
                lambda: jwt.encode({"channels": ["a"], "exp": 2**40}, None, "none"),
                "invalid",
            ),
            (lambda: token({"channels": ["a"]}, key=KEY * 2, alg="HS512"), "invalid"),
            (lambda: "not.a.jwt", "invalid"),
        ],
        ids=[
            "wrong-key",
            "no-exp",
            "expired",
            "alg-none",
            "alg-not-allowed",
            "garbage",
        ],
    )
    def test_bad_tokens_are_refused_with_401(
        self, app: Flask, events: EventStream, make: Callable[[], str], message: str
    ) -> None:
        code, text = status(app.test_client(), f"/stream/a?token={make()}")
        assert code == 401 and message in text

    def test_itsdangerous_tokens_do_not_count_when_jwt_is_set(
        self, app: Flask, events: EventStream
    ) -> None:
        app.secret_key = "s3cret"
        with app.app_context():
            signed = events.subscribe_token("a")
        assert status(app.test_client(), f"/stream/a?token={signed}")[0] == 401

    def test_required_token_without_one_is_401(self, app: Flask) -> None:
        app.config["EVENTSTREAM_REQUIRE_TOKEN"] = True
        EventStream(app)
        assert status(app.test_client(), "/stream/a")[0] == 401

    def test_over_real_http(
        self,
        app: Flask,
        events: EventStream,
        serve: Callable[[Flask], LiveServer],
        open_stream: Callable[..., StreamClient],
    ) -> None:
        url = serve(app).url
        grant = token({"mercure": {"subscribe": ["news"]}})
        client = open_stream(f"{url}/stream/news?token={grant}")
        assert client.status == 200
        with app.app_context():
            events.publish("hello", channel="news")
        assert client.read_events(1)[0].data == "hello"


def test_empty_key_is_refused_at_init() -> None:
    app = Flask(__name__)
    app.config["EVENTSTREAM_JWT_KEY"] = ""
    with pytest.raises(ValueError, match="JWT_KEY"):
        EventStream(app)
