"""The htmx example over real HTTP: rendered fragments published as events."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from ..conftest import LiveServer
from ..helpers import StreamClient

HTMX = {"HX-Request": "true"}


def test_page_loads_the_vendored_scripts_from_the_app(
    example: Callable[..., ModuleType],
) -> None:
    client = example("htmx").app.test_client()
    page = client.get("/").text
    for script in ("htmx/htmx-2.0.11.min.js", "htmx/htmx-ext-sse-2.2.4.js"):
        assert f'src="/static/{script}"' in page
        with client.get(f"/static/{script}") as response:
            assert response.status_code == 200
            assert response.mimetype == "text/javascript"
    assert 'sse-connect="/stream/comments"' in page
    assert "https://" not in page


def test_a_comment_is_published_as_a_multi_line_fragment(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    htmx = example("htmx")
    url = serve(htmx.app).url
    stream = open_stream(f"{url}/stream/comments")
    stream.read_until(lambda s: len(s.raw) > 0)  # subscribed
    form = {"author": "ada", "text": "first line\nsecond <b>line</b>"}
    assert (
        htmx.app.test_client().post("/comments", data=form, headers=HTMX).status_code
        == 204
    )
    (event,) = stream.read_events(1)
    assert event.event == "comment"
    assert event.data.count("\n") > 3
    assert "<strong>ada</strong>" in event.data
    assert "first line\nsecond &lt;b&gt;line&lt;/b&gt;" in event.data  # escaped
    assert '<span id="count" hx-swap-oob="true">1 comment</span>' in event.data


def test_the_page_subscribes_after_the_comments_it_shows(
    example: Callable[..., ModuleType],
) -> None:
    htmx = example("htmx")
    client = htmx.app.test_client()
    client.post("/comments", data={"author": "a", "text": "one"}, headers=HTMX)
    _, last_id = htmx.feed.snapshot()
    page = client.get("/").text
    assert f'sse-connect="/stream/comments?lastEventId={last_id}"' in page
    assert '<span id="count">1 comment</span>' in page


def test_posts_without_htmx_or_text_are_refused(
    example: Callable[..., ModuleType],
) -> None:
    client = example("htmx").app.test_client()
    form = {"author": "a", "text": "hi"}
    assert client.post("/comments", data=form).status_code == 403
    empty = {"author": "a", "text": " "}
    assert client.post("/comments", data=empty, headers=HTMX).status_code == 400
