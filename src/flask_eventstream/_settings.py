"""An app's settings and state: the one place that reads ``EVENTSTREAM_*`` keys.

:meth:`Settings.from_config` reads and checks every key once, when the extension
is set up on an app (``docs/configuration.md`` lists them); :class:`AppState` is
what the extension keeps per app in ``app.extensions["eventstream"]``: the
settings, the broker, the open-stream count, and the bytes every stream of the
app begins with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from . import brokers
from ._bodies import HEARTBEAT
from ._channels import validate_channel
from ._cors import CorsPolicy
from ._event import Event, encode_comment
from ._jwt import JWTVerifier
from ._response import StreamLimiter
from ._sockets import client_timeout
from .brokers._fanout import BUFFER_BYTES
from .brokers._protocol import GAP_EVENT

if TYPE_CHECKING:
    from flask import Flask

#: Longest ``Last-Event-ID`` accepted by default, in bytes of UTF-8.
MAX_LAST_EVENT_ID = 256

DEFAULTS: dict[str, Any] = {
    "EVENTSTREAM_BROKER_URL": "memory://",
    "EVENTSTREAM_REDIS_PREFIX": "eventstream:",
    "EVENTSTREAM_URL_PREFIX": "/stream",
    "EVENTSTREAM_DEFAULT_CHANNEL": "sse",
    "EVENTSTREAM_HEARTBEAT": 15.0,
    "EVENTSTREAM_CLIENT_TIMEOUT": None,
    "EVENTSTREAM_HEARTBEAT_EVENT": None,
    "EVENTSTREAM_HISTORY": 1000,
    "EVENTSTREAM_BUFFER": 1000,
    "EVENTSTREAM_BUFFER_BYTES": BUFFER_BYTES,
    "EVENTSTREAM_RETRY": None,
    "EVENTSTREAM_MAX_EVENT_SIZE": 1024 * 1024,
    "EVENTSTREAM_MAX_CHANNELS": 16,
    "EVENTSTREAM_MAX_LAST_EVENT_ID": MAX_LAST_EVENT_ID,
    "EVENTSTREAM_MAX_STREAMS": 10_000,
    "EVENTSTREAM_REQUIRE_TOKEN": False,
    "EVENTSTREAM_TOKEN_MAX_AGE": 3600,
    "EVENTSTREAM_JWT_KEY": None,
    "EVENTSTREAM_JWT_ALGORITHMS": ("HS256",),
    "EVENTSTREAM_CORS_ORIGINS": None,
    "EVENTSTREAM_CORS_CREDENTIALS": False,
    "EVENTSTREAM_METRICS": False,
}


@dataclass(frozen=True)
class Settings:
    """Every ``EVENTSTREAM_*`` setting of one app, read and checked."""

    broker_url: str
    broker_options: Mapping[str, Any]
    url_prefix: str | None
    default_channel: str
    heartbeat: float
    heartbeat_event: str | None
    client_timeout: float
    retry: int | None
    max_event_size: int
    max_channels: int
    max_last_event_id: int
    max_streams: int | None
    require_token: bool
    token_max_age: int
    jwt: JWTVerifier | None
    cors: CorsPolicy | None
    metrics: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Settings:
        """Read *config* (an app's), first filling in the defaults it lacks.

        :raises ValueError: for a value outside its rules (the message names it).
        """
        for key, value in DEFAULTS.items():
            config.setdefault(key, value)
        url = config["EVENTSTREAM_BROKER_URL"]
        options: dict[str, Any] = {
            "history": int(config["EVENTSTREAM_HISTORY"]),
            "buffer": int(config["EVENTSTREAM_BUFFER"]),
            "buffer_bytes": int(config["EVENTSTREAM_BUFFER_BYTES"]),
        }
        if not url.startswith("memory:"):
            options["key_prefix"] = config["EVENTSTREAM_REDIS_PREFIX"]
        heartbeat = float(config["EVENTSTREAM_HEARTBEAT"])
        jwt_key = config["EVENTSTREAM_JWT_KEY"]
        return cls(
            broker_url=url,
            broker_options=options,
            url_prefix=config["EVENTSTREAM_URL_PREFIX"],
            default_channel=validate_channel(config["EVENTSTREAM_DEFAULT_CHANNEL"]),
            heartbeat=heartbeat,
            heartbeat_event=_heartbeat_event(config["EVENTSTREAM_HEARTBEAT_EVENT"]),
            client_timeout=client_timeout(
                heartbeat, config["EVENTSTREAM_CLIENT_TIMEOUT"]
            ),
            retry=_retry(config["EVENTSTREAM_RETRY"]),
            max_event_size=int(config["EVENTSTREAM_MAX_EVENT_SIZE"]),
            max_channels=int(config["EVENTSTREAM_MAX_CHANNELS"]),
            max_last_event_id=int(config["EVENTSTREAM_MAX_LAST_EVENT_ID"]),
            max_streams=config["EVENTSTREAM_MAX_STREAMS"],
            require_token=bool(config["EVENTSTREAM_REQUIRE_TOKEN"]),
            token_max_age=int(config["EVENTSTREAM_TOKEN_MAX_AGE"]),
            jwt=(
                None
                if jwt_key is None
                else JWTVerifier(jwt_key, tuple(config["EVENTSTREAM_JWT_ALGORITHMS"]))
            ),
            cors=CorsPolicy.from_config(
                config["EVENTSTREAM_CORS_ORIGINS"],
                config["EVENTSTREAM_CORS_CREDENTIALS"],
            ),
            metrics=bool(config["EVENTSTREAM_METRICS"]),
        )


class AppState:
    """What the extension keeps for one app.

    :param settings: the app's settings.
    :param broker: its broker.
    """

    def __init__(self, settings: Settings, broker: brokers.Broker) -> None:
        self.settings = settings
        self.broker = broker
        #: The app's open streams in this process (``EVENTSTREAM_MAX_STREAMS``).
        self.streams = StreamLimiter(settings.max_streams)

    @cached_property
    def preamble(self) -> bytes:
        """First bytes of every stream: a ``retry:`` block or a comment
        (``docs/protocol.md``: S1, O1). Built once per app, not per connection."""
        if self.settings.retry is not None:
            return f"retry: {self.settings.retry}\n\n".encode()
        if self.settings.heartbeat_event is not None:
            return self.heartbeat_chunk
        return encode_comment("stream open")

    @cached_property
    def heartbeat_chunk(self) -> bytes:
        """What an idle stream writes: a comment, or the named no-op event."""
        if self.settings.heartbeat_event is None:
            return HEARTBEAT
        return Event("", event=self.settings.heartbeat_event).encode()

    @cached_property
    def cut_off_gap(self) -> bytes:
        """The gap event for a client cut off before it got any event (no id)."""
        return Event('{"last_event_id": null}', event=GAP_EVENT).encode()


def app_state(app: Flask) -> AppState:
    """*app*'s state.

    :raises RuntimeError: if the extension is not set up on *app*.
    """
    try:
        state: AppState = app.extensions["eventstream"]
    except KeyError:
        raise RuntimeError(
            "flask-eventstream is not set up on this app: call "
            "EventStream(app) or events.init_app(app) first"
        ) from None
    return state


def _heartbeat_event(value: Any) -> str | None:
    """``EVENTSTREAM_HEARTBEAT_EVENT``: an event type, never ``message`` (which
    would fire every page's ``onmessage``)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or value == "message":
        raise ValueError(
            "EVENTSTREAM_HEARTBEAT_EVENT must be an event type other than "
            f"'message' (pages ignore it unless they listen for it), got {value!r}"
        )
    Event(event=value)  # no CR or LF
    return value


def _retry(value: Any) -> int | None:
    """``EVENTSTREAM_RETRY`` checked as ``Event`` checks ``retry`` (S8)."""
    if value is not None:
        Event(retry=value)
    return value  # type: ignore[no-any-return]
