"""Hypothesis strategies for the wire format: valid events, awkward text, chunkings."""

from __future__ import annotations

from hypothesis import strategies as st

from flask_eventstream import Event

#: Characters that trip up SSE code: the three line terminators (F5), what
#: ``str.splitlines()`` also splits on (S4), NUL (F16), a BOM (F3), the colon and
#: space of a field line (F11), and non-ASCII digits (F17).
_AWKWARD = [
    "\r",
    "\n",
    "\r\n",
    "\u2028",
    "\u2029",
    "\x85",
    "\x0b",
    "\x0c",
    "\x1c",
    "\0",
    "\ufeff",
    ":",
    " ",
    "\t",
    "data:",
    "id:",
    "\uff11",
    "é",
    "😀",
]

#: Any Unicode scalar value that UTF-8 can encode (no lone surrogates, S2).
_scalar_text = st.text(st.characters(codec="utf-8"), max_size=6)


def awkward_text(*, exclude: str = "") -> st.SearchStrategy[str]:
    """Text built from awkward pieces and arbitrary scalar values, minus *exclude*."""

    def join(parts: list[str]) -> str:
        # Drops the characters a field forbids (CR/LF in event, also NUL in id).
        return "".join(ch for ch in "".join(parts) if ch not in exclude)

    pieces = st.one_of(st.sampled_from(_AWKWARD), _scalar_text)
    return st.lists(pieces, max_size=12).map(join)


def valid_events() -> st.SearchStrategy[Event]:
    """Every kind of valid :class:`Event`: data anything; type without CR/LF (S6);
    id without CR, LF or NUL (S7); retry a non-negative int (S8)."""
    return st.builds(
        Event,
        data=awkward_text(),
        event=st.none() | awkward_text(exclude="\r\n"),
        id=st.none() | awkward_text(exclude="\r\n\0"),
        retry=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
    )


@st.composite
def chunkings(draw: st.DrawFn, payload: bytes) -> list[bytes]:
    """*payload* cut at arbitrary points (empty chunks included)."""
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(payload)), max_size=12))
    bounds = [0, *sorted(cuts), len(payload)]
    return [payload[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


#: Byte pieces that build stream-like input: field names right and wrong, the
#: terminators, a BOM, NUL, digits, and invalid or truncated UTF-8.
_STREAM_PIECES = [
    b"data",
    b"event",
    b"id",
    b"retry",
    b"Data",
    b":",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"\0",
    b"12",
    b"x",
    b"\xff",
    b"\xf0\x9f",
    b"\x98\x80",
    b"\xe2\x80\xa8",
]

stream_like_bytes = st.lists(
    st.sampled_from(_STREAM_PIECES) | st.binary(max_size=4), max_size=40
).map(b"".join)
