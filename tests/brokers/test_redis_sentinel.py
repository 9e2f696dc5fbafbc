"""The Redis broker through Sentinel: URLs, and real failovers under load.

Real processes only: a primary, its replica and three Sentinels (``sentinel.py``).
A failover may lose what the old primary acknowledged and had not replicated
yet; the promise that must hold is the one of ``docs/redis.md`` ("Guarantees"):
every subscriber gets every acknowledged event once, in order, or the gap event
where some may be missing, and publishing works again on the new primary.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_eventstream import Event
from flask_eventstream.brokers import from_url
from flask_eventstream.brokers.redis import RedisBroker
from flask_eventstream.brokers.redis._pools import make_pools

from .failover import SteadyPublisher, check_delivery
from .reading import Reader
from .sentinel import SERVICE, SentinelSetup

pytestmark = pytest.mark.redis

_POOL_OPTIONS = {"size": 2, "wait": 1.0, "timeout": 1.0, "listen_timeout": 2.0}


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "where", "db", "tls"),
        [
            (
                "redis+sentinel://a,b:26380/main",
                "'main' of Sentinel a,b:26380",
                0,
                False,
            ),
            ("valkey+sentinel://a:1/main/3", "'main' of Sentinel a:1", 3, False),
            ("rediss+sentinel://[::1]:5/m/1", "'m' of Sentinel [::1]:5", 1, True),
        ],
    )
    def test_sentinel_urls(self, url: str, where: str, db: int, tls: bool) -> None:
        pools = make_pools(url, options={}, **_POOL_OPTIONS)
        kwargs = pools.shared.connection_kwargs
        assert where in pools.where
        assert kwargs["db"] == db
        assert ("Sentinel" in type(pools.shared).__name__) is True
        assert ("SSL" in pools.shared.connection_class.__name__) is tls

    def test_credentials_go_to_the_nodes_and_the_sentinels_apart(self) -> None:
        pools = make_pools(
            "redis+sentinel://us%40er:p%3Ass@h:1/svc/2?sentinel_password=sp",
            options={},
            **_POOL_OPTIONS,
        )
        kwargs = pools.shared.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("us@er", "p:ss")
        manager = kwargs["connection_pool"].sentinel_manager
        assert manager.sentinel_kwargs["password"] == "sp"
        assert manager.sentinels[0].connection_pool.connection_kwargs["port"] == 1

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("redis+sentinel://h:1", "service"),
            ("redis+sentinel://h:1/a/b/c", "service"),
            ("redis+sentinel://h:x/svc", "host"),
            ("redis+sentinel://h/svc?socket_timeout=1", "unknown Sentinel URL"),
            ("http://h/svc", "not a Redis URL"),
        ],
    )
    def test_bad_urls_are_refused_with_the_grammar(
        self, url: str, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            make_pools(url, options={}, **_POOL_OPTIONS)

    def test_from_url_knows_the_sentinel_scheme(self) -> None:
        broker = from_url("redis+sentinel://127.0.0.1:1/svc")
        try:
            assert isinstance(broker, RedisBroker)
        finally:
            broker.close()


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path)
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


def _broker(setup: SentinelSetup, prefix: str) -> RedisBroker:
    return RedisBroker.from_url(
        setup.sentinels.url(), key_prefix=prefix, stats_interval=0.5
    )


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sigkill", "manual"])
def test_a_failover_under_load_loses_nothing_silently(
    sentinel_setup: SentinelSetup, fault: str
) -> None:
    """The primary SIGKILLed, or a manual ``SENTINEL FAILOVER``, while a publisher
    publishes every 20 ms and two brokers (two app processes' worth) listen:
    publishing resumes on the new primary; each subscriber gets every
    acknowledged event once, in order, or the gap event."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    publishing = _broker(sentinel_setup, prefix)
    listening = [_broker(sentinel_setup, prefix) for _ in range(2)]
    try:
        readers = [Reader(broker.subscribe(["ticks"])) for broker in listening]
        old = sentinel_setup.sentinels.primary_port_now()
        with SteadyPublisher(publishing, "ticks") as publisher:
            publisher.wait_acknowledged(20)
            if fault == "sigkill":
                sentinel_setup.server_on(old).kill()
            else:
                with sentinel_setup.sentinels.client() as sentinel:
                    sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
            faulted_at = time.monotonic()
            sentinel_setup.sentinels.wait_for_primary(sentinel_setup.other_than(old))
            before = len(publisher.acknowledged)
            publisher.wait_acknowledged(before + 20)
        if publisher.resumed_at is not None:
            resumed = publisher.resumed_at - faulted_at
            print(f"publishing resumed {resumed:.1f}s after the fault")
        last = list(publisher.acknowledged)[-1]
        for reader in readers:
            deadline = time.monotonic() + 30
            while last not in {event.data for event in reader.events}:
                assert time.monotonic() < deadline, "the last event never arrived"
                reader.idle(0.2)
            check_delivery(reader, publisher.acknowledged)
    finally:
        publishing.close()
        for broker in listening:
            broker.close()


def test_counts_and_connections_through_sentinel(
    sentinel_setup: SentinelSetup,
) -> None:
    """Through Sentinel as on one Redis: events flow, subscriber counts add up
    across processes' brokers, and each broker holds at most 3 connections to
    the primary however many subscriptions it serves."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    brokers = [_broker(sentinel_setup, prefix) for _ in range(2)]
    try:
        readers = [Reader(broker.subscribe(["a"])) for broker in brokers]
        readers += [Reader(brokers[0].subscribe(["b"])) for _ in range(50)]
        sent = brokers[1].publish("a", Event("hello"))
        for reader in readers[:2]:
            assert [e.id for e in reader.read(1)] == [sent.id]
        deadline = time.monotonic() + 10
        while brokers[0].cluster_subscriber_counts() != {"a": 2, "b": 50}:
            assert time.monotonic() < deadline, brokers[0].cluster_subscriber_counts()
            time.sleep(0.1)
        primary = sentinel_setup.server_on(sentinel_setup.sentinels.primary_port_now())
        for broker in brokers:
            assert 1 <= len(primary.clients(broker.client_name)) <= 3
    finally:
        for broker in brokers:
            broker.close()
