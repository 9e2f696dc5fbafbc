"""Reading a channel's history in Redis for a subscriber: where live delivery
starts, and what to replay after a ``Last-Event-ID``.

A client's id is only ever looked up here, never trusted: the positions handed
back are ids Redis gave.

In a Redis Cluster, ids are comparable only within a group of channels (one hash
tag, see :mod:`._slots`): a resume replays the group of the channel that holds
the entry named, and nothing of the other groups, which get the gap event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from ._entries import (
    ID,
    ORIGIN,
    PREVIOUS,
    Entry,
    EntryId,
    client_id,
    encode,
    parse_id,
    raw,
)

#: What a history read gives: per channel the newest entry id read and the entries
#: to replay (oldest first); and whether events may have been missed.
Replay = tuple[dict[str, tuple[EntryId, list[Entry]]], bool]


class Scan(NamedTuple):
    """One channel's stream read backwards for a resume (see ``_scan_back``)."""

    #: The newest entry's id (the origin if the stream is empty).
    top: EntryId
    #: The id of the entry the client named, if this stream has it.
    found: EntryId | None
    #: The entries after where the scan stopped, oldest first.
    entries: list[Entry]
    #: Whether the scan reached the stream's oldest entry without stopping, and
    #: the ``p`` field of that entry (``None``: none, or it has no such field).
    reached_start: bool
    oldest_previous: EntryId | None


class History:
    """Reads channels' streams on the broker's shared pool, from any thread.

    :param key: a channel's stream key.
    :param history: entries kept per stream (for Redis 6.2, which does not count
        the entries a stream ever had).
    :param group: which channels have comparable ids (in a cluster, the hash
        tag); every channel is in one group on one Redis.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        key: Callable[[str], str],
        history: int,
        group: Callable[[str], str] = lambda channel: "",
    ) -> None:
        self._redis = redis
        self._key = key
        self._history = history
        self._group = group

    def newest(self, names: list[str]) -> dict[str, tuple[EntryId, list[Entry]]]:
        """For each channel: the id of its newest entry, and no backlog."""
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.xrevrange(self._key(name), count=1)
        newest = pipe.execute()
        return {
            name: (parse_id(found[0][0]) if found else ORIGIN, [])
            for name, found in zip(names, newest, strict=True)
        }

    def after(self, names: list[str], last_event_id: str) -> Replay:
        """For each channel: the newest entry id read and the entries after the one
        *last_event_id* names, oldest first; and whether events may have been missed.

        Nothing is missed only if one of the channels holds the entry named (by
        its entry id, or by the id it was published with), no channel trimmed
        entries after it, and all channels are in one group. Entries at or before
        a position are never replayed; nor is anything of a group other than the
        one of the entry named (its ids are not comparable: the gap instead).
        """
        position = client_id(last_event_id)
        scans = {
            name: self._scan_back(self._key(name), last_event_id.encode(), position)
            for name in names
        }
        groups = {name: self._group(name) for name in names}
        found = [
            (scan.found, name) for name, scan in scans.items() if scan.found is not None
        ]
        home: str | None = None
        if found:
            # An explicit id names an entry of one channel; its entry id is the
            # position in the others of its group (entry ids are times on one
            # Redis clock, or one cluster slot's).
            position, holder = max(found)
            home = groups[holder]
        missed = (
            not found
            or len(set(groups.values())) > 1
            or any(
                self._trimmed(name, scan, position)
                for name, scan in scans.items()
                if position is not None and groups[name] == home
            )
        )
        replay: dict[str, tuple[EntryId, list[Entry]]] = {}
        for name, scan in scans.items():
            entries = scan.entries
            if home is not None and groups[name] != home:
                entries = []
            elif position is not None:
                entries = [entry for entry in entries if entry.id > position]
            replay[name] = (scan.top, entries)
        return replay, missed

    def _scan_back(self, key: str, wanted: bytes, position: EntryId | None) -> Scan:
        """Read *key* newest first down to the entry *wanted* names (its explicit id)
        or to *position*, or to the stream's start (see :class:`Scan`)."""
        newer: list[Entry] = []
        top: EntryId | None = None
        upper: bytes | str = "+"
        page = 64  # a client resuming usually missed a few events: one round trip
        while True:
            batch = raw(self._redis.xrevrange(key, max=upper, min="-", count=page))
            for raw_id, fields in batch:
                entry_id = parse_id(raw_id)
                if top is None:
                    top = entry_id
                if fields.get(ID) == wanted or (
                    position is not None and entry_id <= position
                ):
                    newer.reverse()
                    hit = fields.get(ID) == wanted or entry_id == position
                    return Scan(top, entry_id if hit else None, newer, False, None)
                wire = encode(raw_id, fields)
                if wire is not None:
                    newer.append(Entry(entry_id, wire))
            if len(batch) < page:
                newer.reverse()
                previous = batch[-1][1].get(PREVIOUS) if batch else None
                return Scan(
                    top or ORIGIN,
                    None,
                    newer,
                    True,
                    parse_id(previous) if previous is not None else None,
                )
            upper = b"(" + batch[-1][0]
            page = min(page * 4, 1024)

    def _trimmed(self, name: str, scan: Scan, position: EntryId) -> bool:
        """Whether *name*'s stream dropped entries newer than *position*."""
        if not scan.reached_start:
            return False  # it still holds an entry at or before the position
        if scan.oldest_previous is not None:
            # The oldest entry kept says which entry came before it: was that
            # one newer than the position (and so lost)?
            return scan.oldest_previous > position
        return self._trimmed_after(self._key(name), position)

    def _trimmed_after(self, key: str, position: EntryId) -> bool:
        """Whether *key* dropped entries newer than *position* (trimmed history),
        for a stream whose oldest entry does not say what came before it.

        Trimming drops the oldest entries, so it did if entries were dropped at all
        and the oldest one kept is newer than *position*. (It errs towards "yes"
        when *position* is exactly the last entry dropped.)
        """
        try:
            info = self._redis.xinfo_stream(key)
        except ResponseError:  # no such key: nothing was ever dropped from it
            return False
        first = info.get("first-entry")
        if not first or parse_id(first[0]) <= position:
            return False
        added = info.get("entries-added")
        if added is not None:  # Redis 7+
            return int(added) > int(info.get("length", 0))
        # Redis 6.2: MAXLEN only trims a stream that reached its length.
        return int(info.get("length", 0)) >= self._history
