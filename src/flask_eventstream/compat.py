"""A drop-in for Flask-SSE: change the import, keep the code.

::

    from flask_eventstream.compat import sse        # was: from flask_sse import sse

    app.config["REDIS_URL"] = "redis://localhost"
    app.register_blueprint(sse, url_prefix="/stream")

    sse.publish({"message": "Hello!"}, type="greeting", channel="news")
    url_for("sse.stream", channel="news")           # /stream?channel=news

What Flask-SSE code relies on works as documented there: ``sse`` is a blueprint
named ``"sse"`` with a ``stream`` view at its root (so ``@sse.before_request``
access control still applies); ``?channel=`` picks the channel, ``"sse"`` by
default; ``publish(data, type=None, id=None, retry=None, channel="sse")``
sends ``str`` data as is and anything else as JSON through the app's JSON
provider; the Redis URL is read from ``SSE_REDIS_URL``, else ``REDIS_URL``, when
first needed (not when the blueprint is registered).

Deliberate differences, each a fix or a safe default:

- With no Redis URL, Flask-SSE raises ``KeyError`` at the first stream or
  publish; here the embedded memory broker is used and a warning is logged once
  per app. That is right for one process (the dev server, one gunicorn worker);
  several worker processes need Redis to see each other's events.
  ``EVENTSTREAM_BROKER_URL``, when set, wins over both Redis settings.
- The wire format follows the standard: payloads holding U+2028, ``\\x0b`` and
  the like arrive whole; an empty payload still fires an event; a newline in
  ``type`` or ``id`` raises :class:`~flask_eventstream.InvalidEvent` instead of
  injecting fields.
- Browsers that reconnect get the events they missed (``Last-Event-ID``), and
  every event has an id. Heartbeats keep proxies from closing idle streams.
- :meth:`ServerSentEventsBlueprint.publish` returns the
  :class:`~flask_eventstream.Event` as sent, not Redis' count of receivers.
- ``sse.redis``, ``sse.messages()`` and ``flask_sse.Message`` are not provided.

Every ``EVENTSTREAM_*`` setting applies (heartbeat, history, limits, tokens),
except ``EVENTSTREAM_URL_PREFIX`` (the stream lives where the blueprint is
registered) and the ``EVENTSTREAM_CORS_*`` keys (add CORS headers to the blueprint
yourself, e.g. in an ``after_request`` handler).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, has_app_context

from ._event import Event
from ._extension import EventStream, current_or_only_app

if TYPE_CHECKING:
    from flask import Flask
    from flask.sansio.blueprints import BlueprintSetupState

__all__ = ["ServerSentEventsBlueprint", "sse"]

logger = logging.getLogger(__name__)


class ServerSentEventsBlueprint(Blueprint):
    """A blueprint that publishes and streams server-sent events, as Flask-SSE's.

    Per-app state (the broker, settings) lives in ``app.extensions``, set up on
    first use in each app the blueprint is registered on; this object keeps only
    a weak set of those apps, so that :meth:`publish` can work without an app
    context when there is exactly one.
    """

    def __init__(self, name: str, import_name: str, **options: Any) -> None:
        super().__init__(name, import_name, **options)
        self._events = EventStream()
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        # Two first requests may race to set an app up; setup runs once.
        self._setup_lock = threading.Lock()
        self.record(self._remember_app)

    def _remember_app(self, state: BlueprintSetupState) -> None:
        self._apps.add(state.app)  # type: ignore[arg-type]  # a Flask, typed App

    def publish(
        self,
        data: Any,
        type: str | None = None,
        id: Any = None,
        retry: int | None = None,
        channel: str = "sse",
    ) -> Event:
        """Publish *data* as a server-sent event on *channel*; return it as sent.

        Flask-SSE's signature and argument handling: ``str`` data is sent as is,
        anything else as JSON; an *id* that is not a string is turned into one;
        empty or zero ``type``, ``id`` and ``retry`` are left out, as Flask-SSE does.

        :raises InvalidEvent: for a ``type`` or ``id`` holding a line break.
        """
        app = self._app()
        self._set_up(app)
        options: dict[str, Any] = {
            "event": type or None,
            "id": str(id) if id else None,
            "retry": retry or None,
            "channel": channel,
        }
        if has_app_context():
            return self._events.publish(data, **options)
        with app.app_context():
            return self._events.publish(data, **options)

    def stream(self) -> Response:
        """The view that streams ``?channel=`` (default ``"sse"``) to a client.

        Unlike Flask-SSE's, it replays missed events to a client that reconnects
        with ``Last-Event-ID``, and accepts several ``?channel=`` values.
        """
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        self._set_up(app)
        return self._events._subscribe_view()

    def _app(self) -> Flask:
        return current_or_only_app(
            self._apps, f"the {self.name!r} blueprint is registered on"
        )

    def _set_up(self, app: Flask) -> None:
        """Set *app* up from its config on first use, when Flask-SSE reads it too."""
        if "eventstream" in app.extensions:
            return
        with self._setup_lock:
            if "eventstream" in app.extensions:
                return
            config = app.config
            if "EVENTSTREAM_BROKER_URL" not in config:
                url = config.get("SSE_REDIS_URL") or config.get("REDIS_URL")
                if url:
                    config["EVENTSTREAM_BROKER_URL"] = url
                else:
                    logger.warning(
                        "%s: no SSE_REDIS_URL or REDIS_URL configured; using the "
                        "in-process memory broker, so only subscribers of this "
                        "process receive events",
                        app.name,
                    )
            # The blueprint is the endpoint; the extension must not add its own.
            config["EVENTSTREAM_URL_PREFIX"] = None
            self._events.init_app(app)


#: The blueprint Flask-SSE code imports: named ``"sse"``, its :meth:`stream` view at
#: the root. ``app.register_blueprint(sse, url_prefix="/stream")``.
sse = ServerSentEventsBlueprint("sse", __name__)
sse.add_url_rule("", endpoint="stream", view_func=sse.stream)
