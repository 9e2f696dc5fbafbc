"""The Event value object: validation (S6-S8) and exact wire bytes (S3-S5, S9, S10)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_eventstream import Event, EventParser, InvalidEvent, encode_comment
from flask_eventstream._event import with_id

from .strategies import valid_events


class TestValidation:
    """A bad field raises :class:`InvalidEvent` naming it: a bad Event cannot exist."""

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            pytest.param({"event": "a\nb"}, "event", id="S6-event-lf"),
            pytest.param({"event": "a\rb"}, "event", id="S6-event-cr"),
            pytest.param({"event": "a\r\nb"}, "event", id="S6-event-crlf"),
            pytest.param({"event": "\n"}, "event", id="S6-event-only-lf"),
            pytest.param({"event": 1}, "event", id="S6-event-not-str"),
            pytest.param({"id": "1\n"}, "id", id="S7-id-lf"),
            pytest.param({"id": "\r1"}, "id", id="S7-id-cr"),
            pytest.param({"id": "1\0"}, "id", id="S7-id-nul"),
            pytest.param({"id": "\0"}, "id", id="S7-id-only-nul"),
            pytest.param({"id": 1}, "id", id="S7-id-not-str"),
            pytest.param({"retry": -1}, "retry", id="S8-retry-negative"),
            pytest.param({"retry": True}, "retry", id="S8-retry-bool"),
            pytest.param({"retry": False}, "retry", id="S8-retry-bool-false"),
            pytest.param({"retry": 1.0}, "retry", id="S8-retry-float"),
            pytest.param({"retry": 1.5}, "retry", id="S8-retry-float-fraction"),
            pytest.param({"retry": "1000"}, "retry", id="S8-retry-str"),
            pytest.param({"data": b"x"}, "data", id="S4-data-bytes"),
            pytest.param({"data": None}, "data", id="S4-data-none"),
            pytest.param({"data": {"a": 1}}, "data", id="S4-data-dict"),
            pytest.param({"data": 1}, "data", id="S4-data-int"),
            pytest.param({"data": "a\ud800b"}, "data", id="S2-data-lone-surrogate"),
            pytest.param({"event": "\udcff"}, "event", id="S2-event-lone-surrogate"),
            pytest.param({"id": "\udc80"}, "id", id="S2-id-lone-surrogate"),
        ],
    )
    def test_bad_field_raises_invalid_event_naming_it(
        self, kwargs: dict[str, object], field: str
    ) -> None:
        with pytest.raises(InvalidEvent) as info:
            Event(**{"data": "x", **kwargs})  # type: ignore[arg-type]
        assert info.value.field == field
        assert str(info.value).startswith(f"{field}: ")

    def test_invalid_event_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="retry"):
            Event("x", retry=-5)

    @pytest.mark.parametrize(
        "kwargs",
        [
            pytest.param({"data": "a\0b"}, id="F4-nul-in-data"),
            pytest.param({"event": "a\0b"}, id="F4-nul-in-event"),
            pytest.param({"event": ""}, id="S6-empty-event"),
            pytest.param({"event": "a:b c"}, id="S6-colon-in-event"),
            pytest.param({"id": ""}, id="S7-empty-id"),
            pytest.param({"id": " \t…"}, id="S7-unicode-id"),
            pytest.param({"retry": 0}, id="S8-retry-zero"),
            pytest.param({"retry": 2**64 - 1}, id="S8-retry-largest"),
        ],
    )
    def test_valid_edge_values_are_accepted(self, kwargs: dict[str, object]) -> None:
        Event(**kwargs)  # type: ignore[arg-type]


class TestEncode:
    """``Event.encode()`` gives exact bytes, ended by a blank line (S3)."""

    @pytest.mark.parametrize(
        ("event", "wire"),
        [
            pytest.param(Event("hi"), b"data: hi\n\n", id="S3-one-line"),
            pytest.param(Event(""), b"data: \n\n", id="S4-F20-empty-data-one-line"),
            pytest.param(Event(), b"data: \n\n", id="S4-default-data-empty"),
            pytest.param(Event("a\n"), b"data: a\ndata: \n\n", id="S4-trailing-lf"),
            pytest.param(Event("\n"), b"data: \ndata: \n\n", id="S4-only-lf"),
            pytest.param(Event("a\nb"), b"data: a\ndata: b\n\n", id="S4-split-lf"),
            pytest.param(Event("a\rb"), b"data: a\ndata: b\n\n", id="S4-split-cr"),
            pytest.param(Event("a\r\nb"), b"data: a\ndata: b\n\n", id="S4-split-crlf"),
            pytest.param(
                Event("a\n\rb"), b"data: a\ndata: \ndata: b\n\n", id="S4-lf-cr-is-two"
            ),
            pytest.param(
                Event("a\r\n\r\nb"),
                b"data: a\ndata: \ndata: b\n\n",
                id="S4-two-crlf",
            ),
            pytest.param(
                Event("a\u2028b"), "data: a\u2028b\n\n".encode(), id="S4-keeps-u2028"
            ),
            pytest.param(
                Event("a\u2029b"), "data: a\u2029b\n\n".encode(), id="S4-keeps-u2029"
            ),
            pytest.param(
                Event("a\x85b"), b"data: a\xc2\x85b\n\n", id="S4-keeps-u0085-nel"
            ),
            pytest.param(Event("a\x0bb"), b"data: a\x0bb\n\n", id="S4-keeps-vt"),
            pytest.param(Event("a\x0cb"), b"data: a\x0cb\n\n", id="S4-keeps-ff"),
            pytest.param(Event("a\x1cb"), b"data: a\x1cb\n\n", id="S4-keeps-fs"),
            pytest.param(
                Event("a\x1db\x1ec"), b"data: a\x1db\x1ec\n\n", id="S4-keeps-gs-rs"
            ),
            pytest.param(Event("  x"), b"data:   x\n\n", id="S5-leading-spaces"),
            pytest.param(Event(" "), b"data:  \n\n", id="S5-single-space"),
            pytest.param(Event("x  "), b"data: x  \n\n", id="S5-trailing-spaces"),
            pytest.param(Event("\tx"), b"data: \tx\n\n", id="S5-leading-tab"),
            pytest.param(Event(":x"), b"data: :x\n\n", id="S5-leading-colon"),
            pytest.param(Event("a\0b"), b"data: a\0b\n\n", id="F4-nul-in-data"),
            pytest.param(Event("é…😀"), "data: é…😀\n\n".encode(), id="S2-utf-8"),
            pytest.param(
                Event("\ufeffx"), b"data: \xef\xbb\xbfx\n\n", id="S2-bom-char-in-data"
            ),
            pytest.param(
                Event("x", event="update"), b"event: update\ndata: x\n\n", id="S6-event"
            ),
            pytest.param(
                Event("x", event="a:b"),
                b"event: a:b\ndata: x\n\n",
                id="S6-colon-in-event",
            ),
            pytest.param(
                Event("x", event=" sp"),
                b"event:  sp\ndata: x\n\n",
                id="S5-S6-space-event",
            ),
            pytest.param(
                Event("x", event=""), b"data: x\n\n", id="S6-empty-event-omitted"
            ),
            pytest.param(Event("x", event=None), b"data: x\n\n", id="S6-no-event"),
            pytest.param(Event("x", id="7"), b"id: 7\ndata: x\n\n", id="S7-id"),
            pytest.param(
                Event("x", id=""), b"id: \ndata: x\n\n", id="S7-empty-id-resets"
            ),
            pytest.param(
                Event("x", id=" 7"), b"id:  7\ndata: x\n\n", id="S5-S7-space-id"
            ),
            pytest.param(
                Event("x", retry=0), b"retry: 0\ndata: x\n\n", id="S8-retry-zero"
            ),
            pytest.param(
                Event("x", retry=3000), b"retry: 3000\ndata: x\n\n", id="S8-retry"
            ),
            pytest.param(
                Event("a\nb", event="e", id="i", retry=5),
                b"event: e\nid: i\nretry: 5\ndata: a\ndata: b\n\n",
                id="S10-field-order-event-id-retry-data",
            ),
        ],
    )
    def test_exact_bytes(self, event: Event, wire: bytes) -> None:
        assert event.encode() == wire

    def test_never_uses_str_splitlines(self) -> None:
        """S4: every character ``str.splitlines()`` splits on, except CR and LF,
        stays inside one data line."""
        others = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
        wire = Event(f"a{others}b").encode()
        assert wire == f"data: a{others}b\n\n".encode()

    def test_encode_is_cached(self) -> None:
        """The bytes are computed once: brokers hand the same object to every
        subscriber."""
        event = Event("x")
        assert event.encode() is event.encode()

    def test_field_names_are_lowercase(self) -> None:
        """S10: exactly ``data``, ``event``, ``id``, ``retry``."""
        wire = Event("d", event="e", id="i", retry=1).encode()
        names = [line.split(b":", 1)[0] for line in wire.split(b"\n") if line]
        assert names == [b"event", b"id", b"retry", b"data"]


class TestEncodeComment:
    """``encode_comment`` gives a comment block that fires nothing (S9)."""

    @pytest.mark.parametrize(
        ("text", "wire"),
        [
            pytest.param("", b":\n\n", id="S9-empty"),
            pytest.param("heartbeat", b": heartbeat\n\n", id="S9-text"),
            pytest.param("a: b", b": a: b\n\n", id="S9-colon-inside"),
            pytest.param("…", ": …\n\n".encode(), id="S9-utf-8"),
            pytest.param("a\u2028b", ": a\u2028b\n\n".encode(), id="S9-keeps-u2028"),
        ],
    )
    def test_exact_bytes(self, text: str, wire: bytes) -> None:
        assert encode_comment(text) == wire

    def test_default_is_empty_comment(self) -> None:
        assert encode_comment() == b":\n\n"

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("a\nb", id="S9-lf"),
            pytest.param("a\rb", id="S9-cr"),
            pytest.param("a\r\n", id="S9-crlf"),
            pytest.param("\ud800", id="S2-lone-surrogate"),
            pytest.param(5, id="not-str"),
        ],
    )
    def test_bad_text_raises_invalid_event(self, text: str) -> None:
        with pytest.raises(InvalidEvent) as info:
            encode_comment(text)
        assert info.value.field == "comment"

    @pytest.mark.parametrize("text", ["", "heartbeat", "data: x", "id: 1"])
    def test_comment_fires_nothing_and_sets_nothing(self, text: str) -> None:
        """F10: a comment line is ignored, its blank line dispatches nothing (F20)."""
        parser = EventParser()
        assert parser.feed(encode_comment(text)) == []
        assert (parser.last_event_id, parser.retry) == ("", None)


class TestImmutability:
    """An Event is a frozen value: safe to share between threads and subscribers."""

    @pytest.mark.parametrize("name", ["data", "event", "id", "retry"])
    def test_fields_cannot_be_set(self, name: str) -> None:
        event = Event("x", event="e", id="1", retry=1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, name, "y")
        assert event.encode() == b"event: e\nid: 1\nretry: 1\ndata: x\n\n"

    def test_fields_cannot_be_deleted(self) -> None:
        event = Event("x")
        with pytest.raises(dataclasses.FrozenInstanceError):
            del event.data

    def test_no_new_attributes(self) -> None:
        event = Event("x")
        with pytest.raises((AttributeError, TypeError)):
            event.extra = 1  # type: ignore[attr-defined]

    def test_equal_events_are_equal_and_hash_alike(self) -> None:
        a, b = Event("x", id="1"), Event("x", id="1")
        assert a == b
        assert hash(a) == hash(b)
        assert a != Event("x", id="2")
        assert len({a, b}) == 1

    def test_replace_validates_and_re_encodes(self) -> None:
        event = Event("x", id="1")
        assert dataclasses.replace(event, data="y").encode() == b"id: 1\ndata: y\n\n"
        with pytest.raises(InvalidEvent, match="^id: "):
            dataclasses.replace(event, id="a\nb")

    def test_pickle_round_trip(self) -> None:
        event = Event("a\nb", event="e", id="1", retry=2)
        copy = pickle.loads(pickle.dumps(event))
        assert copy == event
        assert copy.encode() == event.encode()

    def test_repr_shows_fields_not_wire(self) -> None:
        text = repr(Event("x", event="e"))
        assert "data='x'" in text and "event='e'" in text
        assert "_wire" not in text


class TestWithId:
    """A broker's id put into an event's wire bytes without encoding it again
    gives exactly the event encoded with that id."""

    @given(
        event=valid_events(),
        id=st.from_regex(r"[0-9]{1,20}(-[0-9]{1,20})?", fullmatch=True),
    )
    def test_same_as_an_event_made_with_the_id(self, event: Event, id: str) -> None:
        event = dataclasses.replace(event, id=None)
        made = with_id(event, id)
        expected = Event(event.data, event=event.event, id=id, retry=event.retry)
        assert made == expected
        assert made.encode() == expected.encode()
        assert EventParser().feed(made.encode())[-1].id == id
