"""The Redis Cluster listener: one per process, reading the announcements of
new entries (sharded pub/sub) of every channel it has subscribers for.

One ``XREAD`` cannot read streams of several slots (``CROSSSLOT``), so the publish
script also announces each entry on its channel group's shard channel
(:data:`._entries.XADD_NOTIFY`). The listener holds one connection per primary
that serves a channel read here, subscribed (``SSUBSCRIBE``) to those groups'
shard channels, and waits on all of them at once. Each announcement carries the
whole entry and the id of the one before it, so the listener proves continuity
as from ``XREAD``; when it cannot (an announcement lost with a connection, a
slot moved, the listener just subscribed), it reads the stream itself from its
cursor (``XRANGE``), and gives the gap event only if the stream cannot show
that nothing is missing.

A node whose connection fails is tried again with a backoff of its own, while
the channels of the other nodes are read on. Every ``stats_interval``, after a
lost connection and when a slot moved, it asks where slots are served and
checks each channel's stream: a newer last entry than its cursor
(a trailing announcement lost) is read; a node that restarted, or a replica
that took over its primary's slots (replication is asynchronous, it may lack
acknowledged entries), gives the gap event. Ids never go back: the cursor
stays, a group whose last id went back is moved past it (the group's last-id
key, and ``XSETID``), and entries at or before the cursor are never delivered.

Owns its connections to the nodes, which nodes failed, the record of which
node served each channel, and (from :class:`~._listener.Listener`) its thread
and the counts.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, NamedTuple, cast

from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from .._fanout import Fanout
from ._entries import (
    ORIGIN,
    PREVIOUS,
    EntryId,
    RawEntry,
    encode,
    format_id,
    gap,
    parse_id,
    raw,
)
from ._listener import _BATCH, Listener, Positions
from ._shard_links import ShardLinks
from ._slots import ClusterNames

logger = logging.getLogger(__name__)

#: Answers of a node that does not serve a slot (now): not a failure of the node.
_REDIRECTED = (AskError, ClusterDownError, MovedError, TryAgainError)

#: Raise the last id given out in a group (KEYS[2]) and the stream's own (KEYS[1],
#: if it exists) to ARGV (ms, seq), unless they are above it already: the publish
#: script then gives ids above it. KEYS[2] is KEYS[1] for a channel without a
#: hash tag (see :mod:`._slots`).
_MOVE_PAST = """
local ms, seq = tonumber(ARGV[1]), tonumber(ARGV[2])
local wanted = ARGV[1] .. '-' .. ARGV[2]
if KEYS[2] ~= KEYS[1] then
    local last = redis.call('GET', KEYS[2])
    local last_ms, last_seq = 0, 0
    if last then
        local a, b = string.match(last, '^(%d+)-(%d+)$')
        last_ms, last_seq = tonumber(a or 0), tonumber(b or 0)
    end
    if last_ms < ms or (last_ms == ms and last_seq < seq) then
        redis.call('SET', KEYS[2], wanted)
    end
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.pcall('XSETID', KEYS[1], wanted) end
return 1
"""


class _Node(NamedTuple):
    """Who served a channel when its cursor was last proven."""

    address: str
    run_id: str
    replid: str


class ClusterListener(Listener):
    """The listener of one broker on a Redis Cluster (see the module docstring).

    :param client: the broker's cluster client (shared pools), for reads of the
        streams, the topology and the listener's bookkeeping.
    :param names: the keys and shard channels of channels.
    :param node_options: what its connections to nodes are made with.
    """

    def __init__(
        self,
        *,
        fanout: Fanout,
        positions: Positions,
        client: RedisCluster,
        names: ClusterNames,
        node_options: dict[str, Any],
        stats_key: str,
        stats_interval: float,
        where: str,
        sender: object,
    ) -> None:
        super().__init__(
            fanout=fanout,
            positions=positions,
            pool=None,
            redis=client,
            key=names.key,
            stats_key=stats_key,
            epoch_key="",
            wake_key="",
            stats_interval=stats_interval,
            where=where,
            sender=sender,
        )
        self._client: Any = client  # redis-py leaves most of its methods untyped
        self._names = names
        self._shards = ShardLinks(node_options)
        # Channels to read from their cursor (just subscribed, or behind).
        self._behind: set[str] = set()
        # Channel -> the node that served it when its cursor was last proven.
        self._served: dict[str, _Node] = {}

    def _interrupt(self) -> None:
        self._shards.interrupt()

    def _disconnect(self) -> None:
        self._shards.disconnect()

    def stop(self) -> None:
        super().stop()
        self._shards.close()

    def _listen_once(self) -> None:
        """Subscribe to what is read here, read what the streams hold beyond the
        cursors, then wait for announcements and deliver them in order."""
        taken = self._snapshot()
        if taken is None:
            return
        snapshot, unproven, block_ms = taken
        now = time.monotonic()
        retry_at = self._shards.retry_at()
        # A changed topology is checked at once (a replica may have taken over);
        # while a node is down, when it is due to be tried again.
        due = self._store_due() or (
            self._shards.stale and (retry_at is None or retry_at <= now)
        )
        if due:
            self._refresh_topology()  # raises only if no node answers at all
        plan = self._plan(snapshot)
        self._shards.forget_except({node for _, node in plan.values()})
        # The channels of a node that failed wait for it (or for its replica).
        plan = {
            name: (shard, node)
            for name, (shard, node) in plan.items()
            if not self._shards.waiting(node, now)
        }
        if due:
            self._check_cluster(snapshot, unproven, plan)
        wanted: dict[str, set[str]] = {}
        for shard, node in plan.values():
            wanted.setdefault(node, set()).add(shard)
        fresh = self._shards.subscribe(wanted)
        self._behind |= {name for name, (shard, _) in plan.items() if shard in fresh}
        if self._lost_at is not None:  # that was the first round to succeed
            self._back(self._lost_at)
        cursors = dict(snapshot)
        proofless = set(unproven)
        batch: list[tuple[EntryId, str, bytes]] = []
        broken: set[str] = set()
        failed: set[str] = set()  # channels whose node failed this round
        for name in sorted(self._behind & plan.keys()):
            try:
                entries = self._read_after(name, cursors[name])
                self._take(name, entries, cursors, proofless, batch, broken)
            except (RedisError, OSError) as exc:
                self._shards.failed(plan[name][1], exc)
                failed.add(name)
        self._behind = (self._behind - plan.keys()) | failed
        retry_at = self._shards.retry_at()
        if retry_at is not None:  # try a failed node again when it is due
            block_ms = max(1, min(block_ms, int((retry_at - now) * 1000) + 1))
        self._blocking = True
        try:
            # What was read from the streams is delivered before any wait.
            if not self._changed.is_set():
                self._shards.wait(0 if batch else block_ms)
        finally:
            self._blocking = False
        stash, self._shards.stash = self._shards.stash, []
        keys = {self._names.key(name): name for name in plan}
        for payload in stash:
            entry = _decode(payload)
            if entry is None:
                continue
            key, raw_entry = entry
            channel = keys.get(key)
            if channel is None or channel in failed:
                continue
            try:
                self._take(channel, [raw_entry], cursors, proofless, batch, broken)
            except (RedisError, OSError) as exc:  # its node failed: read it later
                self._shards.failed(plan[channel][1], exc)
                failed.add(channel)
                self._behind.add(channel)
        # Across groups (slots, nodes) no order is defined; ids, the nodes'
        # clocks, come closest. Within a group ids increase, so this keeps it.
        batch.sort(key=lambda item: item[0])
        self._deliver(snapshot, cursors, batch, broken)

    def _refresh_topology(self) -> None:
        """Ask the cluster where slots are served now."""
        try:
            # Keeping the pools' connections: publishes and reads use them.
            self._client.nodes_manager.initialize(disconnect_startup_nodes_pools=False)
        except (RedisClusterException, RedisError) as exc:
            raise RedisConnectionError(
                f"cannot read the cluster's slots: {exc}"
            ) from exc
        self._shards.stale = False

    def _plan(self, snapshot: dict[str, EntryId]) -> dict[str, tuple[str, str]]:
        """For each channel read here: its shard channel and the node serving it."""
        plan: dict[str, tuple[str, str]] = {}
        for name in snapshot:
            shard = self._names.notices(name)
            try:
                node = self._client.nodes_manager.get_node_from_slot(
                    self._client.keyslot(shard)
                )
            except (RedisClusterException, RedisError) as exc:
                self._shards.stale = True
                raise RedisConnectionError(f"no node serves {shard!r}: {exc}") from exc
            plan[name] = (shard, node.name)
        return plan

    def _read_after(self, name: str, cursor: EntryId) -> list[RawEntry]:
        """Every entry of *name*'s stream after *cursor* (shared pools)."""
        entries: list[RawEntry] = []
        low = f"({format_id(cursor)}"
        while True:
            batch = raw(self._client.xrange(self._key(name), min=low, count=_BATCH))
            entries += batch
            if len(batch) < _BATCH:
                return entries
            low = "(" + batch[-1][0].decode()

    def _take(
        self,
        name: str,
        entries: list[RawEntry],
        cursors: dict[str, EntryId],
        proofless: set[str],
        batch: list[tuple[EntryId, str, bytes]],
        broken: set[str],
    ) -> None:
        """Queue *name*'s entries after its cursor, proving continuity: an entry
        whose previous id is not the cursor makes the listener read the stream
        between them; if the stream cannot show the chain, *name* is broken."""
        for raw_id, fields in entries:
            entry_id = parse_id(raw_id)
            cursor = cursors[name]
            if entry_id <= cursor:
                continue  # delivered already (or an id that went back: after a gap)
            previous = fields.get(PREVIOUS)
            chain: list[RawEntry] = [(raw_id, fields)]
            if name not in proofless and (
                previous is None or parse_id(previous) != cursor
            ):
                between = raw(
                    self._client.xrange(
                        self._key(name),
                        min=f"({format_id(cursor)}",
                        max=f"({raw_id.decode()}",
                    )
                )
                chain = between + chain
                first = chain[0][1].get(PREVIOUS)
                if first is None or parse_id(first) != cursor:
                    broken.add(name)
            for chain_id, chain_fields in chain:
                chain_entry = parse_id(chain_id)
                if chain_entry <= cursors[name]:
                    continue
                cursors[name] = chain_entry
                wire = encode(chain_id, chain_fields)
                if wire is not None:
                    batch.append((chain_entry, name, wire))
            proofless.discard(name)

    def _deliver(
        self,
        snapshot: dict[str, EntryId],
        cursors: dict[str, EntryId],
        batch: list[tuple[EntryId, str, bytes]],
        broken: set[str],
    ) -> None:
        """Hand the round's entries to the fan-out, the gap event first where
        continuity failed; move the cursors."""
        if broken:
            logger.warning(
                "Redis listener cannot prove it missed nothing on channels %s: "
                "their subscribers get the gap event",
                sorted(broken),
            )
        with self._fanout.lock:
            # A channel whose cursor moved since the snapshot was dropped and
            # started again: the next round reads it from its new cursor.
            current = {
                name
                for name in cursors
                if cursors[name] != snapshot[name]
                and self._positions.cursors.get(name) == snapshot[name]
            }
            self._hand_over(current, broken, snapshot, cursors, batch)

    def _check_cluster(
        self,
        snapshot: dict[str, EntryId],
        unproven: set[str],
        plan: dict[str, tuple[str, str]],
    ) -> None:
        """Tell the subscribers of every channel whose entries the cluster may
        have lost; have channels whose stream holds more than the cursor read.

        A channel's node lost entries if it restarted (same address, another run
        id), or took over from the node that served the channel before (a
        replica promoted: its previous replication id is the old primary's), or
        if the stream's last entry is older than the cursor. A slot moved to
        another primary by resharding keeps its entries: the stream proves it.
        """
        self._served = {
            name: node for name, node in self._served.items() if name in snapshot
        }
        by_node: dict[str, list[str]] = {}
        for name, (_, node) in plan.items():
            by_node.setdefault(node, []).append(name)
        lost: dict[str, str] = {}
        for node, names in by_node.items():
            try:
                identity, took_over_from, tops = self._node_state(node, names)
                for name, top in zip(names, tops, strict=True):
                    self._check_channel(
                        name, top, identity, took_over_from, snapshot, unproven, lost
                    )
            except _REDIRECTED:
                self._shards.stale = True  # a slot on the move: checked after it
            except (RedisError, OSError) as exc:
                self._shards.failed(node, exc)
                for name in names:
                    del plan[name]  # read once the node (or its replica) is back
        if not lost:
            return
        logger.warning(
            "Redis at %s may have lost entries (%s): the subscribers of channels "
            "%s get the gap event",
            self._where,
            ", ".join(sorted(set(lost.values()))),
            sorted(lost),
        )
        with self._fanout.lock:
            for name in lost:
                if self._positions.cursors.get(name) == snapshot[name]:
                    self._fanout.notify([name], gap(name, snapshot[name]))
                    # Whatever comes next (with a higher id) is delivered.
                    self._positions.unproven.add(name)
                    unproven.add(name)

    def _node_state(
        self, node: str, names: list[str]
    ) -> tuple[_Node, str, list[EntryId]]:
        """Who *node* is (run id, replication ids: a promoted replica's previous
        one is its old primary's), and the newest entry id of each of *names*."""
        found = self._client.get_node(node_name=node)
        if found is None or found.redis_connection is None:
            raise RedisConnectionError(f"no connection to node {node}")
        pipe = found.redis_connection.pipeline(transaction=False)
        pipe.info()
        for name in names:
            pipe.xrevrange(self._key(name), count=1)
        info, *found_tops = pipe.execute()
        identity = _Node(
            node, str(info.get("run_id", "")), str(info.get("master_replid", ""))
        )
        tops = [parse_id(top[0][0]) if top else ORIGIN for top in found_tops]
        return identity, str(info.get("master_replid2", "")), tops

    def _check_channel(
        self,
        name: str,
        top: EntryId,
        now: _Node,
        took_over_from: str,
        snapshot: dict[str, EntryId],
        unproven: set[str],
        lost: dict[str, str],
    ) -> None:
        """Record in *lost* why *name* may have lost entries, if it may have."""
        before = self._served.get(name)
        self._served[name] = now
        if name in unproven:
            return
        if before is not None and before.run_id != now.run_id:
            if before.address == now.address:
                lost[name] = "a node restarted"
            elif took_over_from == before.replid:
                lost[name] = "a replica took over"
        if top < snapshot[name]:
            lost.setdefault(name, "a stream went back")
            self._move_past(name, snapshot[name])
        elif top > snapshot[name]:
            self._behind.add(name)

    def _move_past(self, name: str, cursor: EntryId) -> None:
        """Make *name*'s group give ids above *cursor* from now on."""
        self._client.eval(
            _MOVE_PAST,
            2,
            self._key(name),
            self._names.last_id_key(name),
            *cursor,
        )


def _decode(payload: bytes) -> tuple[str, RawEntry] | None:
    """An announcement as (stream key, entry); ``None`` (logged) if malformed."""
    try:
        key, entry_id, previous, *pairs = cast("list[str]", json.loads(payload))
    except (ValueError, TypeError):
        logger.warning("skipping an announcement that is not ours: %r", payload[:80])
        return None
    fields = {
        pairs[index].encode(): pairs[index + 1].encode()
        for index in range(0, len(pairs) - 1, 2)
    }
    fields[PREVIOUS] = previous.encode()
    return key, (entry_id.encode(), fields)
