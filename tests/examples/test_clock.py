"""The clock example (a plain generator): a generator streams the time every second."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from ..conftest import LiveServer
from ..helpers import StreamClient


def test_page_listens_to_the_clock_stream(example: Callable[..., ModuleType]) -> None:
    page = example("clock").app.test_client().get("/").text
    assert 'new EventSource("/clock")' in page
    assert 'id="target_div"' in page


def test_clock_ticks_with_the_time(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    clock = example("clock")
    stream = open_stream(serve(clock.app).url + "/clock")
    assert stream.status == 200
    assert stream.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["Cache-Control"] == "no-cache"
    ticks = stream.read_events(2, timeout=10)
    for tick in ticks:
        time.strptime(tick.data)  # time.ctime()'s format; raises if not
        assert tick.event == "message"
    assert ticks[0].data != ticks[1].data  # a second apart: the clock moves


def test_generator_is_closed_when_the_page_goes_away(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    open_stream: Callable[..., StreamClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unlike an endless generator, ticks() stops once nobody listens."""
    clock = example("clock")
    closed = threading.Event()
    ticks = clock.ticks

    def watched_ticks() -> Iterator[str]:
        try:
            yield from ticks()
        finally:
            closed.set()

    monkeypatch.setattr(clock, "ticks", watched_ticks)
    stream = open_stream(serve(clock.app).url + "/clock")
    stream.read_events(1, timeout=10)
    assert not closed.is_set()
    stream.close()
    assert closed.wait(timeout=10)
