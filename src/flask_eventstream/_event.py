"""The :class:`Event` value object and its exact wire form.

Follows the WHATWG HTML standard, "Server-sent events" (rules cited by their codes
in ``docs/protocol.md``: F = format, S = server duties). Knows nothing of Flask or
brokers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .exceptions import InvalidEvent

__all__ = ["Event", "encode_comment", "split_lines"]

#: The only line terminators of the format (F5): CRLF, CR, LF. Never
#: ``str.splitlines()``, which also splits on U+2028, U+0085, \v, \f and more (S4).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
#: Largest ``retry`` written: browsers hold it in 64 bits and ignore larger values.
MAX_RETRY = 2**64 - 1
_CR_OR_LF = re.compile(r"[\r\n]")


def split_lines(text: str) -> list[str]:
    """Split *text* on CRLF, CR and LF only, keeping a trailing empty line.

    ``"a\\n"`` gives ``["a", ""]`` so that the parser, which joins data lines with LF,
    gives back ``"a\\n"`` (S4).
    """
    return _LINE_BREAK.split(text)


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event, validated on construction so a bad one cannot exist.

    :param data: the payload; any string. Line breaks (CRLF, CR, LF) are written as
        several ``data:`` lines and come back from a conforming parser as LF (S4).
    :param event: the event type; ``None`` (or ``""``) means ``message`` on the client.
        Must not hold CR or LF (S6).
    :param id: the event id the browser sends back as ``Last-Event-ID``. Must not hold
        CR, LF (S7) or NUL (F16: the browser would ignore the whole field). ``""``
        resets the browser's last event id.
    :param retry: reconnection time in milliseconds, a non-negative ``int`` (S8).
    :raises InvalidEvent: naming the field at fault.
    """

    data: str = ""
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    _wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, str):
            raise InvalidEvent("data", f"must be str, got {type(self.data).__name__}")
        if self.event is not None:
            _check_line("event", self.event)
        if self.id is not None:
            _check_line("id", self.id)
            if "\0" in self.id:
                raise InvalidEvent("id", "must not contain NUL (browsers ignore it)")
        if self.retry is not None and (
            type(self.retry) is not int or not 0 <= self.retry <= MAX_RETRY
        ):
            too_big = type(self.retry) is int and self.retry > MAX_RETRY
            got = "a larger int" if too_big else repr(self.retry)
            raise InvalidEvent(
                "retry", f"must be an int of milliseconds from 0 to 2**64-1, got {got}"
            )
        # Encoded once, here: a broker hands the same bytes to every subscriber.
        object.__setattr__(self, "_wire", self._encode())

    def encode(self) -> bytes:
        """Return the exact wire bytes (computed once, when the event was made)."""
        return self._wire

    def _encode(self) -> bytes:
        """Return the exact UTF-8 bytes of this event, blank line included (S3).

        Fields go in the order ``event``, ``id``, ``retry``, ``data`` so that the
        browser has the id before the event fires. Every ``data`` line is written as
        ``data: <line>`` with one space, so leading spaces survive (S5); empty data
        still writes one ``data:`` line so the event fires (F20).
        """
        parts: list[str] = []
        if self.event:
            parts.append(f"event: {self.event}\n")
        if self.id is not None:
            parts.append(f"id: {self.id}\n")
        if self.retry is not None:
            parts.append(f"retry: {self.retry}\n")
        for line in split_lines(self.data):
            parts.append(f"data: {line}\n")
        parts.append("\n")
        try:
            return "".join(parts).encode("utf-8")
        except UnicodeEncodeError:
            bad = next(
                f for f in ("event", "id", "data") if _unencodable(getattr(self, f))
            )
            raise InvalidEvent(
                bad, "holds a lone surrogate, which UTF-8 cannot encode (S2)"
            ) from None


def with_id(event: Event, id: str) -> Event:
    """*event* (which has no id) with the *id* a broker gave it: the id line put
    into its wire bytes, nothing validated or encoded again.

    For brokers only: *id* must be one the broker made (ASCII digits and ``-``),
    never input from outside.
    """
    wire = event._wire
    line = f"id: {id}\n".encode()
    if event.event:  # the id line goes after the event line (see _encode)
        head = wire.index(b"\n") + 1
        wire = wire[:head] + line + wire[head:]
    else:
        wire = line + wire
    made = object.__new__(Event)
    for name, value in (
        ("data", event.data),
        ("event", event.event),
        ("id", id),
        ("retry", event.retry),
        ("_wire", wire),
    ):
        object.__setattr__(made, name, value)
    return made


def _check_line(field: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidEvent(field, f"must be str, got {type(value).__name__}")
    if _CR_OR_LF.search(value):
        raise InvalidEvent(field, "must not contain CR or LF (it would inject fields)")


def _unencodable(value: str | None) -> bool:
    try:
        (value or "").encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def encode_comment(text: str = "") -> bytes:
    """Return a comment block (S9): ``: text`` and a blank line. Fires nothing.

    Used for heartbeats and for notes to a reader of the raw stream.

    :raises InvalidEvent: if *text* holds CR or LF, or a lone surrogate.
    """
    _check_line("comment", text)
    if _unencodable(text):
        raise InvalidEvent(
            "comment", "holds a lone surrogate, which UTF-8 cannot encode (S2)"
        )
    return f": {text}\n\n".encode() if text else b":\n\n"
