"""Subscriber counts across processes: each listener keeps its process's counts
in a hash that expires (``<prefix>stats:<broker>``); anyone adds them up."""

from __future__ import annotations

import re
from typing import cast

from redis import Redis
from redis.cluster import RedisCluster

from ...exceptions import BrokerUnavailable
from ._pools import UNAVAILABLE


def stats_key(prefix: str, token: str) -> str:
    """The key of one broker's counts."""
    return f"{prefix}stats:{token}"


def cluster_counts(
    redis: Redis | RedisCluster, prefix: str, where: str
) -> dict[str, int]:
    """Live subscribers per channel in every process on this Redis and *prefix*
    (on every primary of a cluster: its ``SCAN`` goes over them all).

    :raises BrokerUnavailable: Redis cannot be reached.
    """
    pattern = _glob_escape(stats_key(prefix, "")) + "*"
    try:
        keys = list(redis.scan_iter(match=pattern, count=1000))
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        hashes = cast("list[dict[bytes, bytes]]", pipe.execute())
    except UNAVAILABLE as exc:
        raise BrokerUnavailable(
            f"Redis at {where} is unavailable ({exc}); cannot count subscribers"
        ) from exc
    totals: dict[str, int] = {}
    for counts in hashes:  # empty if it expired since SCAN saw it
        for name, count in counts.items():
            channel = name.decode()
            totals[channel] = totals.get(channel, 0) + int(count)
    return totals


def _glob_escape(text: str) -> str:
    """*text* as a literal in a Redis ``SCAN MATCH`` pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
