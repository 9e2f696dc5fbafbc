import sys

import pytest

from flask_eventstream import InvalidChannel, validate_channel
from flask_eventstream._channels import MAX_CHANNEL_LENGTH

WHITESPACE = [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()]
CONTROLS = [chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))]


@pytest.mark.parametrize(
    "name",
    ["user:42", "room.lobby", "jobs-7f3a", "é", "日本", "c" * MAX_CHANNEL_LENGTH],
)
def test_valid_names_are_returned(name: str) -> None:
    assert validate_channel(name) == name


@pytest.mark.parametrize("bad", WHITESPACE + CONTROLS + ["/"])
def test_every_whitespace_control_and_slash_is_refused(bad: str) -> None:
    assert len(WHITESPACE) > 20  # all of Unicode's, not only ASCII's
    for name in (bad, f"a{bad}", f"{bad}b", f"a{bad}b"):
        with pytest.raises(InvalidChannel):
            validate_channel(name)


@pytest.mark.parametrize("name", ["", "c" * (MAX_CHANNEL_LENGTH + 1), 42, None])
def test_empty_long_and_non_str_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidChannel):
        validate_channel(name)
