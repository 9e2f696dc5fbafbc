"""The incremental event-stream decoder of the WHATWG HTML standard.

"Server-sent events", *parsing an event stream* and *interpreting an event stream*,
followed to the letter (rules cited by their codes in ``docs/protocol.md``). Bytes
go in, finished :class:`~flask_eventstream.Event` objects come out; no I/O, no
Flask.

Deliberate choices where the standard leaves room:

- The parser is seeded with the last event id it is resumed from (D3): browsers and
  web-platform-tests keep ``lastEventId`` across a reconnection.
- An empty ``retry`` value is ignored, as the standard's "only ASCII digits" says (D7).
- A CR is taken as a line end when it arrives and an LF right after it is skipped,
  even across chunks (F5): this dispatches as early as possible and never twice.
"""

from __future__ import annotations

import codecs
import re

from ._event import Event
from .exceptions import InvalidEvent, InvalidLastEventId

__all__ = ["EventParser"]

_LINE_END = re.compile(r"[\r\n]")


class EventParser:
    """Decode a ``text/event-stream`` body fed in chunks of any size.

    :param last_event_id: the last event id to resume from (what the client sent as
        ``Last-Event-ID``); events without an ``id`` field carry it.
    :raises InvalidLastEventId: if *last_event_id* holds CR, LF, NUL or a lone
        surrogate: no stream can set such an id (F16), and every event dispatched
        with it would be invalid.

    Attributes, updated as the stream is read:

    ``retry``
        The reconnection time in milliseconds set by the stream, or ``None``. Changes
        as soon as a valid ``retry`` line is read (F17).
    ``last_event_id``
        The *last event ID string*: set from the id buffer at every blank line, even
        when no event fires (F19); an ``id`` in an unfinished block never reaches it
        (F25). Send it as ``Last-Event-ID`` when reconnecting.
    """

    def __init__(self, last_event_id: str = "") -> None:
        _check_seed(last_event_id)
        self.retry: int | None = None
        self.last_event_id = last_event_id
        self._id_buffer = last_event_id
        self._type = ""
        self._data: list[str] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bom_checked = False
        self._skip_lf = False
        self._line = ""

    @property
    def buffered(self) -> int:
        """Characters held for the event being read: its unfinished line and the
        data lines so far (each with its line feed). A client caps this to refuse
        a stream that never finishes an event (O11)."""
        return len(self._line) + sum(len(line) + 1 for line in self._data)

    def feed(self, chunk: bytes) -> list[Event]:
        """Decode *chunk* and return the events it completes, in order."""
        return self._feed_text(self._decoder.decode(chunk))

    def close(self) -> list[Event]:
        """End of stream: discard any unfinished event (F25) and return ``[]``.

        Any retry line already read still counts. The parser can be fed again after,
        as for a new connection (with the same last event id).
        """
        self._feed_text(self._decoder.decode(b"", final=True))
        self._decoder.reset()
        self._bom_checked = False
        self._skip_lf = False
        self._line = ""
        self._data = []
        self._type = ""
        self._id_buffer = self.last_event_id
        return []

    def _feed_text(self, text: str) -> list[Event]:
        if not text:
            return []
        if not self._bom_checked:
            # F3: one leading BOM, only at the very start of the stream.
            self._bom_checked = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._skip_lf and text[:1] == "\n":
            text = text[1:]
        self._skip_lf = False
        buffer = self._line + text
        search_from = len(self._line)  # the held part holds no line end
        start = 0
        events: list[Event] = []
        while match := _LINE_END.search(buffer, search_from):
            end = match.start()
            line = buffer[start:end]
            start = end + 1
            if buffer[end] == "\r":  # F5: CRLF, CR alone, or LF alone
                if start == len(buffer):
                    self._skip_lf = True
                elif buffer[start] == "\n":
                    start += 1
            search_from = start
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        self._line = buffer[start:]
        return events

    def _process_line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()  # F9
        if line[0] == ":":
            return None  # F10
        name, colon, value = line.partition(":")  # F11 / F12: the first colon
        if colon and value[:1] == " ":
            value = value[1:]  # exactly one space
        # F13: names are compared literally.
        if name == "data":
            self._data.append(value)  # F15
        elif name == "event":
            self._type = value  # F14
        elif name == "id":
            if "\0" not in value:  # F16
                self._id_buffer = value
        elif name == "retry":
            if value.isascii() and value.isdigit():  # F17: ASCII digits only
                try:
                    self.retry = int(value.lstrip("0") or "0")
                except ValueError:
                    # Over Python's int() digit limit (4300): no usable delay, so
                    # ignored, as Blink ignores a value that overflows 64 bits.
                    pass
        return None  # F18: other fields are ignored

    def _dispatch(self) -> Event | None:
        self.last_event_id = self._id_buffer  # F19, even when nothing fires
        data, event_type = self._data, self._type
        self._data, self._type = [], ""
        if not data:  # F20
            return None
        # F15 + F21: lines joined by LF, the final LF removed.
        return Event(
            "\n".join(data), event=event_type or "message", id=self.last_event_id
        )


def _check_seed(last_event_id: str) -> None:
    # The seed becomes the id of parsed events, so it obeys the rules of an Event id;
    # checked here so that a bad seed fails at once, not at the first dispatch.
    try:
        Event(id=last_event_id)
    except InvalidEvent as exc:
        raise InvalidLastEventId(
            f"last_event_id is not a valid event id ({exc})"
        ) from None
