"""The Redis broker on a three-node Redis Cluster against one Redis, in one run.

Usage: ``python -m benchmarks.cluster`` (about 5 minutes on 2 cores; ``--full``
for the full sizes). Writes ``benchmarks/results/<date>-cluster.md``.

Targets (each started fresh per scenario, one gunicorn gevent worker, as in
``benchmarks/run.py``):

- ``ours-redis``: flask-eventstream with the Redis broker on one ``redis-server``;
- ``ours-cluster``: the same on a Redis Cluster of three primaries (no replicas)
  on this machine, ``redis+cluster://``.

Scenarios (``benchmarks/run.py``'s, the targets taking turns each round):

- ``fanout-burst`` / ``fanout-50/s``: S subscribers of one channel, E events
  published in the server as fast as it can / at 50 per second: deliveries per
  second, p50/p99 publish-to-receive latency, streams complete and in order.
  One channel lives on one primary: this measures the cluster's path (the
  publish script's announcement on sharded pub/sub, the listener's connection
  per primary) against ``XREAD``, not the spread over primaries.
- ``churn``: C short connections, 50 at a time, each reading one event while the
  server publishes 200 events/s: connections per second; subscribers, file
  descriptors and Redis connections left over (summed over the nodes).

Each scenario runs three rounds; the median round's rate is reported, the
worst round's leaks.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .run import (
    FULL,
    QUICK,
    RESULTS,
    Server,
    Target,
    _machine,
    _median_round,
    _raise_fd_limit,
    _versions,
    churn,
    fanout,
)

TARGETS = [
    Target("ours-redis", "ours", "redis"),
    Target("ours-cluster", "ours", "cluster"),
]
ROUNDS = 3

#: (scenario, figure, label, format)
ROWS = [
    ("fanout-burst", "per_second", "fan-out burst: deliveries/s", "{:,.0f}"),
    ("fanout-burst", "p50_ms", "fan-out burst: p50 ms", "{:,.0f}"),
    ("fanout-burst", "p99_ms", "fan-out burst: p99 ms", "{:,.0f}"),
    ("fanout-burst", "complete", "fan-out burst: streams complete", "{:,}"),
    ("fanout-50/s", "p50_ms", "fan-out 50/s: p50 ms", "{:,.0f}"),
    ("fanout-50/s", "p99_ms", "fan-out 50/s: p99 ms", "{:,.0f}"),
    ("fanout-50/s", "complete", "fan-out 50/s: streams complete", "{:,}"),
    ("churn", "per_second", "churn: connections/s", "{:,.0f}"),
    ("churn", "rounds", "churn: each round", "{}"),
    ("churn", "failed", "churn: failed", "{:,}"),
    ("churn", "subscribers_left", "churn: subscribers left", "{:,}"),
    ("churn", "redis_clients_leaked", "churn: Redis connections left", "{:,}"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full sizes")
    args = parser.parse_args(argv)
    sizes = FULL if args.full else QUICK
    _raise_fd_limit()
    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    clock = time.monotonic()
    scenarios: dict[str, Callable[[Server], dict[str, Any]]] = {
        "fanout-burst": lambda s: fanout(
            s, sizes.fanout_subscribers, sizes.fanout_events, 0
        ),
        "fanout-50/s": lambda s: fanout(
            s, sizes.fanout_subscribers, sizes.fanout_events, 50
        ),
        "churn": lambda s: churn(s, sizes.churn),
    }
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in TARGETS}
    for name, scenario in scenarios.items():
        for _ in range(ROUNDS):
            for target in TARGETS:
                server = Server(target)
                try:
                    print(f"{target.name}: {name} ...", flush=True)
                    try:
                        result = scenario(server)
                    except Exception as exc:  # one failure is a result too
                        result = {"errors": [repr(exc)]}
                    print(f"  {result}", flush=True)
                finally:
                    server.stop()
                rounds[target.name].setdefault(name, []).append(result)
    results = {
        target: {name: _median_round(got) for name, got in by_name.items()}
        for target, by_name in rounds.items()
    }
    lines = [
        f"# Benchmark: a Redis Cluster against one Redis, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {_machine()}. Load average when started: "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other work shares these cores)."
        f" Run took {(time.monotonic() - clock) / 60:.1f} min.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()) + ".",
        "",
        f"Sizes: fan-out {sizes.fanout_subscribers:,} subscribers x "
        f"{sizes.fanout_events} events on one channel; churn {sizes.churn:,} "
        "connections, 50 at a time. One gunicorn gevent worker; the cluster is "
        "three primaries on this machine. Median of 3 rounds (leaks: worst).",
        "",
        "| | " + " | ".join(t.name for t in TARGETS) + " |",
        "|---|" + "---|" * len(TARGETS),
    ]
    for scenario, figure, label, form in ROWS:
        cells = []
        for target in TARGETS:
            value = results[target.name].get(scenario, {}).get(figure, "n/a")
            cells.append(value if isinstance(value, str) else form.format(value))
        lines.append(f"| {label} | " + " | ".join(str(c) for c in cells) + " |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{started:%Y-%m-%d}-cluster.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
