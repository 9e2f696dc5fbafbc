"""Broker fixtures: a real ``redis-server`` and a real Redis Cluster per session,
and ``broker`` on every broker.

``broker`` (and the factory ``make_broker``) is parametrized over the memory broker,
the Redis broker on one ``redis-server``, and the Redis broker on a cluster of
three primaries with a replica each, so every contract test in
``test_contract.py`` runs on all three. Each Redis broker gets its own key prefix,
so tests never see each other's keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flask_eventstream.brokers import Broker, MemoryBroker

from ..conftest import missing
from .cluster import Cluster
from .redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real ``redis-server`` on a free port, killed at the end of the session."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Six ``redis-server`` cluster nodes (three primaries, a replica each),
    killed at the end of the session. Tests must not kill its nodes: the
    failover tests start a cluster of their own."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def redis_broker(url: str, **options: Any) -> Broker:
    """A Redis broker with a key prefix of its own."""
    try:
        from flask_eventstream.brokers.redis import RedisBroker
    except ImportError:
        missing("the redis package (pip install flask-eventstream[redis])")
        raise

    options.setdefault("key_prefix", f"test-{uuid.uuid4().hex[:12]}:")
    return RedisBroker.from_url(url, **options)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ],
)
def make_broker(request: pytest.FixtureRequest) -> Iterator[Callable[..., Broker]]:
    """Makes brokers of the parametrized kind (``history=``, ``buffer=``)."""
    made: list[Broker] = []

    def make(**options: Any) -> Broker:
        if request.param == "memory":
            broker: Broker = MemoryBroker(**options)
        elif request.param == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            broker = redis_broker(server.url, **options)
        else:
            cluster: Cluster = request.getfixturevalue("redis_cluster")
            broker = redis_broker(cluster.url, **options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker()
