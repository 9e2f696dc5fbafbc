"""The Redis broker's stream entries: their fields, ids, the publish script, and
the wire form of an entry.

An entry of ``<prefix>{<channel>}`` holds one event (fields ``d`` data, ``e`` event
type, ``i`` an id given to ``publish``, ``r`` retry), the publish's token (``t``),
and the id of the entry that was the stream's newest when it was added (``p``,
``0-0`` if none), which lets any reader prove that nothing between two entries it
read was trimmed away.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, NamedTuple, cast

from ..._event import Event
from ...exceptions import InvalidEvent
from .._protocol import GAP_EVENT

logger = logging.getLogger(__name__)

ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
#: The largest part of a stream entry id Redis can hold (an unsigned 64-bit number).
ID_PART_MAX = 2**64 - 1

# Fields of a stream entry: data, event type, explicit id, retry, publish token, and
# the id of the entry that was the stream's newest when this one was added
# (``0-0``: the stream was empty), which lets a reader prove it missed nothing.
DATA, TYPE, ID, RETRY, TOKEN, PREVIOUS = b"d", b"e", b"i", b"r", b"t", b"p"
#: How many of a stream's newest entries a publish looks through for its own token.
DEDUPE_WINDOW = 64
#: Seconds Redis remembers an ``idempotency_key`` given to ``publish``.
KEY_TTL = 3600

#: XADD with an id unique across all channels, not only within one stream: the
#: Redis clock in ms and a sequence number, both taken from the last id given out
#: (KEYS[2]; in a Redis Cluster, the last id of the channels of one hash tag, or
#: the stream's own last id when KEYS[2] is the stream) so they never go back.
#: Then a multi-channel stream resumed from one channel's id cannot skip another
#: channel's entry that got the same id. An id refused (a stream written by
#: something else) falls back to the stream's own.
#: A publish is retried once when its connection breaks; if the first attempt was
#: stored and only the reply was lost, the retry finds the attempt's random token
#: (field ``t``) among the newest ARGV[3] entries and returns that entry's id
#: instead of storing the event twice. A first attempt has no token to look for
#: (ARGV[3] is 0), unless the app gave a key: the scan costs Redis more than the
#: rest of the script. An app's own idempotency key (ARGV[4] is "1") is also
#: kept under KEYS[3] for an hour, with the entry id, so a retry much later finds it.
#: Each entry records the stream's newest id before it (field ``p``).
#: KEYS: stream, last-id key, idempotency key;
#: ARGV: maxlen, token, entries to look through, keyed, key ttl, field, value, ...
XADD = """
if redis.replicate_commands then redis.replicate_commands() end
if ARGV[4] == '1' then
    local known = redis.call('GET', KEYS[3])
    if known then return known end
end
local look = tonumber(ARGV[3])
local recent = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', math.max(look, 1))
for n = 1, math.min(look, #recent) do
    local fields = recent[n][2]
    for i = 1, #fields, 2 do
        if fields[i] == 't' and fields[i + 1] == ARGV[2] then
            return recent[n][1]
        end
    end
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local seq = 0
local last = nil
if KEYS[2] ~= KEYS[1] then last = redis.call('GET', KEYS[2]) end
if last then
    local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
    if last_ms and ms <= tonumber(last_ms) then
        ms = tonumber(last_ms)
        seq = tonumber(last_seq) + 1
    end
end
local id = string.format('%.0f-%.0f', ms, seq)
local previous = '0-0'
if recent[1] then previous = recent[1][1] end
local added = redis.pcall(
    'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'p', previous, unpack(ARGV, 6))
if type(added) == 'table' and added.err then
    added = redis.call(
        'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'p', previous, unpack(ARGV, 6))
end
if KEYS[2] ~= KEYS[1] then redis.call('SET', KEYS[2], added) end
if ARGV[4] == '1' then redis.call('SET', KEYS[3], added, 'EX', ARGV[5]) end
--notice--
return added
"""

#: The publish script for a Redis Cluster: it also announces the new entry on
#: the shard channel KEYS[4] (``SPUBLISH``, same hash tag, so same slot) as a
#: JSON array: stream key, entry id, previous id, then the fields and values.
#: Listeners read those notices (sharded pub/sub reaches across slots, which one
#: ``XREAD`` cannot) and prove continuity with the previous id.
XADD_NOTIFY = XADD.replace(
    "--notice--",
    "redis.call('SPUBLISH', KEYS[4], "
    "cjson.encode({KEYS[1], added, previous, unpack(ARGV, 6)}))",
)
XADD = XADD.replace("--notice--\n", "")

#: A stream entry id as (milliseconds, sequence), so that ids compare correctly.
EntryId = tuple[int, int]
ORIGIN: EntryId = (0, 0)

#: A stream entry as redis-py returns it (``decode_responses=False``).
RawEntry = tuple[bytes, dict[bytes, bytes]]


def raw(reply: Any) -> list[RawEntry]:
    """The entries of an XRANGE/XREVRANGE reply (redis-py types it loosely)."""
    return cast("list[RawEntry]", reply or [])


class Entry(NamedTuple):
    """An entry read for a subscriber: its id and its event's wire bytes."""

    id: EntryId
    wire: bytes


def parse_id(raw: bytes | str) -> EntryId:
    """An entry id that Redis gave (so well formed) as a comparable pair."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def client_id(text: str) -> EntryId | None:
    """*text* as a stream entry id, if it is one Redis could hold; else ``None``.

    A client's ``Last-Event-ID`` goes through this: a value beyond what a stream
    id holds (such as ``99999999999999999999-0``) is no position at all.
    """
    match = ENTRY_ID.fullmatch(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    if ms > ID_PART_MAX or seq > ID_PART_MAX:
        return None
    return ms, seq


def plausible(position: EntryId) -> bool:
    """Whether *position* could be an id given out by now: no more than a minute
    ahead of this host's clock (ids are Redis' clock in ms)."""
    return position[0] <= time.time_ns() // 1_000_000 + 60_000


def format_id(entry_id: EntryId) -> str:
    """*entry_id* as Redis writes it."""
    return f"{entry_id[0]}-{entry_id[1]}"


def gap(channel: str, cursor: EntryId) -> bytes:
    """The gap event for the subscribers of *channel* when this process cannot
    prove it delivered every entry after *cursor*, the last one it delivered."""
    note = {"channel": channel, "last_event_id": format_id(cursor)}
    return Event(json.dumps(note), event=GAP_EVENT).encode()


def encode(raw_id: bytes, fields: dict[bytes, bytes]) -> bytes | None:
    """The wire form of a stream entry; ``None`` (logged) if it is not ours."""
    explicit = fields.get(ID)
    retry = fields.get(RETRY)
    kind = fields.get(TYPE)
    try:
        event = Event(
            fields.get(DATA, b"").decode(),
            event=kind.decode() if kind is not None else None,
            id=(explicit or raw_id).decode(),
            retry=int(retry) if retry is not None else None,
        )
        return event.encode()
    except (InvalidEvent, UnicodeDecodeError, ValueError):
        logger.warning("skipping stream entry %r: not an event", raw_id)
        return None
