"""Greenlet readers on a fan-out, in a gevent-patched process of their own.

Run by ``test_gevent_readers.py`` as ``python gevent_readers.py SCENARIO READERS
EVENTS``; prints one JSON object with what the readers got. Patching must come
before anything else imports ``threading``: hence a script, not a test module.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.hub import get_hub  # noqa: E402

from flask_eventstream.brokers import Fanout, Subscription  # noqa: E402

READERS, EVENTS = (int(arg) for arg in sys.argv[2:4])


def _read_all(sub: Subscription, into: list[bytes], timeout: float = 5) -> None:
    """Read until the subscription ends (``None``), as a response body does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = sub.next_chunk(timeout)
        if chunk is None:
            return
        if chunk:
            into.append(chunk)


def _deliver(fanout: Fanout, count: int, *, pause: bool = True) -> None:
    """Deliver *count* events, then end every subscription; with *pause*, let the
    readers run between two events (one wake-up each), else back to back."""
    for n in range(count):
        with fanout.lock:
            fanout.deliver("c", b"%d;" % n)
        if pause:
            gevent.sleep(0)
    fanout.end_all()


def _readers(
    fanout: Fanout,
) -> tuple[list[Subscription], list[list[bytes]], list[gevent.Greenlet]]:
    """Subscriptions to channel ``c``, each read by a greenlet into its list."""
    with fanout.lock:
        subs = [fanout.subscribe(["c"]) for _ in range(READERS)]
    got: list[list[bytes]] = [[] for _ in subs]
    greenlets = [gevent.spawn(_read_all, s, g) for s, g in zip(subs, got, strict=True)]
    gevent.sleep(0.05)  # every reader parked
    return subs, got, greenlets


def _sequences(got: list[list[bytes]]) -> list[list[int]]:
    return [[int(n) for n in b"".join(chunks).split(b";") if n] for chunks in got]


def same_hub() -> dict[str, Any]:
    """Readers are greenlets; the publisher is a greenlet of the same hub."""
    fanout = Fanout()
    subs, got, greenlets = _readers(fanout)
    parked = sum(sub._park._waiter.greenlet is not None for sub in subs)
    _deliver(fanout, EVENTS)
    gevent.joinall(greenlets, timeout=10)
    return {"parked": parked, "sequences": _sequences(got)}


def other_os_thread() -> dict[str, Any]:
    """The publisher runs on a real OS thread (gevent's thread pool)."""
    fanout = Fanout()
    subs, got, greenlets = _readers(fanout)
    sleep = monkey.get_original("time", "sleep")

    def publish() -> bool:
        # The first event, then wait (blocking this OS thread only) for every reader
        # to have it: only a thread-safe wake-up gets the hub to run them meanwhile.
        with fanout.lock:
            fanout.deliver("c", b"0;")
        deadline = time.monotonic() + 5
        while not all(got) and time.monotonic() < deadline:
            sleep(0.01)
        woken = all(got)
        for n in range(1, EVENTS):
            with fanout.lock:
                fanout.deliver("c", b"%d;" % n)
        fanout.end_all()
        return woken

    woken = get_hub().threadpool.spawn(publish).get(timeout=10)
    gevent.joinall(greenlets, timeout=10)
    return {"woken_while_publishing": woken, "sequences": _sequences(got)}


def heartbeat() -> dict[str, Any]:
    """An idle reader is woken by the ticker to write a heartbeat (``b""``)."""
    fanout = Fanout()
    with fanout.lock:
        sub = fanout.subscribe(["c"])
    started = time.monotonic()
    chunk = sub.next_chunk(0.05)
    waited = time.monotonic() - started
    sub.close()
    return {"chunk": repr(chunk), "waited_at_least_the_heartbeat": waited >= 0.04}


def killed_reader() -> dict[str, Any]:
    """A reader killed while parked (its client gone) does not disturb delivery."""
    fanout = Fanout()
    subs, got, greenlets = _readers(fanout)
    victim = greenlets[0]
    victim.kill(timeout=5)
    subs[0].close()
    _deliver(fanout, EVENTS)
    gevent.joinall(greenlets, timeout=10)
    return {
        "victim_dead": victim.dead,
        "victim_got": len(got[0]),
        "others": _sequences(got[1:]),
        "left": fanout.count(),
    }


def ended_while_parked() -> dict[str, Any]:
    """Closing a parked reader's subscription (from elsewhere) ends its stream."""
    fanout = Fanout()
    with fanout.lock:
        sub = fanout.subscribe(["c"])
    result: list[object] = []
    reader = gevent.spawn(lambda: result.append(sub.next_chunk(5)))
    gevent.sleep(0.05)
    sub.close()
    reader.join(timeout=5)
    return {"result": repr(result)}


def ended_while_writing() -> dict[str, Any]:
    """Subscriptions ended while their readers write (not parked), from a greenlet
    of their hub, are read to their end; a reader that closes its own subscription
    finds it ended at once."""
    fanout = Fanout()
    with fanout.lock:
        subs = [fanout.subscribe(["c"]) for _ in range(READERS)]
    got: list[list[bytes]] = [[] for _ in subs]

    def read(sub: Subscription, into: list[bytes]) -> None:
        into.append(sub.next_chunk(5) or b"")
        gevent.sleep(0.05)  # writing it
        _read_all(sub, into)

    readers = [gevent.spawn(read, s, g) for s, g in zip(subs, got, strict=True)]
    gevent.sleep(0.05)  # every reader parked
    with fanout.lock:
        fanout.deliver("c", b"0;")
    gevent.sleep(0.01)  # every reader took it and is writing
    writing = sum(not sub.reading for sub in subs)
    fanout.end_all(b"bye;")
    gevent.joinall(readers, timeout=10)
    with fanout.lock:
        own = fanout.subscribe(["c"])
    own.close()  # as a response body does: by its reader, which is not waiting
    started = time.monotonic()
    last = own.next_chunk(5)
    return {
        "writing_when_ended": writing,
        "got": sorted({b"".join(chunks).decode() for chunks in got}),
        "own_close": repr(last),
        "own_close_waited": time.monotonic() - started >= 1,
    }


def timers_run_between_wakeups() -> dict[str, Any]:
    """Waking many readers leaves gevent's loop time for timers and I/O between
    them: a greenlet whose 2 ms sleep ends while 1,000 readers are being woken
    (each busy 50 us, as if writing) runs before the last of them."""
    fanout = Fanout()
    with fanout.lock:
        subs = [fanout.subscribe(["c"]) for _ in range(1000)]
    order: list[str] = []

    def read(sub: Subscription) -> None:
        if sub.next_chunk(5):
            busy_until = time.perf_counter() + 50e-6
            while time.perf_counter() < busy_until:
                pass
            order.append("reader")

    def sleeper() -> None:
        gevent.sleep(0.002)
        order.append("timer")

    readers = [gevent.spawn(read, sub) for sub in subs]
    gevent.sleep(0.05)  # every reader parked
    timer = gevent.spawn(sleeper)
    gevent.sleep(0)  # the sleeper's timer is running
    with fanout.lock:
        fanout.deliver("c", b"0;")
    gevent.joinall([*readers, timer], timeout=10)
    return {"readers": order.count("reader"), "timer_at": order.index("timer")}


def burst() -> dict[str, Any]:
    """A publisher that never yields (``publish()`` in a loop) delivers ten times
    the buffer: the fan-out lets the readers run, so none is cut off."""
    fanout = Fanout(buffer=EVENTS // 10)
    subs, got, greenlets = _readers(fanout)
    _deliver(fanout, EVENTS, pause=False)
    gevent.joinall(greenlets, timeout=10)
    return {"cut_off": sum(sub.cut_off for sub in subs), "sequences": _sequences(got)}


def lock_held_across_a_yield() -> dict[str, Any]:
    """A greenlet that yields while it holds the fan-out's lock (as a subscriber
    catching up with Redis does) keeps the others waiting, not the thread: they
    take it, in turn, once it gives it back."""
    fanout = Fanout()
    order: list[str] = []

    def holder() -> None:
        with fanout.lock:
            order.append("holder in")
            gevent.sleep(0.05)  # I/O under the lock: the hub runs the others
            order.append("holder out")

    def other(name: str) -> None:
        with fanout.lock:
            order.append(name)

    first = gevent.spawn(holder)
    gevent.sleep(0)  # the holder has the lock
    others = [gevent.spawn(other, f"other {i}") for i in range(3)]
    ticks = gevent.spawn(lambda: [gevent.sleep(0.005) for _ in range(5)])
    gevent.joinall([first, *others, ticks], timeout=10)
    return {
        "order": order,
        "loop_ran_meanwhile": ticks.dead,
        "timed_out": not all(g.dead for g in [first, *others]),
        "acquired_without_waiting": fanout.lock.acquire(blocking=False),
    }


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
