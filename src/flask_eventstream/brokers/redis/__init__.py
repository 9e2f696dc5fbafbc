"""The Redis broker: events shared by every worker process and machine through Redis.

Works with Redis 6.2+ and Valkey (the same protocol). Selected by
``EVENTSTREAM_BROKER_URL = "redis://host:6379/0"`` (also ``rediss://``, ``unix://``,
``valkey://``, ``valkeys://``, ``redis+sentinel://`` to follow a primary across
Sentinel failovers, and ``redis+cluster://`` for a Redis Cluster); needs ``pip
install flask-eventstream[redis]``.

How it works:

- Each channel is one Redis Stream, ``<prefix>{<channel>}``.
  :meth:`RedisBroker.publish` appends with ``XADD ... MAXLEN ~ history`` (in a
  script, see :mod:`._entries`), so Redis memory stays bounded. The event id is
  the stream entry id (``1718000000000-0``), unique and increasing across
  processes and channels (``<prefix>last-id`` holds the newest); an id given to
  ``publish`` is stored in the entry and sent instead.
- Per process, one listener thread (a greenlet under gevent) runs ``XREAD BLOCK`` on
  the streams of every channel that has subscribers here, and hands each entry to the
  local fan-out. Publishing and replay share a pool of two connections
  (a caller waits for a free one rather than fail). So a process holds at most three
  Redis connections, however many browsers it serves.
- A subscription without ``Last-Event-ID`` to a channel the listener already reads
  here (it has subscribers here, or had some in the last two seconds)
  needs no Redis at all: it joins the listener's cursor. Only a channel new to
  this process costs a round trip (its newest entry id), made once however many
  subscriptions arrive for it meanwhile (they wait for it); the listener is woken
  through Redis only if it is blocked in ``XREAD``.
- The listener keeps, per channel, the id of the last entry it delivered (its
  *cursor*). After a lost connection it reconnects with exponential backoff and
  jitter and resumes ``XREAD`` from the cursors. Each entry names the one before
  it, so the listener proves it missed nothing; when it cannot (it fell more than
  the history behind, or Redis is another server or lost its data: an epoch key
  and the server's run id tell), the channel's subscribers get the gap event.
- Replay reads the stream backwards from the newest entry to the one the client
  named, then registers the subscription with exactly the entries up to the
  listener's cursor; the listener delivers the rest. No gap, no duplicate; and
  the gap event whenever the id is not one Redis holds, or entries after it
  were trimmed.
- The listener also writes this process's subscriber counts per channel into a hash,
  ``<prefix>stats:<broker>``, that expires unless it is refreshed (every
  ``stats_interval`` seconds, and whenever the set of channels changes), so
  :meth:`RedisBroker.cluster_subscriber_counts` can add up every live process. A
  process with no subscriber, or closed, has no hash.

On a Redis Cluster (:mod:`._slots`, :mod:`._cluster_listener`): the last id
given out is kept per group of channels that share a hash tag (one slot), so
ids increase within a group and a stream of one group resumes exactly; a
stream of several groups resumes with the gap event. The publish script also
announces each entry on its group's shard channel, and the listener holds one
connection per primary it needs, subscribed to those (``SSUBSCRIBE``), proving
continuity from each announcement's previous id and reading the stream itself
where it cannot. So a process holds at most three connections per primary.

Divergences from the memory broker, on purpose:

- Resuming from an id no longer kept flags ``missed`` also when the id was exactly
  the last entry trimmed (Redis does not say which one that was).
- With ``MAXLEN ~`` Redis trims whole nodes, so *at least* ``history`` events are
  kept per channel, sometimes more. ``history`` must be at least 1: the stream is
  also how events travel.
- A client that subscribes while Redis is down gets its stream (with the
  ``eventstream-gap`` event if it asked to resume) and live events once Redis is back.
"""

from __future__ import annotations

from ._broker import RedisBroker

__all__ = ["RedisBroker"]
