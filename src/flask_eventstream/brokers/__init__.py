"""Brokers: where events are kept and how they reach subscribers.

:func:`from_url` picks one from ``EVENTSTREAM_BROKER_URL``: ``memory://`` (the
default, in-process) or ``redis://``, ``rediss://``, ``unix://``, ``valkey://``,
``valkeys://``, for a primary watched by Sentinel ``redis+sentinel://``, and
for a Redis Cluster ``redis+cluster://`` (the Redis broker, ``pip install
flask-eventstream[redis]``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ._fanout import Fanout
from ._memory import MemoryBroker
from ._protocol import Broker
from ._subscription import Subscription

__all__ = ["Broker", "Fanout", "MemoryBroker", "Subscription", "from_url"]

_REDIS_SCHEMES = {
    *("redis", "rediss", "unix", "valkey", "valkeys"),
    *("redis+sentinel", "rediss+sentinel", "valkey+sentinel", "valkeys+sentinel"),
    *("redis+cluster", "rediss+cluster", "valkey+cluster", "valkeys+cluster"),
}


def from_url(url: str, **options: Any) -> Broker:
    """Create the broker *url* names, passing *options* to its constructor.

    :raises ValueError: for a scheme no broker handles.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryBroker(**options)
    if scheme in _REDIS_SCHEMES:
        from .redis import RedisBroker

        return RedisBroker.from_url(url, **options)
    raise ValueError(
        f"unsupported EVENTSTREAM_BROKER_URL {url!r}: use memory:// or "
        "redis://, rediss://, unix://, valkey://, redis+sentinel://, "
        "redis+cluster://"
    )
