"""``flask eventstream ...``: publish, watch and count events from a shell.

Installed as a ``flask.commands`` entry point, so every app's ``flask`` command has
it once flask-eventstream is installed::

    flask --app chat eventstream publish chat "Hello" --event greeting
    flask eventstream tail http://127.0.0.1:5000/stream/chat
    flask --app chat eventstream stats

``publish`` and ``stats`` load the app and act on its broker, so across processes
they need the Redis broker: with the memory broker a CLI process reaches only
the subscribers of its own process (none). With Redis, ``stats`` adds up the
subscribers per channel of every process that shares the app's Redis and key
prefix. ``tail`` needs no app, only a URL and the ``client`` extra.
"""

from __future__ import annotations

import json
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from ._extension import EventStream
from ._settings import AppState, app_state
from .brokers import MemoryBroker
from .exceptions import ClientError, EventStreamError

__all__ = ["eventstream"]

eventstream = AppGroup(
    "eventstream", help="Server-Sent Events: publish, tail a stream, show subscribers."
)


@eventstream.command("publish")
@click.argument("channel")
@click.argument("data")
@click.option("--event", "-e", "event_type", help="The event type (default: message).")
@click.option("--id", "event_id", help="The event id (default: one from the broker).")
@click.option("--retry", type=click.IntRange(min=0), help="Reconnection time in ms.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="DATA is JSON: send it through the app's JSON provider.",
)
def publish_command(
    channel: str,
    data: str,
    event_type: str | None,
    event_id: str | None,
    retry: int | None,
    as_json: bool,
) -> None:
    """Publish DATA to CHANNEL; print the event's id."""
    payload: Any = data
    if as_json:
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA") from None
    state = _require_state()
    if isinstance(state.broker, MemoryBroker):
        click.echo(
            "warning: the memory broker reaches only subscribers of this process; "
            "set EVENTSTREAM_BROKER_URL to a Redis URL to reach a running server",
            err=True,
        )
    try:
        # publish() acts on current_app's state: any EventStream object will do.
        sent = EventStream().publish(
            payload, event=event_type, id=event_id, retry=retry, channel=channel
        )
    except EventStreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(sent.id)


@eventstream.command("tail", with_appcontext=False)
@click.argument("url")
@click.option("--last-event-id", default="", help="Resume after this event id.")
@click.option(
    "--count", "-n", type=click.IntRange(min=1), help="Stop after this many events."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object per event."
)
@click.option(
    "--heartbeat",
    type=float,
    default=15.0,
    show_default=True,
    help="The server's heartbeat, in seconds: twice it without a byte means a "
    "dead connection.",
)
@click.option(
    "--header", "-H", "headers", multiple=True, help="A request header, 'Name: value'."
)
def tail_command(
    url: str,
    last_event_id: str,
    count: int | None,
    as_json: bool,
    heartbeat: float,
    headers: tuple[str, ...],
) -> None:
    """Print the events of the stream at URL as they come, reconnecting as needed."""
    try:
        from .client import EventSource
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    extra = dict(_parse_header(header) for header in headers)
    received = 0
    try:
        with EventSource(
            url, last_event_id=last_event_id, headers=extra, heartbeat=heartbeat
        ) as source:
            for event in source:
                if as_json:
                    line = {"event": event.event, "id": event.id, "data": event.data}
                    click.echo(json.dumps(line, ensure_ascii=False))
                else:
                    click.echo(event.encode().decode(), nl=False)
                received += 1
                if count is not None and received >= count:
                    break
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None


@eventstream.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def stats_command(as_json: bool) -> None:
    """Show subscribers per channel in every process sharing the app's broker
    (only this one with the memory broker), and this process's open streams."""
    state = _require_state()
    try:
        channels = state.broker.cluster_subscriber_counts()
    except EventStreamError as exc:
        raise click.ClickException(str(exc)) from None
    shared = not isinstance(state.broker, MemoryBroker)
    stats = {
        "broker": type(state.broker).__name__,
        "channels_of": "all processes" if shared else "this process",
        "channels": channels,
        "open_streams": state.streams.open,
        "subscribers": state.broker.subscriber_count(),
    }
    if as_json:
        click.echo(json.dumps(stats, indent=2, sort_keys=True))
        return
    click.echo(f"broker: {stats['broker']}")
    click.echo(f"open streams in this process: {stats['open_streams']}")
    click.echo(f"subscribers in this process: {stats['subscribers']}")
    click.echo(f"subscribers per channel, {stats['channels_of']}:")
    for name, subscribers in sorted(channels.items()):
        click.echo(f"  {name}\t{subscribers}")


def _require_state() -> AppState:
    try:
        return app_state(current_app)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


def _parse_header(header: str) -> tuple[str, str]:
    name, colon, value = header.partition(":")
    if not colon or not name.strip():
        raise click.BadParameter(f"{header!r} is not 'Name: value'", param_hint="-H")
    return name.strip(), value.strip()
