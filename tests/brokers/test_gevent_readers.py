"""Readers that are greenlets (gevent-patched process): they park on a gevent
``Waiter`` and are resumed by one hub callback per delivery.

Each scenario runs in a fresh, patched subprocess (``gevent_readers.py``); the
HTTP-level checks on gunicorn's gevent worker are in ``tests/test_servers.py``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..conftest import missing

SCRIPT = Path(__file__).with_name("gevent_readers.py")
READERS = 200
EVENTS = 50
ALL = list(range(EVENTS))


@pytest.fixture(scope="module", autouse=True)
def _gevent() -> None:
    if importlib.util.find_spec("gevent") is None:
        missing("gevent (the gevent extra)")


def run(scenario: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), scenario, str(READERS), str(EVENTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_every_greenlet_reader_gets_every_event_once_in_order() -> None:
    result = run("same_hub")
    assert result["parked"] == READERS  # on Waiters, not locks
    assert result["sequences"] == [ALL] * READERS


def test_a_publisher_on_another_os_thread_wakes_greenlet_readers() -> None:
    result = run("other_os_thread")
    assert result["woken_while_publishing"] is True
    assert result["sequences"] == [ALL] * READERS


def test_a_publisher_that_never_yields_cuts_off_no_reader() -> None:
    result = run("burst")  # EVENTS events, a buffer of EVENTS // 10
    assert result == {"cut_off": 0, "sequences": [ALL] * READERS}


def test_an_idle_greenlet_reader_is_woken_for_its_heartbeat() -> None:
    result = run("heartbeat")
    assert result == {"chunk": "b''", "waited_at_least_the_heartbeat": True}


def test_a_reader_killed_while_parked_does_not_disturb_the_others() -> None:
    result = run("killed_reader")
    assert result["victim_dead"] is True
    assert result["victim_got"] == 0
    assert result["others"] == [ALL] * (READERS - 1)
    assert result["left"] == 0


def test_closing_a_parked_subscription_ends_its_stream() -> None:
    assert run("ended_while_parked") == {"result": "[None]"}


def test_a_subscription_ended_while_its_reader_writes_is_read_to_its_end() -> None:
    # Ended from the reader's own hub while it is not waiting: the reader is not
    # woken (nothing waits), and still finds the end when it reads again.
    assert run("ended_while_writing") == {
        "writing_when_ended": READERS,
        "got": ["0;bye;"],
        "own_close": "None",
        "own_close_waited": False,
    }


def test_gevents_loop_runs_timers_while_many_readers_are_woken() -> None:
    # One callback resuming every reader kept the loop from polling for ~50 ms
    # here; a publisher waiting on Redis' reply waited that long each time.
    result = run("timers_run_between_wakeups")
    assert result["readers"] == 1000
    assert result["timer_at"] < 1000


def test_a_greenlet_yielding_under_the_fanout_lock_blocks_no_other() -> None:
    # The lock is the OS's (cheaper than gevent's): a greenlet finding it taken
    # must sleep and retry, never block the thread (which would hang the holder).
    result = run("lock_held_across_a_yield")
    assert result["timed_out"] is False
    assert result["loop_ran_meanwhile"] is True
    assert result["order"][:2] == ["holder in", "holder out"]
    assert sorted(result["order"][2:]) == ["other 0", "other 1", "other 2"]
    assert result["acquired_without_waiting"] is True
