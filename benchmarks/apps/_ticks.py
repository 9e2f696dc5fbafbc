"""The benchmark protocol every app serves, and its publisher loop.

- ``GET /stream?channel=NAME``: an event stream of the channel;
- ``POST /publish?channel=NAME&count=N&rate=R&size=S``: starts publishing, in the
  server, *N* events at *R* per second (0: as fast as it can, a burst); answers at
  once. Each event's data is JSON ``{"seq": i, "t": <time.time_ns() at publish>,
  "pad": "..."}`` padded to about *S* bytes, so the load generator measures
  publish-to-receive latency and checks order;
- ``POST /stop``: stops every publishing loop of this process;
- ``GET /count?channel=NAME``: subscribers of the channel;
- ``GET /pid``: the process id of the worker that answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

# Bumped by ``POST /stop``; a loop stops when it changes. A benchmark app's global.
_generation = [0]


def stop_all() -> None:
    """Make every running publish loop of this process stop."""
    _generation[0] += 1


def stopped(generation: int) -> bool:
    return _generation[0] != generation


def generation() -> int:
    return _generation[0]


def payloads(count: int, size: int) -> Callable[[int], str]:
    """A function giving the data of event *i*, stamped with the current time."""
    pad = "x" * max(0, size - 40)

    def data(seq: int) -> str:
        return json.dumps({"seq": seq, "t": time.time_ns(), "pad": pad})

    return data


def publish_loop(
    publish: Callable[[str], object],
    count: int,
    rate: float,
    size: int,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Publish *count* events at *rate* per second (0 = burst) with *publish*."""
    data = payloads(count, size)
    start = time.monotonic()
    current = generation()
    for seq in range(count):
        if stopped(current):
            return
        if rate:
            delay = start + seq / rate - time.monotonic()
            if delay > 0:
                sleep(delay)
        publish(data(seq))
