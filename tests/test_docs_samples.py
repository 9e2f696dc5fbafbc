"""Samples in docs/ run as written: each test takes the code from the page itself.

The first tests here keep the rule of ``tests/docs_blocks.py``: every fenced block
of README.md and docs/ is run by some test or is a checked excerpt.
"""

from __future__ import annotations

import ast
import html
import itertools
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_eventstream import EventStream

from .conftest import LiveServer, missing
from .docs_blocks import (
    ROOT,
    Block,
    all_blocks,
    code_block,
    excerpt_mismatch,
    find_blocks,
)
from .helpers import StreamClient

_names = itertools.count()


def code_block_calls() -> dict[tuple[str, str, str], str]:
    """``code_block("page", "language", "containing")`` calls in tests/, and where."""
    calls = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "code_block"
                and len(node.args) == 3
                and all(
                    isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                    for arg in node.args
                )
            ):
                key = tuple(arg.value for arg in node.args)  # type: ignore[attr-defined]
                calls[key] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return calls  # type: ignore[return-value]


class TestEveryBlockIsRunOrChecked:
    def test_each_code_block_call_names_one_block(self) -> None:
        calls = code_block_calls()
        assert len(calls) > 30, calls  # the scan finds the tests' calls
        wrong = {
            where: key for key, where in calls.items() if len(find_blocks(*key)) != 1
        }
        assert wrong == {}

    def test_every_block_is_run_by_a_test_or_is_an_excerpt(self) -> None:
        run = {block for key in code_block_calls() for block in find_blocks(*key)}
        unchecked = [
            str(block)
            for block in all_blocks()
            if block not in run and block.excerpt_of is None
        ]
        assert unchecked == [], (
            "run these blocks in a test (take them with code_block(...)), or "
            "write `From `path`:` before an excerpt of a file in the repository"
        )

    @pytest.mark.parametrize(
        "block",
        [block for block in all_blocks() if block.excerpt_of is not None],
        ids=str,
    )
    def test_an_excerpt_matches_its_file(self, block: Block) -> None:
        assert block.excerpt_of is not None
        assert block.excerpt_of.is_file(), f"{block}: no {block.excerpt_of}"
        assert excerpt_mismatch(block, block.excerpt_of.read_text()) is None, (
            f"{block}: {excerpt_mismatch(block, block.excerpt_of.read_text())}"
        )


def test_signals_sample_logs_with_flasks_default_log_levels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not in debug mode, as under a plain ``flask run``: the sample's INFO shows."""
    app = Flask(f"signals_sample_{next(_names)}")
    EventStream(app)
    sample = code_block("configuration.md", "python", "stream_opened.connect_via")
    exec(sample, {"app": app})  # noqa: S102 - the documentation's own code
    with app.test_client().get("/stream/news", buffered=False) as response:
        assert response.status_code == 200
    assert any(
        record.name == app.name and record.getMessage().startswith("stream on ")
        for record in caplog.records
    ), caplog.records


def test_readme_sample_sends_the_greeting(
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_app"}
    exec(code_block("README.md", "python", "EventStream(app)"), namespace)  # noqa: S102
    url = serve(namespace["app"]).url
    stream = open_stream(f"{url}/stream?channel=chat")
    stream.read_until(lambda s: len(s.raw) > 0)  # subscribed
    with urllib.request.urlopen(
        urllib.request.Request(f"{url}/send", method="POST"), timeout=5
    ) as response:
        assert response.read() == b"sent"
    (event,) = stream.read_events(1)
    assert (event.event, json.loads(event.data)) == ("greeting", {"message": "Hello!"})
    namespace["events"].broker().close()


INDEX_SAMPLES = {
    "README.md": lambda: code_block("README.md", "python", "EventStream(app)"),
    "index.md": lambda: code_block("index.md", "python", "EventStream(app)"),
}


def test_the_index_shows_the_readmes_sample() -> None:
    assert INDEX_SAMPLES["index.md"]() == INDEX_SAMPLES["README.md"]()


def test_how_it_works_lists_the_modules_there_are() -> None:
    listing = code_block("how-it-works.md", "", "EventParser:")
    # Each line names modules (``a.py``, ``a.py, b.py``) or a folder (``redis/``)
    # before its description; an indented line is inside the folder above it.
    package = ROOT / "src" / "flask_eventstream"
    folders: list[tuple[int, Path]] = [(-1, package)]
    named: set[Path] = set()
    for line in listing.splitlines():
        indent = len(line) - len(line.lstrip())
        while folders[-1][0] >= indent:
            folders.pop()
        names = re.match(r"\s*((?:[\w]+(?:\.py|/)(?:, )?)+)", line)
        if names is None:
            continue  # a description's second line
        for name in names[1].split(", "):
            path = folders[-1][1] / name
            assert path.exists(), f"how-it-works.md names {path}"
            if name.endswith("/"):
                folders.append((indent, path))
            else:
                named.add(path)
    modules = {path for path in package.rglob("*.py") if path.name != "__init__.py"}
    assert sorted(map(str, modules - named)) == []


def _serve_sample(
    sample: str, serve: Callable[[Flask], LiveServer], **config: Any
) -> tuple[dict[str, Any], str]:
    """*sample* run in a namespace with ``app`` (*config* set) and Flask's names."""
    app = Flask(f"sample_{next(_names)}")
    app.config.update(TESTING=True, **config)
    namespace: dict[str, Any] = {"app": app, "EventStream": EventStream}
    exec(sample, namespace)  # noqa: S102 - the documentation's own code
    return namespace, serve(app).url


def test_quickstart_clock_streams_the_time(
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    namespace: dict[str, Any] = {"__name__": "quickstart_clock"}
    exec(code_block("quickstart.md", "python", "PAGE = "), namespace)  # noqa: S102
    exec(code_block("quickstart.md", "python", "def ticks():"), namespace)  # noqa: S102
    url = serve(namespace["app"]).url
    stream = open_stream(f"{url}/clock", timeout=10)
    first, second = stream.read_events(2, timeout=10)
    for event in (first, second):
        assert re.fullmatch(r"\d\d:\d\d:\d\d", event.data), event.data


def test_configuration_metrics_sample_serves_the_metrics(
    serve: Callable[[Flask], LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    sample = code_block("configuration.md", "python", "make_wsgi_app")
    namespace, url = _serve_sample(sample, serve)
    open_stream(f"{url}/stream/news").read_until(lambda s: len(s.raw) > 0)
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert re.search(r"^eventstream_open_streams [1-9]", text, re.M), text


def test_security_jwt_sample_mints_a_token_the_app_accepts(
    app: Flask,
) -> None:
    key = "a-secret-of-at-least-32-bytes-for-hs256"
    app.config["EVENTSTREAM_JWT_KEY"] = key
    EventStream(app)
    namespace: dict[str, Any] = {"key": key}
    exec(code_block("security.md", "python", "jwt.encode("), namespace)  # noqa: S102
    client = app.test_client()

    def status(channel: str, token: str) -> int:
        with client.get(f"/stream/{channel}?token={token}", buffered=False) as r:
            return r.status_code

    assert status("user:42", namespace["token"]) == 200
    assert status("user:43", namespace["token"]) == 403
    # The comment: {"channels": [...]}; "*" or ["*"] grants every channel.
    jwt, time = namespace["jwt"], namespace["time"]
    for channels, granted in (
        (["user:42"], "user:42"),
        ("*", "user:43"),
        (["*"], "anything"),
    ):
        token = jwt.encode(
            {"exp": int(time.time()) + 600, "channels": channels}, key, "HS256"
        )
        assert status(granted, token) == 200, channels


def test_security_cors_sample_lets_the_listed_origin_read_with_credentials(
    app: Flask,
) -> None:
    exec(code_block("security.md", "python", "EVENTSTREAM_CORS_ORIGINS"), {"app": app})  # noqa: S102
    EventStream(app)
    client = app.test_client()
    for origin, allowed in (
        ("https://app.example.com", True),
        ("https://evil.example", False),
    ):
        with client.get(
            "/stream/news", headers={"Origin": origin}, buffered=False
        ) as response:
            headers = response.headers
        assert (headers.get("Access-Control-Allow-Origin") == origin) is allowed
        assert (headers.get("Access-Control-Allow-Credentials") == "true") is allowed


class User:
    """A Flask-Login user: the id is all the samples use."""

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, id: int) -> None:
        self.id = id

    def get_id(self) -> str:
        return str(self.id)


def login_app(**templates: str) -> tuple[Flask, dict[str, Any]]:
    """An app with Flask-Login (``POST /login/<id>``) and the names samples use."""
    import flask_login  # the test dependency group: a failure, never a skip
    from flask import render_template
    from jinja2 import DictLoader

    app = Flask(f"login_{next(_names)}")
    app.config.update(TESTING=True, SECRET_KEY="test", EVENTSTREAM_HEARTBEAT=0.5)
    app.jinja_loader = DictLoader(templates)
    manager = flask_login.LoginManager(app)
    manager.user_loader(lambda user_id: User(int(user_id)))

    @app.post("/login/<int:user_id>")
    def login(user_id: int) -> str:
        flask_login.login_user(User(user_id))
        return "ok"

    namespace: dict[str, Any] = {
        "app": app,
        "events": EventStream(app),
        "current_user": flask_login.current_user,
        "login_required": flask_login.login_required,
        "render_template": render_template,
    }
    return app, namespace


def test_security_authorization_hook_sample_decides_per_user() -> None:
    app, namespace = login_app()
    exec(code_block("security.md", "python", "def may_subscribe"), namespace)  # noqa: S102
    client = app.test_client()

    def status(channel: str) -> int:
        with client.get(f"/stream/{channel}", buffered=False) as response:
            return response.status_code

    assert [status(c) for c in ("news", "chat", "user:1")] == [200, 200, 403]
    client.post("/login/1")
    assert [status(c) for c in ("user:1", "user:2", "other")] == [200, 403, 403]


def test_security_token_sample_renders_a_url_that_streams() -> None:
    app, namespace = login_app(**{"dashboard.html": "{{ stream_url }}"})
    exec(code_block("security.md", "python", "def dashboard():"), namespace)  # noqa: S102
    client = app.test_client()
    assert client.get("/dashboard").status_code == 401  # login_required
    client.post("/login/7")
    url = html.unescape(client.get("/dashboard").get_data(as_text=True))
    assert "token=" in url and "user%3A7" in url, url
    client.delete_cookie("session")  # the token alone lets the stream in
    with client.get(url, buffered=False) as response:
        assert response.status_code == 200
    widened = url.replace("user%3A7", "user%3A8")
    with client.get(widened, buffered=False) as response:
        assert response.status_code == 403


def test_migration_import_line_gives_the_flask_sse_blueprint() -> None:
    namespace: dict[str, Any] = {}
    exec(code_block("migration.md", "python", "# was: from flask_sse"), namespace)  # noqa: S102
    assert namespace["sse"].name == "sse"


def test_clients_comment_filter_skips_only_what_a_comment_becomes(
    live: str, open_stream: Callable[..., StreamClient], app: Flask, events: EventStream
) -> None:
    """The handler of docs/clients.md, in Node; and the premise it relies on:
    this library sends no event with empty data on its own."""
    if shutil.which("node") is None:
        missing("node")
    handler = code_block("clients.md", "js", "onmessage(event)")
    assert "  ...\n" in handler
    script = (
        "const seen = [];\n"
        f"const handlers = {{\n{handler.replace('  ...', '  seen.push(event);')}}};\n"
        'for (const [event, data] of [["", ""], ["", "x"], ["ping", ""]])\n'
        "  handlers.onmessage({event, data});\n"
        "console.log(JSON.stringify(seen));\n"
    )
    done = subprocess.run(
        ["node", "-e", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"event": "", "data": "x"},
        {"event": "ping", "data": ""},
    ]
    stream = open_stream(f"{live}/stream/news")
    stream.read_until(lambda s: s.raw.count(b":") >= 3, timeout=5)  # heartbeats
    with app.app_context():
        events.publish("x", channel="news")
    stream.read_events(1)
    blocks = [block for block in bytes(stream.raw).split(b"\n\n") if block]
    for block in blocks:
        fields = [line for line in block.split(b"\n") if not line.startswith(b":")]
        assert fields == [] or any(
            line.startswith(b"data: ") and len(line) > 6 for line in fields
        ), block
