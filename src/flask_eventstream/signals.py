"""Signals sent by flask-eventstream, in the style of :mod:`flask.signals`.

Connect with blinker, as for Flask's signals; the sender is the Flask app::

    from flask_eventstream.signals import stream_opened

    @stream_opened.connect_via(app)
    def opened(app, channels, last_event_id, **extra):
        app.logger.info("stream on %s", channels)

``**extra`` keeps a receiver working when a later version sends more arguments.

One signal is sent by a broker, not an app: :data:`broker_reconnected`, whose
sender is the broker (one broker may serve several apps); connect to
``events.broker()`` or to every sender.

Receivers run synchronously in the thread that sends, so keep them short: a slow
receiver of :data:`event_published` slows every ``publish()``. Their exceptions
propagate to the sender, as with Flask's signals.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = [
    "broker_reconnected",
    "event_published",
    "stream_closed",
    "stream_opened",
    "subscriber_dropped",
]

_signals = Namespace()

#: A client's stream was accepted and subscribed, just before its first byte is
#: sent. Sent in the request context with ``channels`` (a tuple of names) and
#: ``last_event_id`` (the id it resumes from, or ``None``); ``missed`` is true when
#: that id is no longer retained (the stream starts with the gap event).
stream_opened = _signals.signal("eventstream.stream-opened")

#: A stream opened by the endpoint ended: the client went away, the subscriber was
#: dropped, or the server shut the stream. Sent by the WSGI server's ``close()`` of
#: the response (no request context) with ``channels``.
stream_closed = _signals.signal("eventstream.stream-closed")

#: ``publish()`` handed an event to the broker. Sent with ``channel`` and ``event``
#: (the :class:`~flask_eventstream.Event` as sent, with its id) in the publisher's
#: thread. Not sent when the broker refused it.
event_published = _signals.signal("eventstream.event-published")

#: A subscriber fell more than ``EVENTSTREAM_BUFFER`` events (or
#: ``EVENTSTREAM_BUFFER_BYTES`` bytes) behind and was cut off (its browser reconnects
#: and replays). Sent with ``channels``, by whichever thread was delivering, just
#: after it released the broker's lock: a receiver may publish. An exception in a
#: receiver is logged, not raised.
subscriber_dropped = _signals.signal("eventstream.subscriber-dropped")

#: A broker's connection to its server (the Redis broker's listener) was lost and
#: is back; what was published meanwhile is delivered next. The **sender is the
#: broker** (``connect_via(events.broker())``), no other arguments. Sent from the
#: listener thread; an exception in a receiver is logged, not raised. The memory
#: broker never sends it.
broker_reconnected = _signals.signal("eventstream.broker-reconnected")
