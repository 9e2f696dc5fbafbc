"""The tokens example: a POST answered with a slow stream, stopped by the client.

Aborting is closing the connection; the server then closes the generator and its
``finally`` runs. Checked over real HTTP on Werkzeug's threaded server (the
example in this process) and on gunicorn's gevent worker (a subprocess).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from urllib.parse import urlsplit

import pytest

from flask_eventstream import Event, EventParser
from flask_eventstream.client import EventSource

from ..conftest import LiveServer, missing
from ..docs_blocks import code_block
from ..helpers import wait_for
from ..test_servers import _free_port, _get, stop_server, wait_until_serving
from .loader import EXAMPLES


class PostStream:
    """``POST /generate`` with a JSON prompt, its answer decoded as it arrives."""

    def __init__(self, base: str, prompt: str = "why?", timeout: float = 10) -> None:
        parts = urlsplit(base)
        self.connection = http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=timeout
        )
        body = json.dumps({"prompt": prompt})
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        self.connection.request("POST", "/generate", body=body, headers=headers)
        self.response = self.connection.getresponse()
        self.parser = EventParser()
        self.events: list[Event] = []

    def read_events(self, count: int) -> list[Event]:
        """Read until *count* events came; each read is bounded by the timeout."""
        while len(self.events) < count:
            chunk = self.response.read1(65536)
            assert chunk, f"stream ended after {self.events}"
            self.events += self.parser.feed(chunk)
        return self.events

    def close(self) -> None:
        self.response.close()
        self.connection.close()


@pytest.fixture
def post_stream() -> Iterator[Callable[..., PostStream]]:
    streams: list[PostStream] = []

    def open_(base: str, **kwargs: object) -> PostStream:
        stream = PostStream(base, **kwargs)  # type: ignore[arg-type]
        streams.append(stream)
        return stream

    yield open_
    for stream in streams:
        stream.close()


def test_answer_streams_start_tokens_done(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    post_stream: Callable[..., PostStream],
) -> None:
    tokens = example("tokens", TOKENS_DELAY_SECONDS=0.001)
    stream = post_stream(serve(tokens.app).url, prompt="  How?  ")
    assert stream.response.status == 200
    words = len(tokens.ANSWER.split(" "))
    events = stream.read_events(words + 3)
    start, asked, *answer, done = events
    assert start.event == "start"
    assert asked.data == "You asked: How?\n\n"
    assert "".join(e.data for e in answer) == tokens.ANSWER
    assert {e.event for e in answer} == {"token"}
    assert done.event == "done"
    wait_for(lambda: tokens.replies[start.data] == "finished")


def test_closing_the_connection_runs_the_generators_finally(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    post_stream: Callable[..., PostStream],
) -> None:
    tokens = example("tokens", TOKENS_DELAY_SECONDS=0.1)
    stream = post_stream(serve(tokens.app).url)
    start = stream.read_events(3)[0]
    assert tokens.replies[start.data] == "running"
    stream.close()
    wait_for(lambda: tokens.replies[start.data] == "stopped", timeout=10)


def test_a_prompt_is_required(example: Callable[..., ModuleType]) -> None:
    client = example("tokens").app.test_client()
    assert client.post("/generate", json={"prompt": " "}).status_code == 400
    assert client.post("/generate", data="not json").status_code == 400


def test_python_client_posts_the_prompt_and_reads_the_answer(
    example: Callable[..., ModuleType], serve: Callable[..., LiveServer]
) -> None:
    tokens = example("tokens", TOKENS_DELAY_SECONDS=0.001)
    url = serve(tokens.app).url + "/generate"
    text = ""
    with EventSource(url, method="POST", json={"prompt": "Hi"}) as source:
        for event in source:
            if event.event == "done":
                break
            if event.event == "token":
                text += event.data
    assert text == "You asked: Hi\n\n" + tokens.ANSWER


def test_the_tutorials_python_sample_prints_the_answer(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    tokens = example("tokens", TOKENS_DELAY_SECONDS=0.001)
    sample = code_block("tutorials.md", "python", 'method="POST"')
    url = serve(tokens.app).url
    exec(sample.replace("http://127.0.0.1:5000", url), {})  # noqa: S102
    assert capsys.readouterr().out == "You asked: Why?\n\n" + tokens.ANSWER


class GeventServer:
    """The example under ``gunicorn -k gevent``, as deploying.md runs apps."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            FLASK_TOKENS_DELAY_SECONDS="0.1",
            FLASK_EVENTSTREAM_HEARTBEAT="0.5",
        )
        command = [
            sys.executable, "-m", "gunicorn",
            "-k", "gevent",
            "-c", "python:flask_eventstream.gunicorn",
            "--chdir", str(EXAMPLES / "tokens"),
            "--bind", f"127.0.0.1:{self.port}",
            "--log-level", "warning",
            "app:app",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env=env)
        wait_until_serving(self.process, f"{self.url}/")

    def state(self, reply: str) -> str:
        state: str = json.loads(_get(f"{self.url}/replies/{reply}"))["state"]
        return state

    def stop(self) -> None:
        stop_server(self.process)


@pytest.fixture
def gevent_server() -> Iterator[GeventServer]:
    for module in ("gunicorn", "gevent"):
        if importlib.util.find_spec(module) is None:
            missing(module)
    server = GeventServer()
    yield server
    server.stop()


@pytest.mark.slow
def test_closing_the_connection_stops_the_generator_on_gunicorn_gevent(
    gevent_server: GeventServer, post_stream: Callable[..., PostStream]
) -> None:
    stream = post_stream(gevent_server.url)
    start = stream.read_events(3)[0]
    assert gevent_server.state(start.data) == "running"
    stream.close()
    wait_for(lambda: gevent_server.state(start.data) == "stopped", timeout=10)
