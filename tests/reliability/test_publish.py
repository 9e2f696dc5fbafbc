"""What a publish reports when Redis fails under it (docs/redis.md, "Guarantees").

``BrokerUnavailable``: not stored. ``PublishUncertain`` (a ``BrokerUnavailable``):
sent, no reply in time; publishing again with its ``idempotency_key`` stores and
delivers the event exactly once. ``BrokerError``: Redis refused the write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from flask_eventstream import BrokerError, BrokerUnavailable, Event

from ..brokers.redis_server import RedisServer
from ..helpers import StreamClient, wait_for
from .conftest import App, data_of, read_until_data, stopped

pytestmark = pytest.mark.redis


def _publish_during_a_stall(
    app: App, redis_server: RedisServer, stall: float
) -> Event | Exception:
    """Publish to *app* while Redis is SIGSTOPped for *stall* seconds."""
    outcome: list[Event | Exception] = []

    def publish() -> None:
        try:
            outcome.append(app.publish("paid", "pay"))
        except Exception as exc:
            outcome.append(exc)

    publishing = threading.Thread(target=publish, daemon=True)
    assert redis_server.process is not None
    with stopped(redis_server.process.pid):
        publishing.start()
        time.sleep(stall)  # the fault
    publishing.join(timeout=30)
    (result,) = outcome
    return result


@pytest.mark.slow
def test_publish_whose_reply_is_lost_is_retried_and_stored_once(
    redis_app: Callable[..., App],
    redis_server: RedisServer,
    streams: Callable[..., StreamClient],
) -> None:
    """Redis stalled past one socket timeout, back before the retry's: the retry
    finds the first attempt stored; the publish returns it, delivered once."""
    app = redis_app()
    client = streams(f"{app.url}/stream?channel=pay", timeout=30)
    wait_for(lambda: app.broker.subscriber_count("pay") == 1)
    app.publish("warm-up", "pay")  # the pooled connection is open: sent at once
    read_until_data(client, "warm-up")
    sent = _publish_during_a_stall(app, redis_server, 7.5)
    assert isinstance(sent, Event), sent
    app.publish("after", "pay")
    read_until_data(client, "after", timeout=15)
    assert data_of(client.events) == ["warm-up", "paid", "after"]
    (paid,) = [event for event in client.events if event.data == "paid"]
    assert sent.id == paid.id


@pytest.mark.slow
def test_publish_left_without_reply_is_uncertain_and_its_key_delivers_once(
    redis_app: Callable[..., App],
    redis_server: RedisServer,
    streams: Callable[..., StreamClient],
) -> None:
    """Redis stalled past both attempts: PublishUncertain; its key sends once."""
    from flask_eventstream.exceptions import PublishUncertain

    app = redis_app()
    client = streams(f"{app.url}/stream?channel=pay", timeout=40)
    wait_for(lambda: app.broker.subscriber_count("pay") == 1)
    app.publish("warm-up", "pay")
    read_until_data(client, "warm-up")
    uncertain = _publish_during_a_stall(app, redis_server, 17.0)
    assert isinstance(uncertain, PublishUncertain), uncertain
    assert isinstance(uncertain, BrokerUnavailable)
    assert uncertain.channel == "pay"
    assert isinstance(uncertain.idempotency_key, str) and uncertain.idempotency_key

    again = app.publish("paid", "pay", idempotency_key=uncertain.idempotency_key)
    app.publish("after", "pay")
    read_until_data(client, "after", timeout=15)
    assert data_of(client.events) == ["warm-up", "paid", "after"]
    (paid,) = [event for event in client.events if event.data == "paid"]
    assert again.id == paid.id


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_publish_again_with_the_same_key_stores_and_delivers_once(
    kind: str,
    redis_app: Callable[..., App],
    memory_app: Callable[..., App],
    streams: Callable[..., StreamClient],
) -> None:
    """A key already stored on the channel: same id back, nothing delivered again."""
    app = redis_app() if kind == "redis" else memory_app()
    client = streams(f"{app.url}/stream?channel=orders")
    wait_for(lambda: app.broker.subscriber_count("orders") == 1)
    first = app.publish("order 1", "orders", idempotency_key="order-1")
    second = app.publish("order 1", "orders", idempotency_key="order-1")
    third = app.broker.publish("orders", Event("order 1"), idempotency_key="order-1")
    app.publish("other", "orders", idempotency_key="order-2")
    read_until_data(client, "other")
    assert first.id == second.id == third.id
    assert data_of(client.events) == ["order 1", "other"]


def test_publish_to_a_dead_redis_is_unavailable_not_uncertain(
    redis_app: Callable[..., App], redis_server: RedisServer
) -> None:
    """Redis killed: plain BrokerUnavailable (not stored); works again once back."""
    app = redis_app()
    app.publish("warm-up", "dead")
    redis_server.kill()
    with pytest.raises(BrokerUnavailable) as caught:
        app.publish("lost", "dead")
    assert type(caught.value) is BrokerUnavailable  # not PublishUncertain
    redis_server.start()
    assert app.publish("back", "dead").id


def test_publish_refused_out_of_memory_is_a_broker_error(
    redis_app: Callable[..., App], redis_server: RedisServer
) -> None:
    """maxmemory reached with noeviction: BrokerError, not BrokerUnavailable."""
    app = redis_app()
    with redis_server.client() as redis:
        redis.config_set("maxmemory-policy", "noeviction")
        redis.config_set("maxmemory", "1")
        try:
            with pytest.raises(BrokerError) as caught:
                app.publish("refused", "full")
        finally:
            redis.config_set("maxmemory", "0")
    assert not isinstance(caught.value, BrokerUnavailable)
