"""Channel names: the rules every channel name follows.

A channel name is 1 to :data:`MAX_CHANNEL_LENGTH` characters of printable text: no
control characters (C0, DEL, C1), no whitespace, no ``/`` (so ``/stream/<name>`` is
always one path segment). ``user:42``, ``room.lobby``, ``jobs-7f3a`` are fine.
Channels need not be declared: publishing to a name creates it.
"""

from __future__ import annotations

from .exceptions import InvalidChannel

__all__ = ["MAX_CHANNEL_LENGTH", "validate_channel"]

#: Longest channel name accepted, in characters.
MAX_CHANNEL_LENGTH = 128


def validate_channel(name: object) -> str:
    """Return *name* if it is a valid channel name.

    :raises InvalidChannel: saying which rule it breaks.
    """
    if not isinstance(name, str):
        raise InvalidChannel(f"channel name must be str, got {type(name).__name__}")
    if not name:
        raise InvalidChannel("channel name must not be empty")
    if len(name) > MAX_CHANNEL_LENGTH:
        raise InvalidChannel(
            f"channel name is {len(name)} characters long; at most {MAX_CHANNEL_LENGTH}"
        )
    # Every whitespace character but the space is a control or separator, which
    # isprintable() refuses; so this is "no control, no whitespace, no '/'".
    if not name.isprintable() or " " in name or "/" in name:
        raise InvalidChannel(
            f"channel name {name!r} holds whitespace, '/' or a control character"
        )
    return name
