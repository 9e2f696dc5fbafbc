"""Where the Redis broker's connections go: the URL grammar, and the two pools.

One Redis server::

    redis://[[username]:password@]host[:port][/db]     (also rediss://, TLS)
    unix://[[username]:password@]/path/to/redis.sock[?db=N]
    valkey://...  valkeys://...                       (the same as redis://, rediss://)

A primary watched by Sentinel, followed across failovers::

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service[/db][?option=value&...]

- the hosts are Sentinels (port 26379 unless given), the path names the
  monitored service (``sentinel monitor <service> ...``) and the database;
- the user and password are the Redis nodes' (the primary's and replicas');
- ``rediss+sentinel://`` connects to the Redis nodes over TLS, and
  ``valkey+sentinel://`` / ``valkeys+sentinel://`` are the same schemes;
- options: ``sentinel_username`` and ``sentinel_password`` when the Sentinels
  themselves require AUTH, ``sentinel_ssl=true`` for TLS to the Sentinels, and
  redis-py's ``ssl_*`` options (``ssl_ca_certs``, ``ssl_cert_reqs``, ...).

Every connection asks the Sentinels for the current primary when it connects;
after a failover the old primary answers writes with ``READONLY`` (redis-py turns
that into a lost connection) or drops its clients, so the next connection goes to
the new primary.

A Redis Cluster (Redis 7+, or Valkey: sharded pub/sub is needed)::

    redis+cluster://[[username]:password@]host[:port][,host[:port]...][/0][?option=value&...]

- the hosts are some of the cluster's nodes (port 6379 unless given), from which
  the client learns the rest (``CLUSTER SLOTS``); one is enough, more survive one
  being down at start;
- ``rediss+cluster://`` uses TLS, ``valkey+cluster://`` / ``valkeys+cluster://``
  are the same schemes; the database can only be 0;
- options: redis-py's ``ssl_*`` options (``ssl_ca_certs``, ``ssl_cert_reqs``, ...).

Each primary gets a pool of *size* shared connections (publishing, replay, the
listener's reads of history) and, while the listener reads a channel it serves,
one connection of the listener (:class:`ClusterPools`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis import BlockingConnectionPool, ConnectionPool
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from ...exceptions import BrokerUnavailable

#: Errors that mean "Redis cannot be reached or cannot take writes right now".
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)

_SENTINEL_PORT = 26379
_PLAIN = {"redis": "redis", "rediss": "rediss", "unix": "unix"}
_PLAIN.update(valkey="redis", valkeys="rediss")
_SENTINEL = {
    "redis+sentinel": False,
    "valkey+sentinel": False,
    "rediss+sentinel": True,
    "valkeys+sentinel": True,
}
_CLUSTER = {
    "redis+cluster": False,
    "valkey+cluster": False,
    "rediss+cluster": True,
    "valkeys+cluster": True,
}
_TRUE = {"1", "true", "yes", "on"}


class _SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel pool that waits for a free connection instead of failing:
    redis-py's Sentinel pool has the Sentinel part, its blocking pool the rest."""


@dataclass(frozen=True)
class Pools:
    """The broker's connections to Redis.

    :param shared: publishing and replay (callers wait for a free connection).
    :param listen: the listener's one connection.
    :param where: what log lines and errors name.
    """

    shared: BlockingConnectionPool
    listen: ConnectionPool
    where: str


@dataclass(frozen=True)
class ClusterPools:
    """The broker's connections to a Redis Cluster.

    :param client: routes publishing and reads by slot; each node's pool is a
        blocking pool of the shared size.
    :param node_options: what the listener's own connection to a node is made
        with (credentials, TLS, timeouts), beside the node's host and port.
    :param where: what log lines and errors name.
    """

    client: RedisCluster
    node_options: dict[str, Any]
    where: str


def is_cluster_url(url: str) -> bool:
    """Whether *url* names a Redis Cluster (``redis+cluster://`` and kin)."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in _CLUSTER


@dataclass(frozen=True)
class ClusterUrl:
    """What a ``redis+cluster://`` URL says: the nodes to start from, and what
    every connection to a node is made with (credentials, TLS, ``ssl_*``)."""

    nodes: list[tuple[str, int]]
    options: dict[str, Any]

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        """:raises ValueError: for a URL this grammar does not read."""
        scheme, _, rest = url.partition("://")
        parts = urlsplit(f"cluster://{rest}")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        username, _, password = userinfo.partition(":")
        nodes = [_host_port(item, 6379) for item in hosts.split(",") if item]
        if not nodes or parts.path not in ("", "/", "/0"):
            raise ValueError(
                "a Cluster URL is redis+cluster://[user:password@]host[:port]"
                f"[,host[:port]...][/0], got {rest!r} after the scheme"
            )
        query = dict(parse_qsl(parts.query))
        unknown = sorted(name for name in query if not name.startswith("ssl_"))
        if unknown:
            raise ValueError(f"unknown Cluster URL options {unknown}; known: ssl_*")
        options: dict[str, Any] = {**query}
        if username:
            options["username"] = unquote(username)
        if password:
            options["password"] = unquote(password)
        if _CLUSTER[scheme.lower()]:
            options["ssl"] = True
        return cls(nodes, options)


def make_cluster_pools(
    url: str,
    *,
    size: int,
    wait: float,
    timeout: float,
    listen_timeout: float,
    options: dict[str, Any],
) -> ClusterPools:
    """The cluster client for *url* (a ``redis+cluster://`` URL): per node *size*
    shared connections with *timeout* (a caller waits up to *wait* seconds for a
    free one), and what the listener's connections are made of.

    The client reads the cluster's slots at once, from the first node of the
    URL that answers.

    :raises ValueError: for a URL this grammar does not read.
    :raises BrokerUnavailable: no node of the URL answers.
    """
    parsed = ClusterUrl.parse(url)
    node = {**options, **parsed.options, "socket_keepalive": True}
    tls = bool(node.pop("ssl", False))
    (host, port), *others = parsed.nodes
    where = "cluster " + ",".join(_netloc(*item) for item in parsed.nodes)
    try:
        # A URL makes redis-py build each node's pool with connection_pool_class,
        # so that a caller waits for a free connection instead of opening more.
        client = RedisCluster(
            url=f"{'rediss' if tls else 'redis'}://{_netloc(host, port)}",
            startup_nodes=[
                ClusterNode(other, other_port)  # type: ignore[no-untyped-call]
                for other, other_port in others
            ],
            connection_pool_class=BlockingConnectionPool,
            max_connections=size,
            timeout=wait,
            socket_timeout=timeout,
            require_full_coverage=False,
            **node,
        )
    except (RedisClusterException, RedisError) as exc:
        raise BrokerUnavailable(
            f"no node of Redis {where} answers ({exc}); cannot start the broker"
        ) from exc
    listen = {**node, "ssl": tls, "socket_timeout": listen_timeout}
    return ClusterPools(client, listen, where)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_pools(
    url: str,
    *,
    size: int,
    wait: float,
    timeout: float,
    listen_timeout: float,
    options: dict[str, Any],
) -> Pools:
    """The pools for *url*: *size* shared connections (a caller waits up to *wait*
    seconds for one) with *timeout*, each command retried once at once on a
    broken connection; and one for the listener with *listen_timeout*, never
    retried (the listener has its own backoff). *options* go to every connection.

    :raises ValueError: for a URL this grammar does not read.
    """
    scheme, sep, rest = url.partition("://")
    kind = scheme.lower()
    if sep and kind in _SENTINEL:
        return _sentinel_pools(
            rest,
            tls=_SENTINEL[kind],
            size=size,
            wait=wait,
            timeout=timeout,
            listen_timeout=listen_timeout,
            options=options,
        )
    if not sep or kind not in _PLAIN:
        raise ValueError(f"not a Redis URL: {url!r}")
    plain = f"{_PLAIN[kind]}://{rest}"
    if kind != "unix":  # notice a Redis host that vanished without a reset
        options = {**options, "socket_keepalive": True}
    shared = BlockingConnectionPool.from_url(
        plain,
        max_connections=size,
        timeout=wait,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        **options,
    )
    listen = ConnectionPool.from_url(
        plain,
        max_connections=1,
        socket_timeout=listen_timeout,
        retry=Retry(NoBackoff(), 0),
        **options,
    )
    location = shared.connection_kwargs
    where = location.get("path") or (
        f"{location.get('host', 'localhost')}:{location.get('port', 6379)}"
    )
    return Pools(shared, listen, str(where))


def _sentinel_pools(
    rest: str,
    *,
    tls: bool,
    size: int,
    wait: float,
    timeout: float,
    listen_timeout: float,
    options: dict[str, Any],
) -> Pools:
    parts = urlsplit(f"sentinel://{rest}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = [_host_port(item, _SENTINEL_PORT) for item in hosts.split(",") if item]
    path = [unquote(piece) for piece in parts.path.split("/") if piece]
    if not sentinels or not path or len(path) > 2:
        raise ValueError(
            "a Sentinel URL is redis+sentinel://[user:password@]host[:port]"
            f"[,host[:port]...]/service[/db], got {rest!r} after the scheme"
        )
    query = dict(parse_qsl(parts.query))
    sentinel_options: dict[str, Any] = {"socket_timeout": timeout}
    for name in ("username", "password"):
        value = query.pop(f"sentinel_{name}", None)
        if value is not None:
            sentinel_options[name] = value
    if query.pop("sentinel_ssl", "").lower() in _TRUE:
        sentinel_options["ssl"] = True
    unknown = sorted(name for name in query if not name.startswith("ssl_"))
    if unknown:
        raise ValueError(
            f"unknown Sentinel URL options {unknown}; known: sentinel_username, "
            "sentinel_password, sentinel_ssl and ssl_*"
        )
    node: dict[str, Any] = {
        **options,
        **query,
        "db": int(path[1]) if len(path) == 2 else 0,
        "socket_keepalive": True,
    }
    if username:
        node["username"] = unquote(username)
    if password:
        node["password"] = unquote(password)
    if tls:
        node["ssl"] = True
    manager = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        sentinel_kwargs=sentinel_options,
        socket_connect_timeout=node.get("socket_connect_timeout", timeout),
    )
    service = path[0]
    shared = _SentinelBlockingPool(  # type: ignore[no-untyped-call]
        service,
        manager,
        max_connections=size,
        timeout=wait,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        **node,
    )
    listen = SentinelConnectionPool(  # type: ignore[no-untyped-call]
        service,
        manager,
        max_connections=1,
        socket_timeout=listen_timeout,
        retry=Retry(NoBackoff(), 0),
        **node,
    )
    where = f"service {service!r} of Sentinel {hosts}"
    return Pools(shared, listen, where)


def _host_port(item: str, default: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port)."""
    host, port = item, ""
    if ":" in item and not item.endswith("]"):
        host, _, port = item.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        return host, int(port) if port else default
    except ValueError:
        raise ValueError(f"not a host[:port]: {item!r}") from None
