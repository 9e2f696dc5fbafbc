"""The chat example: posts from a form reach every open page, on any broker."""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType

from ..conftest import LiveServer
from ..helpers import StreamClient

ChatLine = re.compile(r"\[\d\d:\d\d:\d\d\] (?P<user>[^:]+): (?P<message>.*)")


def test_index_shows_the_name_from_the_session(
    example: Callable[..., ModuleType],
) -> None:
    chat = example("chat")
    client = chat.app.test_client()
    assert 'value="anonymous"' in client.get("/").text
    client.post("/login", data={"user": "  ada  "})
    page = client.get("/").text
    assert 'value="ada"' in page
    assert 'new EventSource("/stream/chat")' in page


class TestPost:
    def test_every_open_page_gets_the_time_stamped_message_once(
        self,
        example: Callable[..., ModuleType],
        serve: Callable[..., LiveServer],
        open_stream: Callable[..., StreamClient],
    ) -> None:
        chat = example("chat")
        url = serve(chat.app).url
        pages = [open_stream(f"{url}/stream/chat") for _ in range(2)]
        client = chat.app.test_client()
        client.post("/login", data={"user": "ada"})
        assert client.post("/post", data={"message": "hi: there"}).status_code == 204
        assert client.post("/post", data={"message": "second"}).status_code == 204
        for page in pages:
            assert page.status == 200
            events = page.read_events(2)
            lines = [ChatLine.fullmatch(e.data) for e in events]
            assert [m and (m["user"], m["message"]) for m in lines] == [
                ("ada", "hi: there"),
                ("ada", "second"),
            ]
            assert [e.event for e in events] == ["message", "message"]  # onmessage

    def test_a_page_that_reconnects_gets_only_what_it_missed(
        self,
        example: Callable[..., ModuleType],
        serve: Callable[..., LiveServer],
        open_stream: Callable[..., StreamClient],
    ) -> None:
        chat = example("chat")
        url = serve(chat.app).url
        client = chat.app.test_client()
        client.post("/post", data={"message": "one"})
        first = chat.events.publish("marker", channel="chat")
        client.post("/post", data={"message": "two"})
        client.post("/post", data={"message": "three"})
        page = open_stream(f"{url}/stream/chat", headers={"Last-Event-ID": first.id})
        messages = [ChatLine.fullmatch(e.data) for e in page.read_events(2)]
        assert [m and m["message"] for m in messages] == ["two", "three"]

    def test_cross_origin_post_is_refused(
        self, example: Callable[..., ModuleType]
    ) -> None:
        chat = example("chat")
        client = chat.app.test_client()
        refused = client.post(
            "/post", data={"message": "hi"}, headers={"Origin": "http://evil.example"}
        )
        assert refused.status_code == 403
        allowed = client.post(
            "/post", data={"message": "hi"}, headers={"Origin": "http://localhost"}
        )
        assert allowed.status_code == 204

    def test_cross_origin_login_is_refused(
        self, example: Callable[..., ModuleType]
    ) -> None:
        client = example("chat").app.test_client()
        refused = client.post(
            "/login", data={"user": "eve"}, headers={"Origin": "http://evil.example"}
        )
        assert refused.status_code == 403
        assert 'value="anonymous"' in client.get("/").text

    def test_empty_or_overlong_messages_are_refused(
        self, example: Callable[..., ModuleType]
    ) -> None:
        chat = example("chat")
        client = chat.app.test_client()
        assert client.post("/post", data={"message": "  "}).status_code == 400
        too_long = "x" * (chat.MAX_MESSAGE + 1)
        assert client.post("/post", data={"message": too_long}).status_code == 400
        assert client.post("/post", data={}).status_code == 400
