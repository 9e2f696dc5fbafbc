"""CORS for cross-origin EventSource (cors.py; docs/protocol.md: S14, C15, C16)."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from flask_eventstream import EventStream

from .conftest import LiveServer
from .helpers import StreamClient

OpenStream = Callable[..., StreamClient]

APP_ORIGIN = "https://app.example.com"


def make_app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=True, EVENTSTREAM_HEARTBEAT=0.5, **config)
    EventStream(app)
    return app


def get(app: Flask, path: str, origin: str | None, **kwargs: object) -> TestResponse:
    headers = {"Origin": origin} if origin is not None else {}
    response = app.test_client().get(path, headers=headers, buffered=False, **kwargs)  # type: ignore[arg-type]
    response.close()
    return response


def preflight(app: Flask, origin: str) -> TestResponse:
    return app.test_client().options(
        "/stream/chat",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
    )


class TestOff:
    def test_no_cors_headers_by_default(self) -> None:
        response = get(make_app(), "/stream", APP_ORIGIN)
        assert response.status_code == 200
        assert not [h for h in response.headers.keys() if h.startswith("Access-")]

    def test_preflight_gets_no_permission_by_default(self) -> None:
        response = preflight(make_app(), APP_ORIGIN)
        assert "Access-Control-Allow-Origin" not in response.headers


class TestListedOrigins:
    def test_listed_origin_is_echoed_with_vary(self) -> None:
        app = make_app(EVENTSTREAM_CORS_ORIGINS=[APP_ORIGIN, "http://localhost:3000"])
        response = get(app, "/stream/chat", APP_ORIGIN)
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert "Origin" in response.vary
        assert "Access-Control-Allow-Credentials" not in response.headers

    def test_one_origin_as_a_string(self) -> None:
        app = make_app(EVENTSTREAM_CORS_ORIGINS=APP_ORIGIN + "/")
        response = get(app, "/stream", APP_ORIGIN)
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN

    @pytest.mark.parametrize(
        "origin",
        [
            "https://evil.example.com",
            "http://app.example.com",
            "https://app.example.com.evil.net",
            "https://app.example.com:8443",
            "null",
            "",
        ],
        ids=["other-host", "other-scheme", "suffix", "other-port", "null", "empty"],
    )
    def test_other_origin_gets_no_allow_origin(self, origin: str) -> None:
        app = make_app(EVENTSTREAM_CORS_ORIGINS=[APP_ORIGIN])
        response = get(app, "/stream", origin)
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Origin" in response.vary  # a cache must not serve it to APP_ORIGIN

    def test_same_origin_request_without_origin_header_still_streams(self) -> None:
        app = make_app(EVENTSTREAM_CORS_ORIGINS=[APP_ORIGIN])
        response = get(app, "/stream", None)
        assert response.status_code == 200
        assert "Access-Control-Allow-Origin" not in response.headers

    def test_origin_compared_without_case(self) -> None:
        app = make_app(EVENTSTREAM_CORS_ORIGINS=["https://App.Example.com"])
        response = get(app, "/stream", APP_ORIGIN)
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN

    def test_refusals_carry_cors_headers_too(self) -> None:
        app = make_app(EVENTSTREAM_CORS_ORIGINS=[APP_ORIGIN])
        response = get(app, "/stream/bad%20name", APP_ORIGIN)
        assert response.status_code == 400
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN

    def test_other_routes_of_the_app_are_untouched(self) -> None:
        app = make_app(EVENTSTREAM_CORS_ORIGINS=[APP_ORIGIN])
        app.add_url_rule("/page", "page", lambda: "hello")
        response = get(app, "/page", APP_ORIGIN)
        assert "Access-Control-Allow-Origin" not in response.headers


class TestCredentials:
    def test_credentials_echo_the_exact_origin(self) -> None:
        app = make_app(
            EVENTSTREAM_CORS_ORIGINS=[APP_ORIGIN], EVENTSTREAM_CORS_CREDENTIALS=True
        )
        response = get(app, "/stream", APP_ORIGIN)
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert response.headers["Access-Control-Allow-Credentials"] == "true"

    def test_credentials_are_not_granted_to_other_origins(self) -> None:
        app = make_app(
            EVENTSTREAM_CORS_ORIGINS=[APP_ORIGIN], EVENTSTREAM_CORS_CREDENTIALS=True
        )
        response = get(app, "/stream", "https://evil.example.com")
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Credentials" not in response.headers

    def test_star_with_credentials_is_refused_at_setup(self) -> None:
        with pytest.raises(ValueError, match="cannot be used with"):
            make_app(EVENTSTREAM_CORS_ORIGINS="*", EVENTSTREAM_CORS_CREDENTIALS=True)

    def test_star_without_credentials_allows_any_origin(self) -> None:
        app = make_app(EVENTSTREAM_CORS_ORIGINS="*")
        response = get(app, "/stream", "https://anyone.example")
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers

    @pytest.mark.parametrize(
        "origin", ["app.example.com", "https://", "https://host/path"]
    )
    def test_malformed_origin_is_refused_at_setup(self, origin: str) -> None:
        with pytest.raises(ValueError, match="is not an origin"):
            make_app(EVENTSTREAM_CORS_ORIGINS=[origin])

    def test_failed_setup_can_be_retried(self) -> None:
        app = Flask(__name__)
        app.config["EVENTSTREAM_CORS_ORIGINS"] = "*"
        app.config["EVENTSTREAM_CORS_CREDENTIALS"] = True
        with pytest.raises(ValueError):
            EventStream(app)
        app.config["EVENTSTREAM_CORS_CREDENTIALS"] = False
        EventStream(app)


class TestPreflight:
    def test_preflight_allows_get_and_last_event_id(self) -> None:
        app = make_app(
            EVENTSTREAM_CORS_ORIGINS=[APP_ORIGIN], EVENTSTREAM_CORS_CREDENTIALS=True
        )
        response = preflight(app, APP_ORIGIN)
        assert response.status_code in (200, 204)
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert response.headers["Access-Control-Allow-Methods"] == "GET"
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert "last-event-id" in [h.strip() for h in allowed.split(",")]
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert int(response.headers["Access-Control-Max-Age"]) > 0
        with app.app_context():
            assert app.extensions["eventstream"].broker.subscriber_count() == 0

    def test_preflight_from_other_origin_gets_nothing(self) -> None:
        app = make_app(EVENTSTREAM_CORS_ORIGINS=[APP_ORIGIN])
        response = preflight(app, "https://evil.example.com")
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Headers" not in response.headers

    def test_preflight_over_http(
        self, serve: Callable[[Flask], LiveServer], open_stream: OpenStream
    ) -> None:
        app = make_app(EVENTSTREAM_CORS_ORIGINS=[APP_ORIGIN])
        parts = urlsplit(serve(app).url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        try:
            connection.request(
                "OPTIONS",
                "/stream?channel=chat",
                headers={
                    "Origin": APP_ORIGIN,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "last-event-id",
                },
            )
            response = connection.getresponse()
            response.read()
            assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
            assert "Last-Event-ID" in response.headers["Access-Control-Allow-Headers"]
        finally:
            connection.close()
        stream = open_stream(
            f"{parts.scheme}://{parts.netloc}/stream/chat",
            headers={"Origin": APP_ORIGIN, "Last-Event-ID": "x" * 200},
        )
        assert stream.status == 200
        assert stream.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
