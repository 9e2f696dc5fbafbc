"""Resuming with a Last-Event-ID the store cannot place (docs/redis.md, "Guarantees").

A hostile, future, undecodable or forgotten id gets the gap event first, then the
retained events after it (or the retained history, for an id that is not an entry
id), then live events; it never silences its own stream nor any other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from flask_eventstream import Event, MemoryBroker

from ..brokers.redis_server import RedisServer
from ..helpers import StreamClient, wait_for
from .conftest import (
    App,
    assert_gaps_carry_no_id,
    assert_increasing,
    data_of,
    entry_id,
    gap_data,
    is_gap,
    publish_from_process,
    read_until_data,
    stopped,
)


@pytest.mark.redis
class TestRedisResume:
    def test_out_of_range_id_freezes_no_channel_of_the_worker(
        self,
        redis_app: Callable[..., App],
        redis_server: RedisServer,
        prefix: str,
        streams: Callable[..., StreamClient],
    ) -> None:
        """`99999999999999999999-0`: GAP, history, live; other channels get all."""
        app = redis_app()
        room = streams(f"{app.url}/stream?channel=room")
        wait_for(lambda: app.broker.subscriber_count("room") == 1)
        kept = publish_from_process(redis_server.url, prefix, "fresh", "kept", 2)
        hostile_id = "99999999999999999999-0"
        hostile = streams(
            f"{app.url}/stream?channel=fresh", headers={"Last-Event-ID": hostile_id}
        )
        assert hostile.status == 200
        wait_for(lambda: app.broker.subscriber_count("fresh") == 1)

        room_ids = publish_from_process(redis_server.url, prefix, "room", "room", 5)
        fresh_ids = publish_from_process(redis_server.url, prefix, "fresh", "live", 3)

        read_until_data(room, "room 4")
        assert [(e.id, e.data) for e in room.events] == [
            (i, f"room {n}") for n, i in enumerate(room_ids)
        ]
        read_until_data(hostile, "live 2")
        first, *rest = hostile.events
        assert gap_data(first) == {"last_event_id": hostile_id}
        assert [(e.id, e.data) for e in rest] == [
            *((i, f"kept {n}") for n, i in enumerate(kept)),
            *((i, f"live {n}") for n, i in enumerate(fresh_ids)),
        ]
        assert_gaps_carry_no_id(bytes(hostile.raw))

    def test_future_id_does_not_blackhole_the_channel(
        self,
        redis_app: Callable[..., App],
        redis_server: RedisServer,
        prefix: str,
        streams: Callable[..., StreamClient],
    ) -> None:
        """First subscriber at `9999999999999-0`: GAP then live; later ones get all."""
        app = redis_app()
        publish_from_process(redis_server.url, prefix, "room2", "before", 3)
        future_id = "9999999999999-0"
        future = streams(
            f"{app.url}/stream?channel=room2", headers={"Last-Event-ID": future_id}
        )
        assert future.status == 200
        later = [streams(f"{app.url}/stream?channel=room2") for _ in range(2)]
        wait_for(lambda: app.broker.subscriber_count("room2") == 3)

        ids = publish_from_process(redis_server.url, prefix, "room2", "live", 60)

        expected = [(i, f"live {n}") for n, i in enumerate(ids)]
        for client in later:
            read_until_data(client, "live 59")
            assert [(e.id, e.data) for e in client.events] == expected
        read_until_data(future, "live 59")
        first, *rest = future.events
        assert gap_data(first) == {"last_event_id": future_id}
        assert [(e.id, e.data) for e in rest] == expected  # nothing retained replayed

    def test_id_from_before_a_redis_restart_gets_the_gap(
        self,
        redis_app: Callable[..., App],
        redis_server: RedisServer,
        prefix: str,
        streams: Callable[..., StreamClient],
    ) -> None:
        """Redis restarted empty: an old id gets GAP, what came since, then live."""
        app = redis_app()
        old = publish_from_process(redis_server.url, prefix, "news", "old", 3)
        redis_server.kill()
        redis_server.start()
        since = publish_from_process(redis_server.url, prefix, "news", "since", 2)

        client = streams(
            f"{app.url}/stream?channel=news", headers={"Last-Event-ID": old[-1]}
        )
        assert client.status == 200
        wait_for(lambda: app.broker.subscriber_count("news") == 1)
        live = app.publish("live", "news")
        read_until_data(client, "live")
        first, *rest = client.events
        assert gap_data(first) == {"last_event_id": old[-1]}
        assert [(e.id, e.data) for e in rest] == [
            (since[0], "since 0"),
            (since[1], "since 1"),
            (live.id, "live"),
        ]

    @pytest.mark.slow
    @pytest.mark.parametrize(
        "stall",
        [7.0, None],
        ids=["back-before-the-retry-times-out", "through-the-whole-resume"],
    )
    def test_resume_while_redis_stalls_never_replays_at_or_below_the_position(
        self,
        redis_app: Callable[..., App],
        redis_server: RedisServer,
        prefix: str,
        streams: Callable[..., StreamClient],
        stall: float | None,
    ) -> None:
        """Redis stalled through a resume: only increasing ids above the position."""
        app = redis_app()  # its broker has seen no entry of "stall" yet
        ids = publish_from_process(redis_server.url, prefix, "stall", "old", 10)
        position = ids[4]
        opened: list[StreamClient] = []

        def resume() -> None:
            opened.append(
                streams(
                    f"{app.url}/stream?channel=stall",
                    headers={"Last-Event-ID": position},
                    timeout=30,
                )
            )

        assert redis_server.process is not None
        with stopped(redis_server.process.pid):
            resuming = threading.Thread(target=resume, daemon=True)
            resuming.start()
            if stall is None:  # until the stream opens (5 s timeout, retried): 12 s
                resuming.join(timeout=12)
            else:  # past the first 5 s timeout, not the retry's
                time.sleep(stall)
        resuming.join(timeout=30)
        (client,) = opened
        assert client.status == 200
        wait_for(lambda: app.broker.subscriber_count("stall") == 1, timeout=10)
        live = app.publish("live", "stall")
        read_until_data(client, "live", timeout=15)
        got = [e.id or "" for e in client.events if not is_gap(e)]
        assert_increasing(got)
        assert all(entry_id(i) > entry_id(position) for i in got), got
        assert got[-1] == live.id


class TestUndecodableLastEventId:
    def test_non_utf8_last_event_id_gets_a_stream_with_the_gap(
        self, memory_app: Callable[..., App], streams: Callable[..., StreamClient]
    ) -> None:
        """Raw Latin-1 bytes `caf\\xe9` as Last-Event-ID: 200, GAP first, then live."""
        app = memory_app()
        # http.client writes a str header value as Latin-1: the byte 0xE9 goes out.
        client = streams(
            f"{app.url}/stream?channel=cafe", headers={"Last-Event-ID": "caf\xe9"}
        )
        assert client.status == 200, bytes(client.response.read(200))
        wait_for(lambda: app.broker.subscriber_count("cafe") == 1)
        app.publish("live", "cafe")
        read_until_data(client, "live")
        first, *rest = client.events
        assert set(gap_data(first)) == {"last_event_id"}
        assert data_of(rest) == ["live"]
        assert_gaps_carry_no_id(bytes(client.raw))

    @pytest.mark.parametrize(
        "last_event_id", ["a\0b", "x" * 257], ids=["nul", "over-the-limit"]
    )
    def test_ids_no_browser_sends_stay_400(
        self,
        memory_app: Callable[..., App],
        streams: Callable[..., StreamClient],
        last_event_id: str,
    ) -> None:
        """NUL in the id, or more than EVENTSTREAM_MAX_LAST_EVENT_ID bytes: 400."""
        app = memory_app()
        client = streams(
            f"{app.url}/stream?channel=cafe", headers={"Last-Event-ID": last_event_id}
        )
        assert client.status == 400
        assert b"Last-Event-ID" in client.response.read()


def _future_memory_id() -> str:
    """A number far above any id a memory broker started now hands out."""
    return str(time.time_ns() // 1000 + 10**12)


class TestMemoryResume:
    @pytest.mark.parametrize(
        "last_event_id",
        ["99999999999999999999", str(2**70), "garbage", "12abc", "\u0661\u0662"],
        ids=["20-nines", "2-to-the-70", "garbage", "digits-then-letters", "arabic"],
    )
    def test_hostile_id_gets_gap_and_leaves_others_alone(
        self,
        memory_app: Callable[..., App],
        streams: Callable[..., StreamClient],
        last_event_id: str,
    ) -> None:
        """GAP, at most the history, then live; other subscribers get every event."""
        app = memory_app()
        retained = [app.publish(f"kept {n}", "room").data for n in range(3)]
        other = streams(f"{app.url}/stream?channel=room")
        elsewhere = streams(f"{app.url}/stream?channel=lobby")
        client = streams(
            f"{app.url}/stream?channel=room",
            headers={"Last-Event-ID": last_event_id.encode()},
        )
        assert client.status == 200
        wait_for(lambda: app.broker.subscriber_count() == 3)
        for n in range(3):
            app.publish(f"live {n}", "room")
            app.publish(f"lobby {n}", "lobby")

        live = [f"live {n}" for n in range(3)]
        read_until_data(other, "live 2")
        assert data_of(other.events) == live
        read_until_data(elsewhere, "lobby 2")
        assert data_of(elsewhere.events) == [f"lobby {n}" for n in range(3)]
        read_until_data(client, "live 2")
        first, *rest = client.events
        assert gap_data(first) == {"last_event_id": last_event_id}
        replayed = data_of(rest)[: -len(live)]
        assert data_of(rest)[-len(live) :] == live
        assert replayed == retained[len(retained) - len(replayed) :]
        if not last_event_id.isdigit():  # not a number: the whole history
            assert replayed == retained

    def test_future_id_gets_gap_and_no_replay(
        self, memory_app: Callable[..., App], streams: Callable[..., StreamClient]
    ) -> None:
        """A number above every id handed out: GAP, nothing retained, live events."""
        app = memory_app()
        for n in range(3):
            app.publish(f"kept {n}", "room")
        future = _future_memory_id()
        client = streams(
            f"{app.url}/stream?channel=room", headers={"Last-Event-ID": future}
        )
        assert client.status == 200
        wait_for(lambda: app.broker.subscriber_count("room") == 1)
        app.publish("live", "room")
        read_until_data(client, "live")
        first, *rest = client.events
        assert gap_data(first) == {"last_event_id": future}
        assert data_of(rest) == ["live"]

    def test_id_from_before_a_restart_gets_gap_then_the_history(
        self, memory_app: Callable[..., App], streams: Callable[..., StreamClient]
    ) -> None:
        """An id of a previous MemoryBroker: GAP, the new history, then live."""
        before = MemoryBroker()
        old_id = before.publish("room", Event("old")).id
        before.close()
        app = memory_app()  # the process after the restart
        retained = [app.publish(f"kept {n}", "room").data for n in range(2)]
        assert old_id is not None
        client = streams(
            f"{app.url}/stream?channel=room", headers={"Last-Event-ID": old_id}
        )
        wait_for(lambda: app.broker.subscriber_count("room") == 1)
        app.publish("live", "room")
        read_until_data(client, "live")
        first, *rest = client.events
        assert gap_data(first) == {"last_event_id": old_id}
        assert data_of(rest) == [*retained, "live"]
        assert_increasing([e.id or "" for e in rest], key=int)
