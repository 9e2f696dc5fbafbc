"""Gunicorn server hooks: end open streams cleanly when a worker is told to stop,
and keep the garbage collector's pauses short while it holds many streams.

Gunicorn stops a worker with SIGTERM (on shutdown, ``HUP`` reload, or scaling down)
and then waits up to ``--graceful-timeout`` for its requests to finish. An event
stream never finishes by itself, so without help each one holds the worker for
the whole grace period and is then cut off mid-body. With these hooks the worker
ends every stream at once with a closing comment and a proper end of body, so
browsers reconnect (to a live worker) and resume with ``Last-Event-ID`` (S11).

Use it as the configuration module::

    gunicorn -k gevent -c python:flask_eventstream.gunicorn "app:app"

or, with a configuration file of your own, import the hook into it::

    from flask_eventstream.gunicorn import post_worker_init

Works with the ``gevent``, ``gthread`` and ``sync`` workers: the worker's own
SIGTERM handler still runs after ours.

It also warns, in gunicorn's log, when several workers each run their own memory
broker: a page then gets only the events published in its own worker.

The same hook calls :func:`gc.freeze` once the worker has loaded the app: what
exists then (modules, the app, its config) lives as long as the worker, and
frozen, full collections no longer walk it. With 1,000 streams at 50 events/s,
the longest collection pause went from about 70 ms to 20-30 ms (figures in
``docs/performance.md``); every delivery in flight waits out such a pause.
"""

from __future__ import annotations

import _thread
import atexit
import gc
import logging
import signal
from typing import Any

from .brokers import MemoryBroker
from .brokers._fanout import end_all_streams

__all__ = [
    "install_sigterm_handler",
    "post_worker_init",
    "warn_memory_broker_across_workers",
]

logger = logging.getLogger(__name__)


def post_worker_init(worker: Any) -> None:
    """Gunicorn hook, called in each worker after it loaded the app and set up its
    signal handlers."""
    install_sigterm_handler()
    warn_memory_broker_across_workers(worker)
    gc.freeze()
    # Thawed at exit, while modules are still whole: else the frozen objects are
    # torn down late, and their finalizers (logging's) fail on cleared modules.
    atexit.register(gc.unfreeze)


def install_sigterm_handler() -> None:
    """Make SIGTERM end every open stream of this process, then do what it did.

    Call it in the main thread, after the server installed its own handler.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        # A signal handler may interrupt a thread holding a fan-out's lock: end the
        # streams from a new thread, never from here. Under gevent the handler runs
        # in the event loop, where threading.Thread.start() (which waits for the
        # thread) is forbidden; _thread.start_new_thread (a greenlet once patched)
        # returns at once in both worlds.
        _thread.start_new_thread(_end_streams, ())
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def _end_streams() -> None:
    ended = end_all_streams()
    logger.info("shutting down: ended %d open event streams", ended)


def warn_memory_broker_across_workers(worker: Any) -> None:
    """Log a warning when *worker* is one of several running the memory broker.

    Each process has its own memory broker: an event published in one worker never
    reaches the pages whose streams another worker holds, and nothing fails.
    """
    extensions = getattr(worker.wsgi, "extensions", None)
    state = extensions.get("eventstream") if isinstance(extensions, dict) else None
    broker = getattr(state, "broker", None)
    if worker.cfg.workers > 1 and isinstance(broker, MemoryBroker):
        worker.log.warning(
            "flask-eventstream: %d workers each run their own memory broker, so an "
            "event published in one worker misses the pages of the others; set "
            "EVENTSTREAM_BROKER_URL to a Redis URL, or run one worker",
            worker.cfg.workers,
        )
