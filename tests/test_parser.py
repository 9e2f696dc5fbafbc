"""EventParser against the WHATWG standard and web-platform-tests' eventsource tests.

Cases cite the rules of ``docs/protocol.md`` (F = format, D = where suites disagree) and
the WPT file they come from. Every table case is also fed byte by byte and cut in two
at every position: chunk boundaries must never change the result (F5, F3).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_eventstream import Event, EventParser, InvalidLastEventId

from .strategies import chunkings, stream_like_bytes, valid_events

#: One parsed event as a user sees it: (type, data, id).
Seen = tuple[str, str, str]


class Case(NamedTuple):
    stream: bytes
    events: list[Seen]
    last_event_id: str = ""
    retry: int | None = None
    seed: str = ""


def wpt(message: str, *, newline: bool = True) -> bytes:
    """The body WPT's ``resources/message.py`` sends: the message, ``\\n\\n`` unless
    ``newline=none``, then ``\\n``."""
    return (message + ("\n\n" if newline else "") + "\n").encode()


def seen(events: Iterable[Event]) -> list[Seen]:
    events = list(events)
    # A parsed event never carries retry: it is stream state (F17), on the parser.
    assert all(event.retry is None for event in events)
    return [(e.event or "", e.data, e.id or "") for e in events]


def parse(chunks: Iterable[bytes], seed: str = "") -> tuple[list[Seen], EventParser]:
    parser = EventParser(seed)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    return seen(events), parser


def whole(stream: bytes) -> list[bytes]:
    return [stream]


def byte_by_byte(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def all_two_chunk_splits(stream: bytes) -> Iterable[list[bytes]]:
    step = max(1, len(stream) // 200)  # keeps the 2 KiB comment case quick
    return ([stream[:i], stream[i:]] for i in range(0, len(stream) + 1, step))


LONG = "x" * 2048

WPT_CASES = [
    pytest.param(
        Case(
            wpt("\ufeffdata:1\n\n\ufeffdata:2\n\ndata:3"),
            [("message", "1", ""), ("message", "3", "")],
        ),
        id="wpt-format-bom-F3-second-bom-is-a-name-char",
    ),
    pytest.param(
        Case(
            wpt("\ufeff\ufeffdata:1\n\ndata:2\n\ndata:3"),
            [("message", "2", ""), ("message", "3", "")],
        ),
        id="wpt-format-bom-2-F3-only-one-bom-stripped",
    ),
    pytest.param(
        Case(
            wpt(
                "data:1\r:\0\n:\r\ndata:2\n:"
                + LONG
                + "\rdata:3\n:data:fail\r:"
                + LONG
                + "\ndata:4\n",
                newline=False,
            ),
            [("message", "1\n2\n3\n4", "")],
        ),
        id="wpt-format-comments-F10",
    ),
    pytest.param(
        Case(
            wpt("retry:1000\ndata:test1\n\nid:test\ndata:test2", newline=False),
            [("message", "test1", "")],
            retry=1000,
        ),
        id="wpt-format-data-before-final-empty-line-F25",
    ),
    pytest.param(
        Case(
            wpt("data:\n\ndata\ndata\n\ndata:test"),
            [("message", "", ""), ("message", "\n", ""), ("message", "test", "")],
        ),
        id="wpt-format-field-data-F12-F15-F21",
    ),
    pytest.param(
        Case(
            wpt("event:test\ndata:x\n\ndata:x"),
            [("test", "x", ""), ("message", "x", "")],
        ),
        id="wpt-format-field-event-F14-F23",
    ),
    pytest.param(
        Case(wpt("event: \ndata:data"), [("message", "data", "")]),
        id="wpt-format-field-event-empty-F22",
    ),
    pytest.param(
        Case(
            b"id: \xe2\x80\xa6\nretry: 200\ndata: hello\n\n",
            [("message", "hello", "…")],
            "…",
            200,
        ),
        id="wpt-format-field-id-first-stream-F16-F19",
    ),
    pytest.param(
        Case(b"data: \xe2\x80\xa6\n\n", [("message", "…", "…")], "…", seed="…"),
        id="wpt-format-field-id-reconnected-stream-D3",
    ),
    pytest.param(
        Case(
            b"id: \0\0\nretry: 200\ndata: hello\n\n",
            [("message", "hello", "")],
            retry=200,
        ),
        id="wpt-format-field-id-null-F16-D2",
    ),
    pytest.param(
        Case(
            b"id: 1\ndata: 1\n\ndata:2\n\n",
            [("message", "1", "1"), ("message", "2", "1")],
            "1",
        ),
        id="wpt-format-field-id-3-persists-F19",
    ),
    pytest.param(
        Case(
            b"id: 1\ndata: 1\n\nid: 2\ndata:2\n\ndata:3\n\n",
            [("message", "1", "1"), ("message", "2", "2"), ("message", "3", "2")],
            "2",
        ),
        id="wpt-format-field-id-3-changes-and-persists-F19",
    ),
    pytest.param(
        Case(
            b"id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n",
            [("message", "1", "1"), ("message", "2", ""), ("message", "3", "")],
        ),
        id="wpt-format-field-id-3-resets-F16",
    ),
    pytest.param(
        Case(
            wpt(
                "data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\nda-ta:3\rdata_5"
                "\ndata:3\rdata:\r\n data:32\ndata:4\n",
                newline=False,
            ),
            [("message", "\0\n 2\n1\n3\n\n4", "")],
        ),
        id="wpt-format-field-parsing-F11-F13",
    ),
    pytest.param(
        Case(wpt("retry:02000\ndata:x"), [("message", "x", "")], retry=2000),
        id="wpt-format-field-retry-F17-leading-zero",
    ),
    pytest.param(
        Case(
            wpt("retry:2000\nretry:1000x\ndata:x"), [("message", "x", "")], retry=2000
        ),
        id="wpt-format-field-retry-bogus-F17",
    ),
    pytest.param(
        Case(wpt("retry\ndata:test"), [("message", "test", "")]),
        id="wpt-format-field-retry-empty-F17-D7",
    ),
    pytest.param(
        Case(
            wpt(
                "data:test\n data\ndata\nfoobar:xxx\njustsometext\n:thisisacommentyay"
                "\ndata:test"
            ),
            [("message", "test\n\ntest", "")],
        ),
        id="wpt-format-field-unknown-F18",
    ),
    pytest.param(
        Case(
            wpt("data:\ttest\rdata: \ndata:test"), [("message", "\ttest\n\ntest", "")]
        ),
        id="wpt-format-leading-space-F11",
    ),
    pytest.param(
        Case(
            wpt("data:test\r\ndata\ndata:test\r\n\r", newline=False),
            [("message", "test\n\ntest", "")],
        ),
        id="wpt-format-newlines-F5",
    ),
    pytest.param(
        Case(wpt("data:\0\n\n"), [("message", "\0", "")]),
        id="wpt-format-null-character-F4",
    ),
    pytest.param(
        Case(b"data:ok\xe2\x80\xa6\n\n\n", [("message", "ok…", "")]),
        id="wpt-format-utf-8-F2",
    ),
]

SPEC_CASES = [
    pytest.param(
        Case(b"data: YHOO\ndata: +2\ndata: 10\n\n", [("message", "YHOO\n+2\n10", "")]),
        id="spec-example-three-data-lines-F15",
    ),
    pytest.param(
        Case(
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
            b"data:  third event\n",
            [("message", "first event", "1"), ("message", "second event", "")],
        ),
        id="spec-example-id-reset-and-unterminated-F12-F25",
    ),
    pytest.param(
        Case(
            b"data\n\ndata\ndata\n\ndata:", [("message", "", ""), ("message", "\n", "")]
        ),
        id="spec-example-empty-data-F12-F20",
    ),
    pytest.param(
        Case(
            b"data:test\n\ndata: test\n\n",
            [("message", "test", ""), ("message", "test", "")],
        ),
        id="spec-space-after-colon-F11-D11",
    ),
    pytest.param(
        Case(
            b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\n",
            [("add", "73857293", ""), ("remove", "2153", "")],
        ),
        id="spec-example-event-types-F14",
    ),
]

FORMAT_CASES = [
    # F5 line ends
    pytest.param(
        Case(b"data:a\r\rdata:b\n\n", [("message", "a", ""), ("message", "b", "")]),
        id="F5-cr-cr-is-two-line-ends",
    ),
    pytest.param(
        Case(b"data:a\n\rdata:b\r\n\r\n", [("message", "a", ""), ("message", "b", "")]),
        id="F5-lf-then-cr-is-two-line-ends",
    ),
    pytest.param(
        Case(b"data:a\r\n\r\n", [("message", "a", "")]), id="F5-crlf-blank-line"
    ),
    pytest.param(
        Case(b"data:a\r\r", [("message", "a", "")]), id="F5-cr-at-eof-is-a-terminator"
    ),
    pytest.param(
        Case(b"data:a\n\n\n\n\r\n", [("message", "a", "")]),
        id="F9-extra-blank-lines-fire-nothing",
    ),
    pytest.param(
        Case(
            "data: a\u2028b\x85c\x0bd\x0ce\x1cf\u2029g\n\n".encode(),
            [("message", "a\u2028b\x85c\x0bd\x0ce\x1cf\u2029g", "")],
        ),
        id="F5-only-cr-lf-end-lines-not-unicode-breaks",
    ),
    # F3 BOM and decoding
    pytest.param(
        Case(b"\xef\xbb\xbfdata:1\n\n", [("message", "1", "")]),
        id="F3-leading-bom-stripped",
    ),
    pytest.param(
        Case(b"data:1\n\n\xef\xbb\xbfdata:2\n\n", [("message", "1", "")]),
        id="F3-bom-later-is-a-name-char",
    ),
    pytest.param(
        Case(b"data:\xef\xbb\xbf1\n\n", [("message", "\ufeff1", "")]),
        id="F3-bom-inside-value-kept",
    ),
    pytest.param(
        Case(b"\xef\xbb\xbf\n\xef\xbb\xbfdata:1\n\n", []),
        id="F3-bom-after-blank-line-not-stripped",
    ),
    pytest.param(
        Case(b"data:\xff\xfe\n\n", [("message", "\ufffd\ufffd", "")]),
        id="F3-invalid-bytes-replaced",
    ),
    pytest.param(
        Case(b"data:\xf0\x9f\x98\n\n", [("message", "\ufffd", "")]),
        id="F3-truncated-sequence-one-replacement",
    ),
    pytest.param(
        Case(b"data:\xed\xa0\x80\n\n", [("message", "\ufffd" * 3, "")]),
        id="F3-encoded-surrogate-replaced",
    ),
    pytest.param(
        Case(b"data:\xc0\xaf\n\n", [("message", "\ufffd\ufffd", "")]),
        id="F3-overlong-replaced",
    ),
    pytest.param(
        Case(b"data:\xe0\x80x\n\n", [("message", "\ufffd\ufffdx", "")]),
        id="F3-maximal-subpart-replacement",
    ),
    pytest.param(
        Case(b"data:ok\n\ndata:\xf0\x9f", [("message", "ok", "")]),
        id="F3-F25-truncated-at-eof-discarded",
    ),
    pytest.param(
        Case("data:é…😀\n\n".encode(), [("message", "é…😀", "")]), id="F2-multibyte"
    ),
    # F10-F13 lines and fields
    pytest.param(
        Case(b":\n:comment\n\n", []), id="F10-comment-only-block-fires-nothing"
    ),
    pytest.param(
        Case(b"data:x\n \ndata:y\n\n", [("message", "x\ny", "")]),
        id="F12-line-of-spaces-is-not-blank",
    ),
    pytest.param(
        Case(b"data:a:b: c\n\n", [("message", "a:b: c", "")]),
        id="F11-first-colon-splits",
    ),
    pytest.param(
        Case(b"data:  x\n\n", [("message", " x", "")]), id="F11-one-space-removed-only"
    ),
    pytest.param(
        Case(b"data:\tx\n\n", [("message", "\tx", "")]), id="F11-tab-not-removed"
    ),
    pytest.param(
        Case(b"data: \n\n", [("message", "", "")]), id="F11-single-space-value-is-empty"
    ),
    pytest.param(
        Case(b"data:x \n\n", [("message", "x ", "")]), id="F11-trailing-space-kept"
    ),
    pytest.param(Case(b"data\n\n", [("message", "", "")]), id="F12-data-without-colon"),
    pytest.param(
        Case(b"Data:x\nDATA:x\ndata :x\n data:x\n\n", []), id="F13-data-case-and-spaces"
    ),
    pytest.param(
        Case(b"Event:e\nEVENT:e\ndata:x\n\n", [("message", "x", "")]),
        id="F13-event-case",
    ),
    pytest.param(
        Case(b"ID:1\nId:1\ndata:x\n\n", [("message", "x", "")]), id="F13-id-case"
    ),
    pytest.param(
        Case(b"Retry:1\nRETRY:1\ndata:x\n\n", [("message", "x", "")]),
        id="F13-retry-case",
    ),
    # F14 event
    pytest.param(
        Case(b"event:a\nevent:b\ndata:x\n\n", [("b", "x", "")]),
        id="F14-last-event-wins",
    ),
    pytest.param(
        Case(b"event:a\n\ndata:x\n\n", [("message", "x", "")]),
        id="F20-type-reset-without-data",
    ),
    pytest.param(
        Case(b"event\ndata:x\n\n", [("message", "x", "")]), id="F14-event-without-colon"
    ),
    pytest.param(
        Case(b"event:  sp:ace \ndata:x\n\n", [(" sp:ace ", "x", "")]),
        id="F14-type-kept-verbatim",
    ),
    pytest.param(
        Case(b"event:message\ndata:x\n\n", [("message", "x", "")]),
        id="F14-explicit-message",
    ),
    # F16 id
    pytest.param(
        Case(
            b"id: 1\ndata:a\n\nid: 2\0\ndata:b\n\n",
            [("message", "a", "1"), ("message", "b", "1")],
            "1",
        ),
        id="F16-id-with-nul-ignored-buffer-kept",
    ),
    pytest.param(
        Case(b"id:\0\ndata:a\n\n", [("message", "a", "")]), id="F16-nul-only-id-ignored"
    ),
    pytest.param(
        Case(b"id:1\nid\ndata:a\n\n", [("message", "a", "")]),
        id="F16-id-without-colon-resets",
    ),
    pytest.param(
        Case(b"id: 1\nid: 2\ndata:a\n\n", [("message", "a", "2")], "2"),
        id="F16-last-id-wins",
    ),
    pytest.param(
        Case(b"id:  x \ndata:a\n\n", [("message", "a", " x ")], " x "),
        id="F16-id-kept-verbatim",
    ),
    pytest.param(
        Case(b"id: 5\n\n", [], "5"), id="F19-id-only-block-updates-last-event-id"
    ),
    pytest.param(
        Case(b"id: 5\n\ndata:x\n\n", [("message", "x", "5")], "5"),
        id="F19-id-from-data-less-block-persists",
    ),
    pytest.param(
        Case(b"id: 5\ndata:x", [], ""),
        id="F25-unterminated-id-never-reaches-last-event-id",
    ),
    pytest.param(Case(b"id: 5\ndata:x\n", [], ""), id="F25-no-blank-line-no-event"),
    pytest.param(
        Case(b"data:x\n\nid: 6\n", [("message", "x", "")], ""),
        id="F25-pending-id-discarded",
    ),
    # F17 retry
    pytest.param(Case(b"retry:0\n\n", [], retry=0), id="F17-zero"),
    pytest.param(Case(b"retry: 007\n\n", [], retry=7), id="F17-leading-zeros"),
    pytest.param(
        Case(b"retry: 99999999999999999999\n\n", [], retry=99999999999999999999),
        id="F17-big",
    ),
    pytest.param(
        Case(b"retry: 1000\nretry: 1.5\n\n", [], retry=1000), id="F17-decimal-ignored"
    ),
    pytest.param(Case(b"retry: -1\n\n", []), id="F17-sign-ignored"),
    pytest.param(Case(b"retry: +1\n\n", []), id="F17-plus-ignored"),
    pytest.param(Case(b"retry:  1\n\n", []), id="F17-extra-space-ignored"),
    pytest.param(Case(b"retry: 1 \n\n", []), id="F17-trailing-space-ignored"),
    pytest.param(Case("retry: １\n\n".encode(), []), id="F17-fullwidth-digit-ignored"),
    pytest.param(
        Case("retry: ١٢\n\n".encode(), []), id="F17-arabic-indic-digits-ignored"
    ),
    pytest.param(Case("retry: ²\n\n".encode(), []), id="F17-superscript-ignored"),
    pytest.param(Case(b"retry: 1_000\n\n", []), id="F17-underscore-ignored"),
    pytest.param(Case(b"retry: 1e3\n\n", []), id="F17-exponent-ignored"),
    pytest.param(Case(b"retry: 0x10\n\n", []), id="F17-hex-ignored"),
    pytest.param(Case(b"retry:\n\n", []), id="F17-empty-ignored-D7"),
    pytest.param(
        Case(b"retry: 500\ndata:x", [], retry=500),
        id="F17-counts-in-unterminated-block",
    ),
    # F20/F21 dispatch
    pytest.param(
        Case(b"data:a\ndata:\n\n", [("message", "a\n", "")]),
        id="F21-only-one-trailing-lf-removed",
    ),
    pytest.param(
        Case(b"data:\ndata:\n\n", [("message", "\n", "")]), id="F21-two-empty-lines"
    ),
    pytest.param(
        Case(b"event:e\nid:1\nretry:1\n\n", [], "1", 1), id="F20-no-data-no-event"
    ),
]

CHUNK_CASES = [
    pytest.param(
        [b"data:a\r", b"\ndata:b\r", b"\n\r", b"\n"],
        [("message", "a\nb", "")],
        id="F5-crlf-split-across-chunks-no-extra-dispatch",
    ),
    pytest.param(
        [b"data:a\r", b"", b"\n\r", b"\n"],
        [("message", "a", "")],
        id="F5-crlf-split-by-empty-chunk",
    ),
    pytest.param(
        [b"data:a\r", b"\xf0\x9f", b"\x98\x80\n\n"],
        [("message", "a", "")],
        id="F5-cr-then-split-utf-8-line",
    ),
    pytest.param(
        [b"data:a\r\n\r", b"\ndata:b\n\n"],
        [("message", "a", ""), ("message", "b", "")],
        id="F5-cr-dispatches-lf-skipped",
    ),
    pytest.param(
        [b"data: \xf0\x9f", b"\x98\x80\n\n"],
        [("message", "😀", "")],
        id="F3-utf-8-split-across-chunks",
    ),
    pytest.param(
        [b"data: \xe2", b"\x80", b"\xa6\n\n"],
        [("message", "…", "")],
        id="F3-utf-8-split-in-three",
    ),
    pytest.param(
        [b"\xef", b"\xbb", b"\xbfdata:1\n\n"],
        [("message", "1", "")],
        id="F3-bom-split-across-chunks",
    ),
    pytest.param(
        [b"", b"\xef\xbb\xbfdata:1\n\n"],
        [("message", "1", "")],
        id="F3-bom-after-empty-chunk",
    ),
    pytest.param(
        [b"data:1\n\n", b"\xef\xbb\xbfdata:2\n\n"],
        [("message", "1", "")],
        id="F3-bom-at-chunk-start-not-stream-start",
    ),
    pytest.param(
        [b"\xef\xbb\xbf", b"\xef\xbb\xbfdata:1\n\n"],
        [],
        id="F3-second-bom-in-next-chunk",
    ),
]


def _check(case: Case, chunks: list[bytes]) -> None:
    events, parser = parse(chunks, case.seed)
    assert events == case.events
    assert parser.last_event_id == case.last_event_id
    assert parser.retry == case.retry


ALL_CASES = WPT_CASES + SPEC_CASES + FORMAT_CASES


class TestFormat:
    """Table cases, each fed whole, byte by byte, and cut in two everywhere."""

    @pytest.mark.parametrize("case", ALL_CASES)
    def test_fed_whole(self, case: Case) -> None:
        _check(case, whole(case.stream))

    @pytest.mark.parametrize("case", ALL_CASES)
    def test_fed_byte_by_byte(self, case: Case) -> None:
        _check(case, byte_by_byte(case.stream))

    @pytest.mark.parametrize("case", ALL_CASES)
    def test_cut_in_two_anywhere(self, case: Case) -> None:
        for chunks in all_two_chunk_splits(case.stream):
            _check(case, chunks)


class TestChunks:
    """Chunk boundaries that are known traps (F5, F3)."""

    @pytest.mark.parametrize(("chunks", "expected"), CHUNK_CASES)
    @pytest.mark.parametrize(
        "refeed",
        [list, lambda c: byte_by_byte(b"".join(c))],
        ids=["as-given", "byte-by-byte"],
    )
    def test_chunks(
        self,
        chunks: list[bytes],
        expected: list[Seen],
        refeed: Callable[[list[bytes]], list[bytes]],
    ) -> None:
        assert parse(refeed(chunks))[0] == expected

    def test_events_come_out_as_soon_as_their_blank_line_arrives(self) -> None:
        """F6: each complete line is processed on arrival."""
        parser = EventParser()
        assert parser.feed(b"data: a\n") == []
        assert seen(parser.feed(b"\n")) == [("message", "a", "")]
        assert seen(parser.feed(b"data: b\r")) == []
        assert seen(parser.feed(b"\r")) == [("message", "b", "")]
        assert parser.feed(b"\n") == []  # the LF of a CRLF already seen as CR

    def test_retry_changes_when_the_line_is_read(self) -> None:
        """F17: not at dispatch."""
        parser = EventParser()
        parser.feed(b"retry: 1500\n")
        assert parser.retry == 1500

    def test_last_event_id_changes_at_the_blank_line(self) -> None:
        """F19: the id buffer reaches last_event_id only at dispatch."""
        parser = EventParser()
        parser.feed(b"id: 9\n")
        assert parser.last_event_id == ""
        parser.feed(b"\n")
        assert parser.last_event_id == "9"


class TestClose:
    """End of stream (F25) and reuse for the next connection (D3)."""

    def test_close_discards_unterminated_event(self) -> None:
        parser = EventParser()
        assert parser.feed(b"id: 3\nevent: e\ndata: x\n") == []
        assert parser.close() == []
        assert parser.last_event_id == ""

    def test_unterminated_id_does_not_leak_into_next_connection(self) -> None:
        parser = EventParser("1")
        parser.feed(b"id: 2\ndata: x\n")
        parser.close()
        assert seen(parser.feed(b"data: y\n\n")) == [("message", "y", "1")]

    def test_unterminated_type_and_data_do_not_leak(self) -> None:
        parser = EventParser()
        parser.feed(b"event: e\ndata: x\ndata: y")
        parser.close()
        assert seen(parser.feed(b"data: z\n\n")) == [("message", "z", "")]

    def test_next_connection_keeps_last_event_id_and_retry(self) -> None:
        parser = EventParser()
        parser.feed(b"retry: 10\nid: 4\ndata: a\n\n")
        parser.close()
        assert seen(parser.feed(b"data: b\n\n")) == [("message", "b", "4")]
        assert parser.retry == 10

    def test_next_connection_strips_its_own_bom(self) -> None:
        """F3: each connection is a new stream with its own leading BOM."""
        parser = EventParser()
        parser.feed(b"\xef\xbb\xbfdata: a\n\n")
        parser.close()
        assert seen(parser.feed(b"\xef\xbb\xbfdata: b\n\n")) == [("message", "b", "")]

    def test_truncated_utf_8_and_pending_cr_do_not_leak(self) -> None:
        parser = EventParser()
        parser.feed(b"data: a\r")
        parser.close()
        assert seen(parser.feed(b"\ndata: b\n\n")) == [("message", "b", "")]
        parser.feed(b"data: \xf0\x9f")
        parser.close()
        assert seen(parser.feed(b"\x98\x80\n\ndata: c\n\n")) == [("message", "c", "")]


class TestBuffered:
    def test_counts_the_unfinished_line_and_data_lines(self) -> None:
        parser = EventParser()
        assert parser.buffered == 0
        parser.feed(b"data: abc\ndata: de\nda")
        assert parser.buffered == len("abc\nde\n") + len("da")
        parser.feed(b"ta: f\n\n")  # dispatched: nothing held
        assert parser.buffered == 0

    def test_comments_and_other_fields_are_not_held(self) -> None:
        parser = EventParser()
        parser.feed(b": heartbeat\nevent: x\nid: 1\n")
        assert parser.buffered == 0


class TestSeed:
    """D3: the parser is seeded with the id it resumes from, as browsers do."""

    def test_seed_is_last_event_id_before_any_event(self) -> None:
        assert EventParser("41").last_event_id == "41"

    def test_events_without_id_carry_the_seed(self) -> None:
        assert parse([b"data: x\n\n"], "41")[0] == [("message", "x", "41")]

    def test_empty_id_resets_the_seed(self) -> None:
        events, parser = parse([b"id\ndata: x\n\n"], "41")
        assert events == [("message", "x", "")]
        assert parser.last_event_id == ""

    @pytest.mark.parametrize(
        "seed",
        ["a\nb", "a\rb", "a\0b", "\ud800"],
        ids=["lf", "cr", "nul", "lone-surrogate"],
    )
    def test_impossible_seed_is_rejected_at_once(self, seed: str) -> None:
        """No stream can set such an id (F16), so no browser would send it."""
        with pytest.raises(InvalidLastEventId, match="last_event_id"):
            EventParser(seed)

    def test_invalid_last_event_id_is_a_value_error(self) -> None:
        with pytest.raises(ValueError):
            EventParser("\0")


# --- properties -------------------------------------------------------------------

FAST = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _expected(events: list[Event]) -> list[Seen]:
    """What a conforming parser gives back for *events* sent in order."""
    out: list[Seen] = []
    last_id = ""
    for event in events:
        if event.id is not None:
            last_id = event.id
        data = event.data.replace("\r\n", "\n").replace("\r", "\n")  # S4
        out.append((event.event or "message", data, last_id))
    return out


def _last_retry(events: list[Event]) -> int | None:
    retries = [e.retry for e in events if e.retry is not None]
    return retries[-1] if retries else None


class TestRoundTrip:
    """Every valid Event survives encode -> parse (S3-S8, F5, F15, F21)."""

    @FAST
    @given(valid_events())
    def test_one_event(self, event: Event) -> None:
        events, parser = parse([event.encode()])
        assert events == _expected([event])
        assert parser.retry == event.retry
        assert parser.last_event_id == (event.id or "")

    @FAST
    @given(st.lists(valid_events(), max_size=8))
    def test_many_events_in_order(self, events: list[Event]) -> None:
        parsed, parser = parse([b"".join(e.encode() for e in events)])
        assert parsed == _expected(events)
        assert parser.retry == _last_retry(events)

    @FAST
    @given(st.lists(valid_events(), max_size=6), st.data())
    def test_any_chunking(self, events: list[Event], data: st.DataObject) -> None:
        payload = b"".join(e.encode() for e in events)
        chunks = data.draw(chunkings(payload))
        assert parse(chunks)[0] == _expected(events)


# A literal, whole-input reading of the standard, to compare the incremental parser
# with on arbitrary input: decode (F2, F3), split lines (F5), interpret (F9-F25).
_TERMINATOR = re.compile(r"\r\n|\r|\n")


def _reference(stream: bytes) -> tuple[list[Seen], str, int | None]:
    text = stream.decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = _TERMINATOR.split(text)[
        :-1
    ]  # the part after the last terminator is unfinished
    data, event_type, id_buffer, last_id, retry = "", "", "", "", None
    out: list[Seen] = []
    for line in lines:
        if line == "":
            last_id = id_buffer
            if data:
                out.append((event_type or "message", data.removesuffix("\n"), last_id))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            id_buffer = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return out, last_id, retry


class TestArbitraryInput:
    """The parser never raises, and chunking never matters, whatever the bytes."""

    @FAST
    @given(st.binary(max_size=200), st.data())
    def test_never_raises_on_random_bytes(
        self, stream: bytes, data: st.DataObject
    ) -> None:
        parse(data.draw(chunkings(stream)))

    @FAST
    @given(stream_like_bytes, st.data())
    def test_agrees_with_the_standard_read_literally(
        self, stream: bytes, data: st.DataObject
    ) -> None:
        events, parser = parse(data.draw(chunkings(stream)))
        assert (events, parser.last_event_id, parser.retry) == _reference(stream)
