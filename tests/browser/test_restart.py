"""The chat page across a server restart: the badge says what was replayed.

One ``flask run`` process serves ``examples/chat/app.py`` on the Redis broker.
It is stopped; two messages are published to Redis while no server runs; a new
process starts on the same port. The browser, retrying all along, reconnects
with ``Last-Event-ID``, gets the two messages by replay, and the page's
connection badge (``examples/static/examples.js``) shows "replayed 2 missed",
then "live" again after a few seconds.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect

from flask_eventstream import Event

from ..brokers.redis_server import RedisServer
from ..helpers import wait_for
from .conftest import TIMEOUT_MS
from .test_chat import open_chat, say, shown
from .test_failover import START_TIMEOUT, ChatBackend

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.slow]


def test_the_badge_counts_what_was_replayed_after_a_restart(
    tmp_path: Path,
    own_redis_server: RedisServer,
    new_context: Callable[[], BrowserContext],
) -> None:
    from flask_eventstream.brokers.redis import RedisBroker

    prefix = f"restart-{uuid.uuid4().hex[:12]}:"
    env = dict(
        os.environ,
        SECRET_KEY=uuid.uuid4().hex,
        FLASK_EVENTSTREAM_BROKER_URL=own_redis_server.url,
        FLASK_EVENTSTREAM_REDIS_PREFIX=prefix,
        FLASK_EVENTSTREAM_RETRY="500",  # the browser retries every 0.5 s
        FLASK_EVENTSTREAM_HEARTBEAT="0.5",
        PYTHONUNBUFFERED="1",
    )
    first = ChatBackend(tmp_path, env)
    backends = [first]
    try:
        wait_for(first.answers, timeout=START_TIMEOUT)
        url = f"http://{first.address}"
        ada = open_chat(new_context(), url, "ada")
        status = ada.locator("#status")
        expect(status).to_have_attribute("data-state", "live")
        say(ada, "before")
        shown(ada, "ada: before")

        first.stop()
        expect(status).to_have_text("reconnecting", timeout=TIMEOUT_MS)
        now = datetime.datetime.now().replace(microsecond=0).time().isoformat()
        with RedisBroker.from_url(own_redis_server.url, key_prefix=prefix) as broker:
            for text in ("while down one", "while down two"):
                broker.publish("chat", Event(f"[{now}] bob: {text}"))
        expect(status).to_have_text("reconnecting")  # nothing serves yet

        second = ChatBackend(tmp_path, env, port=first.port)
        backends.append(second)
        wait_for(second.answers, timeout=START_TIMEOUT)
        expect(status).to_have_text("replayed 2 missed", timeout=TIMEOUT_MS)
        expect(status).to_have_attribute("data-state", "replayed")
        shown(ada, "ada: before", "bob: while down one", "bob: while down two")
        # A live message after the replay does not add to the count.
        ada.wait_for_timeout(500)
        say(ada, "after")
        shown(
            ada,
            "ada: before",
            "bob: while down one",
            "bob: while down two",
            "ada: after",
        )
        expect(status).to_have_text("replayed 2 missed")
        expect(status).to_have_text("live", timeout=TIMEOUT_MS)  # it settles
    finally:
        for backend in backends:
            backend.stop()
        for backend in backends:
            print(f"--- {backend.address} ---\n{backend.log()}")  # shown on failure
