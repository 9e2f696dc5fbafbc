"""How a subscription's reader waits, and how a publisher wakes it: with threads,
or with greenlets when gevent has patched ``threading``.

The only module of the package that names gevent. The rest sees one small
interface: a :class:`Park` per subscription (``wait``, ``poll``, ``wake``,
``settle``), the fan-out's :class:`FanoutLock`, which resumes the greenlets woken
under it once it is released, :func:`short_lock` and :func:`let_readers_run`.

- Threads: a reader waits on a lock of its own, held while it has nothing to do;
  a wake releases it.
- Greenlets: a reader parks on a ``gevent.hub.Waiter`` of its own, switched from a
  callback of its hub once the fan-out's lock is released: no lock, and none of a
  lock's notifier machinery per reader per event.
"""

from __future__ import annotations

import _thread
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gevent.hub import Hub, Waiter

logger = logging.getLogger(__name__)


class Park:
    """Where one reader waits. Its methods other than :meth:`wait` and
    :meth:`poll` are called under the fan-out's lock.

    ``woken`` below is the subscription's own flag: something is queued, it
    ended, or a heartbeat is due, and the reader was woken for it.
    """

    __slots__ = ()

    #: Whether the reader is a greenlet, which a publisher must let run.
    greenlet = False

    def wait(self, woken: bool) -> None:
        """Return once woken (at once if *woken*)."""
        raise NotImplementedError

    def poll(self, woken: bool) -> bool:
        """Whether the reader was woken, without waiting."""
        raise NotImplementedError

    def wake(self) -> None:
        """Wake the reader (called once per ``woken`` going true)."""
        raise NotImplementedError

    def settle(self, woken: bool) -> None:
        """After the reader took its queue: stay woken, or arm for the next wake."""
        raise NotImplementedError

    def runs_here(self) -> bool:
        """Whether the reader is a greenlet of the calling thread: one that is not
        waiting then cannot start to before the caller yields, so it sees a
        ``woken`` set now without being woken."""
        return False


class _ThreadPark(Park):
    """A lock held while the reader has nothing to do; free while it is woken."""

    __slots__ = ("_lock", "wake")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.wake: Callable[[], None] = self._lock.release

    def wait(self, woken: bool) -> None:
        self._lock.acquire()  # free while woken: taken back at once

    def poll(self, woken: bool) -> bool:
        return self._lock.acquire(blocking=False)

    def settle(self, woken: bool) -> None:
        if woken:  # more to return, or the end: the next wait returns at once
            self._lock.release()


class _GreenletPark(Park):
    """A fresh ``Waiter`` whenever the reader rearms, switched once on wake; if the
    reader is not parked on it yet, it keeps the wake-up for its next ``get()``."""

    __slots__ = ("_hub", "_waiter", "_switches")

    greenlet = True

    def __init__(self, hub: Hub, switches: list[Waiter[None]]) -> None:
        self._hub = hub
        self._waiter: Waiter[None] = _waiter_type()(hub)
        self._switches = switches

    def wait(self, woken: bool) -> None:
        # No lock needed to read ``woken``: only the reader resets it, and a wake
        # that comes after this read switches the very waiter we get().
        if not woken:
            self._waiter.get()

    def poll(self, woken: bool) -> bool:
        return woken

    def wake(self) -> None:
        self._switches.append(self._waiter)  # switched when the lock is released

    def settle(self, woken: bool) -> None:
        if not woken:
            self._waiter = _waiter_type()(self._hub)

    def runs_here(self) -> bool:
        return self._hub is _hub_if_exists()()


def short_lock() -> _thread.LockType:
    """A lock for sections that never block or yield: the operating system's, even
    when gevent has patched ``threading``.

    gevent's lock is made for waiting (its ``acquire`` is Python code around a
    semaphore); taking and giving back the OS lock costs a third of it. Safe
    under gevent only because nothing holding it can switch greenlets: no other
    greenlet of the thread can run while it is held, so none waits on it.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("_thread"):
        return monkey.get_original("_thread", "allocate_lock")()  # type: ignore[no-any-return]
    return _thread.allocate_lock()


#: How long a greenlet sleeps between two tries of a taken :class:`FanoutLock`
#: (at most; it starts with ``sleep(0)``), in seconds.
_RETRY_AT_MOST = 0.001


class FanoutLock:
    """The fan-out's lock; callbacks queued under it run once it is released.

    So a callback (a ``subscriber_dropped`` receiver) may itself publish: it runs
    after the lock is given back, in the thread that released it. Greenlet readers
    woken under the lock are resumed by hub callbacks scheduled on release.

    It is a :func:`short_lock`, although a rare section under it waits for Redis
    (a subscriber catching up with a busy channel): under gevent, a greenlet that
    finds it taken never blocks its thread on it, but sleeps and tries again, so
    that the holder's greenlet can run and give it back.
    """

    __slots__ = ("_lock", "_after", "_switches")

    def __init__(self) -> None:
        self._lock = short_lock()
        self._after: list[Callable[[], None]] = []
        self._switches: list[Waiter[None]] = []

    def __enter__(self) -> bool:
        return self._lock.acquire(False) or self.acquire()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        lock = self._lock
        if not blocking or _gevent_hub() is None:
            return lock.acquire(blocking, timeout)
        sleep = _gevent_sleep()
        deadline = None if timeout < 0 else time.monotonic() + timeout
        pause = 0.0
        while not lock.acquire(False):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            sleep(pause)
            pause = min(max(pause * 2, 0.0001), _RETRY_AT_MOST)
        return True

    def release(self, *exc_info: object) -> None:
        """Give the lock back; then resume the greenlets woken and run the
        callbacks queued under it. (Also ``__exit__``: one call less per use.)"""
        if self._switches:
            switches = self._switches[:]
            self._switches.clear()  # the parks hold this very list
            _schedule_switches(switches)
        if not self._after:
            self._lock.release()
            return
        after, self._after = self._after, []
        self._lock.release()
        for callback in after:
            try:
                callback()
            except Exception:  # one failing receiver must not stop delivery
                logger.exception("a fan-out callback failed")

    def locked(self) -> bool:
        return self._lock.locked()

    __exit__ = release

    def call_after(self, callback: Callable[[], None]) -> None:
        """Run *callback* once the lock is released. Call under the lock."""
        self._after.append(callback)

    def park(self) -> Park:
        """A park for a reader on the calling thread (or greenlet)."""
        hub = _gevent_hub()
        if hub is None:
            return _ThreadPark()
        return _GreenletPark(hub, self._switches)


def let_readers_run() -> None:
    """Under gevent, let the readers woken on this thread's hub run once.

    A publisher that never blocks (``publish()`` in a loop) would otherwise fill
    every reader's queue before any of them writes. ``sleep(0)`` queues this
    greenlet behind the readers' wake-ups (see :func:`_schedule_switches`).
    """
    hub = _hub_if_exists()()
    if hub is not None and _getcurrent()() is not hub:
        _gevent_sleep()(0)


def _schedule_switches(waiters: list[Waiter[None]]) -> None:
    """Have each waiter's hub resume its parked reader, soon: one hub callback each.

    Not one callback for several readers: gevent's loop polls for I/O only
    between callbacks (once every 50 if its switch interval is spent), so a
    publisher waiting for Redis' reply would wait for every reader of a batch.
    """
    here = _hub_if_exists()()
    for waiter in waiters:
        hub = waiter.hub
        if hub is here:
            hub.loop.run_callback(waiter.switch, None)
        else:  # a publisher on another OS thread: wake that hub's loop too
            hub.loop.run_callback_threadsafe(waiter.switch, None)


def _gevent_hub() -> Hub | None:
    """This thread's gevent hub when gevent has patched ``threading``, else ``None``."""
    global _patched
    if not _patched:
        monkey = sys.modules.get("gevent.monkey")
        if monkey is None or not monkey.is_module_patched("threading"):
            return None
        _patched = True  # for good: gevent never unpatches
    return _get_hub()()


#: Whether gevent has patched ``threading`` (as seen by :func:`_gevent_hub`).
_patched = False


# gevent's functions, imported once (not on every wait or wake-up), and only when
# gevent is in use.


@functools.cache
def _get_hub() -> Callable[[], Hub]:
    from gevent.hub import get_hub

    return get_hub


@functools.cache
def _waiter_type() -> type[Waiter[Any]]:
    from gevent.hub import Waiter

    return Waiter


@functools.cache
def _hub_if_exists() -> Callable[[], Hub | None]:
    from gevent._hub_local import get_hub_if_exists

    return get_hub_if_exists


@functools.cache
def _gevent_sleep() -> Callable[[float], None]:
    from gevent import sleep

    return sleep


@functools.cache
def _getcurrent() -> Callable[[], object]:
    from greenlet import getcurrent

    return getcurrent
