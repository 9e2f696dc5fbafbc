"""``flask eventstream ...``: publish, tail and stats, with real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from flask_eventstream import EventStream
from flask_eventstream.cli import eventstream

from .helpers import StreamClient, wait_for

OpenStream = Callable[..., StreamClient]


class TestPublish:
    def test_publish_reaches_a_subscriber_and_prints_the_id(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        client = open_stream(f"{live}/stream/chat")
        wait_for(lambda: events.subscriber_count("chat") == 1)
        result = app.test_cli_runner().invoke(
            eventstream,
            ["publish", "chat", "hello\nworld", "--event", "greeting", "--id", "42"],
        )
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "42"
        [event] = client.read_events(1)
        assert (event.event, event.id, event.data) == ("greeting", "42", "hello\nworld")

    def test_json_data_goes_through_the_app_json_provider(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        client = open_stream(f"{live}/stream")
        wait_for(lambda: events.subscriber_count() == 1)
        result = app.test_cli_runner().invoke(
            eventstream, ["publish", "sse", '{"b": 1, "a": [true]}', "--json"]
        )
        assert result.exit_code == 0, result.output
        [event] = client.read_events(1)
        assert json.loads(event.data) == {"a": [True], "b": 1}

    def test_memory_broker_warns_that_it_reaches_this_process_only(
        self, app: Flask, events: EventStream
    ) -> None:
        result = app.test_cli_runner().invoke(eventstream, ["publish", "chat", "hi"])
        assert result.exit_code == 0
        assert "memory broker reaches only subscribers of this process" in (
            result.stderr
        )

    def test_bad_input_is_a_usage_error_not_a_traceback(
        self, app: Flask, events: EventStream
    ) -> None:
        runner = app.test_cli_runner()
        not_json = runner.invoke(eventstream, ["publish", "chat", "{", "--json"])
        assert not_json.exit_code == 2 and "not JSON" in not_json.output
        bad_id = runner.invoke(eventstream, ["publish", "chat", "x", "--id", "a\nb"])
        assert bad_id.exit_code == 1 and "id:" in bad_id.output
        bad_channel = runner.invoke(eventstream, ["publish", "", "x"])
        assert bad_channel.exit_code == 1 and "Error" in bad_channel.output

    def test_an_app_without_the_extension_gets_a_clear_error(self) -> None:
        result = Flask("bare").test_cli_runner().invoke(eventstream, ["stats"])
        assert result.exit_code == 1
        assert "not set up" in result.output


class TestTail:
    def test_tail_prints_events_in_wire_form_and_stops_after_count(
        self, app: Flask, events: EventStream, live: str
    ) -> None:
        with app.app_context():
            first = events.publish("one", id="1")
            events.publish("two\nlines", event="note", id="2")
            events.publish("three", id="3")
        result = app.test_cli_runner().invoke(
            eventstream,
            ["tail", f"{live}/stream", "--last-event-id", first.id, "--count", "2"],
        )
        assert result.exit_code == 0, result.output
        assert result.stdout == (
            "event: note\nid: 2\ndata: two\ndata: lines\n\n"
            "event: message\nid: 3\ndata: three\n\n"
        )

    def test_tail_json_lines(self, app: Flask, events: EventStream, live: str) -> None:
        with app.app_context():
            events.publish("start", id="s")
            events.publish("é", id="a")
        args = ["tail", f"{live}/stream", "-n", "1", "--json", "--last-event-id", "s"]
        result = app.test_cli_runner().invoke(eventstream, args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"event": "message", "id": "a", "data": "é"}

    def test_tail_of_something_that_is_not_a_stream_fails(
        self, app: Flask, events: EventStream, live: str
    ) -> None:
        result = app.test_cli_runner().invoke(eventstream, ["tail", f"{live}/nope"])
        assert result.exit_code == 1
        assert "404" in result.output


class TestStats:
    def test_stats_counts_subscribers_per_channel(
        self, app: Flask, events: EventStream, live: str, open_stream: OpenStream
    ) -> None:
        open_stream(f"{live}/stream?channel=a&channel=b")
        open_stream(f"{live}/stream/a")
        wait_for(lambda: events.subscriber_count("a") == 2)
        runner = app.test_cli_runner()
        result = runner.invoke(eventstream, ["stats", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {
            "broker": "MemoryBroker",
            "channels_of": "this process",
            "channels": {"a": 2, "b": 1},
            "open_streams": 2,
            "subscribers": 2,
        }
        text = runner.invoke(eventstream, ["stats"]).stdout
        assert "open streams in this process: 2" in text
        assert "subscribers per channel, this process:" in text
        assert "  a\t2" in text and "  b\t1" in text


def test_the_flask_command_has_the_group_through_the_entry_point(
    tmp_path: Path,
) -> None:
    """The real ``flask`` command finds ``eventstream`` via ``flask.commands``."""
    (tmp_path / "cliapp.py").write_text(
        textwrap.dedent(
            """
            from flask import Flask
            from flask_eventstream import EventStream

            app = Flask(__name__)
            EventStream(app)
            """
        )
    )
    flask = Path(sys.executable).with_name("flask")
    result = subprocess.run(
        [str(flask), "--app", "cliapp", "eventstream", "stats", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["subscribers"] == 0
