"""Runs every scenario against every server, side by side, and writes the results.

Usage: ``python -m benchmarks.run --quick`` (``make bench``, about 10 minutes on
2 cores) or ``--full`` (``make bench-full``, the full sizes). Writes
``benchmarks/results/<date>-<quick|full>.md`` (a Markdown table with ratios to
Flask-SSE, versions, machine) and a ``.png`` chart beside it.

Servers (each started fresh, one worker process):

- ``ours-memory``: flask-eventstream, memory broker, gunicorn ``-k gevent`` with
  ``--config python:flask_eventstream.gunicorn`` (as ``docs/deploying.md`` says);
- ``ours-redis``: the same with the Redis broker;
- ``flask-sse``: Flask-SSE 1.0.0 + Redis, gunicorn ``-k gevent``;
- ``sse-starlette``: sse-starlette on uvicorn, an in-process broadcast;
- ``wsgi-floor`` and ``flask-floor``: not peers but references, ``idle``,
  ``churn`` and ``fanout-burst`` only: a bare WSGI app on gunicorn ``-k gevent``
  whose streams park on one shared event and write every event after their own
  cursor in one shared list (``apps/floor.py``), the least any WSGI library can
  cost on this server; and the same stream as a Flask view, the least for a
  Flask one;
- ``flask-floor-redis``: the Flask-view floor with every event going through
  Redis (one ``PUBLISH`` each, one subscribed connection per process), the
  reference for our Redis broker (``churn`` and ``fanout-burst``).

Scenarios (what each measures):

- ``idle``: N streams held open; worker RSS before and after (per-stream cost),
  then one event published: how many streams receive it within 1 s (of 15 s waited);
- ``fanout-burst`` / ``fanout-50/s``: S subscribers, E events published in the
  server as fast as it can / at 50 per second; deliveries per second (from the
  publish request to the last receive), p50/p99 publish-to-receive latency, and
  how many streams got every event exactly once, in order; for the burst also
  the worker's CPU per delivery over that span;
- ``churn``: C short connections, 50 at a time, each reads one event (the server
  publishes 200 events/s meanwhile) and closes: connections per second; then
  subscribers, file descriptors and Redis clients left over, and the worker's
  CPU per connection while the clients ran. Three rounds (the burst too), the
  targets taking turns; the median round's rate and the median CPU are
  reported, the worst round's leaks;
- ``stalled``: R readers plus one that never reads (4 KiB receive buffer), large
  events: the readers' p99 latency and completeness, the worker's RSS growth, and
  whether the server cut the stalled reader off;
- ``hostile``: H healthy readers, plus K that never read and V that vanish
  without a word (in a network namespace whose link is cut, ``vanish.py``; only
  as root, else none vanish), while events go out at 30/s: the healthy readers'
  p99 latency and completeness, the worker's RSS every second, how many hostile
  streams the server still holds as the publishing ends, and how many streams
  it holds 35 s after every client left or vanished (two of our heartbeats).
  gunicorn targets only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import multiprocessing
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from statistics import quantiles
from typing import Any

import psutil  # type: ignore[import-untyped]

from . import vanish
from .loadgen import (
    ChurnPlan,
    ChurnSummary,
    StreamPlan,
    StreamSummary,
    run_churn,
    run_streams,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
PROCS = 2  # client processes for the stream scenarios
#: The churn's client: one process holds its 50 connections (about a third of a
#: core at 1,000 connections/s), so that the one server worker keeps a core to
#: itself; with two it was scheduled beside one of them more often.
CHURN_PROCS = 1


@dataclass
class Sizes:
    idle: int
    fanout_subscribers: int
    fanout_events: int
    churn: int
    stalled_readers: int
    stalled_events: int
    stalled_size: int
    hostile_readers: int
    hostile_stalled: int
    hostile_vanished: int
    hostile_events: int


QUICK = Sizes(2000, 500, 100, 1000, 50, 1500, 8192, 300, 30, 30, 600)
FULL = Sizes(10_000, 1000, 200, 2000, 100, 1500, 8192, 1000, 100, 100, 1200)


# Processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _http(port: int, path: str, method: str = "GET", timeout: float = 10) -> str:
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


def _wait(condition: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if condition():
                return True
        time.sleep(step)
    return False


class Redis:
    """One ``redis-server``; a node of a :class:`RedisCluster` with *cluster*."""

    def __init__(
        self, port: int | None = None, *, cluster: bool = False, binary: str = ""
    ) -> None:
        self.port = port or _free_port()
        binary = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.workdir = tempfile.mkdtemp(prefix="bench-redis-")
        extra = ["--cluster-enabled", "yes", "--dir", self.workdir] if cluster else []
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "40000",
                "--logfile",
                "",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
        )
        self.url = f"redis://{HOST}:{self.port}/0"
        if not _wait(self._ping, 15):
            raise RuntimeError("redis-server did not start")

    def _command(self, *words: str) -> bytes:
        with socket.create_connection((HOST, self.port), timeout=5) as sock:
            parts = [f"${len(w)}\r\n{w}\r\n" for w in words]
            sock.sendall(f"*{len(words)}\r\n{''.join(parts)}".encode())
            data = b""
            while (
                not data.endswith(b"\r\n")
                or data.startswith(b"$")
                and data.count(b"\r\n") < 2
            ):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    def _ping(self) -> bool:
        return self._command("PING").startswith(b"+PONG")

    def clients(self) -> int:
        info = self._command("INFO", "clients").decode()
        for line in info.splitlines():
            if line.startswith("connected_clients:"):
                return int(line.split(":")[1]) - 1  # not this one
        return -1

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)
        shutil.rmtree(self.workdir, ignore_errors=True)


class RedisCluster:
    """Three ``redis-server`` cluster nodes, each a primary (no replicas), with the
    same settings as :class:`Redis`; the broker URL names all three."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        self.nodes: list[Redis] = []
        for _ in range(3):
            port = _free_port()
            while port + 10000 > 65535 or not _bindable(port + 10000):
                port = _free_port()  # the cluster bus listens on port + 10000
            self.nodes.append(Redis(port, cluster=True, binary=binary))
        subprocess.run(
            [
                cli, "--cluster", "create",
                *(f"{HOST}:{node.port}" for node in self.nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True, stdout=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        if not _wait(self._ok, 30):
            raise RuntimeError("the Redis Cluster did not settle")
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.nodes)
        self.url = f"redis+cluster://{hosts}"

    def _ok(self) -> bool:
        return all(
            b"cluster_state:ok" in node._command("CLUSTER", "INFO")
            for node in self.nodes
        )

    def clients(self) -> int:
        return sum(node.clients() for node in self.nodes)

    def rss(self) -> int:
        return sum(node.rss() for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


@dataclass
class Target:
    name: str
    kind: str  # "ours", "flask-sse", "starlette", "floor"
    broker: str = "memory"  # for ours; for a floor, which app of apps/floor.py
    scenarios: tuple[str, ...] | None = None  # those it serves; None: all
    source: Path | None = None  # for ours: another checkout's src/ (--before)


class Server:
    """One target's server process (one worker) and, when it needs one, a Redis."""

    def __init__(self, target: Target, also_on: str | None = None) -> None:
        """:param also_on: a second address gunicorn listens on (the port is the
        same), for clients in a network namespace."""
        self.target = target
        self.port = _free_port()
        self.redis: Redis | RedisCluster | None = None
        if target.kind == "flask-sse" or target.broker in _REDIS_FLOORS + ("redis",):
            self.redis = Redis()
        elif target.broker == "cluster":
            self.redis = RedisCluster()
        path = [str(target.source)] if target.source is not None else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([*path, str(ROOT)]))
        bind = f"{HOST}:{self.port}"
        gunicorn = [
            sys.executable,
            "-m",
            "gunicorn",
            "-b",
            bind,
            "-w",
            "1",
            "-k",
            "gevent",
            "--worker-connections",
            "30000",
            "--backlog",
            "4096",
            "--timeout",
            "120",
            # Stopping a server between scenarios is not measured: without this,
            # gunicorn waits its default 30 s for streams that never end.
            "--graceful-timeout",
            "2",
            "--log-level",
            "warning",
        ]
        if also_on is not None:
            gunicorn += ["-b", f"{also_on}:{self.port}"]
        if target.kind == "ours":
            if self.redis is not None:
                env["EVENTSTREAM_BROKER_URL"] = self.redis.url
            # As docs/deploying.md recommends: SIGTERM hook and gc.freeze().
            config = ["--config", "python:flask_eventstream.gunicorn"]
            args = [*gunicorn, *config, "benchmarks.apps.ours:app"]
        elif target.kind == "floor":
            if self.redis is not None:
                env["REDIS_URL"] = self.redis.url
            args = [*gunicorn, f"benchmarks.apps.floor:{target.broker}"]
        elif target.kind == "flask-sse":
            assert self.redis is not None
            env["REDIS_URL"] = self.redis.url
            args = [*gunicorn, "benchmarks.apps.flask_sse_app:app"]
        else:
            args = [
                sys.executable,
                "-m",
                "uvicorn",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--backlog",
                "4096",
                "--timeout-graceful-shutdown",
                "2",
                "--log-level",
                "warning",
                "--no-access-log",
                "benchmarks.apps.starlette_app:app",
            ]
        self.process = subprocess.Popen(args, cwd=ROOT, env=env)
        if not _wait(lambda: bool(self.get("/pid")), 30):
            raise RuntimeError(f"{target.name} did not start")
        self.worker = psutil.Process(int(self.get("/pid")))

    def get(self, path: str) -> str:
        return _http(self.port, path, timeout=30)

    def post(self, path: str) -> str:
        return _http(self.port, path, method="POST", timeout=30)

    def count(self, channel: str) -> int:
        return int(self.get(f"/count?channel={channel}"))

    def rss(self) -> int:
        return int(self.worker.memory_info().rss)

    def fds(self) -> int:
        return int(self.worker.num_fds())

    def cpu(self) -> float:
        """Seconds of CPU the worker used so far (user and system)."""
        times = self.worker.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.redis is not None:
            self.redis.stop()


# Client processes


class Clients:
    """Several load-generator processes holding streams, driven over pipes."""

    def __init__(self, plans: list[StreamPlan]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.processes = []
        for plan in plans:
            ours, theirs = context.Pipe()
            process = context.Process(
                target=run_streams, args=(plan, theirs), daemon=True
            )
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    def ready(self, timeout: float) -> tuple[int, int]:
        opened = failed = 0
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError("a client process did not get ready")
            _, got, lost = pipe.recv()
            opened, failed = opened + got, failed + lost
        return opened, failed

    def results(self, timeout: float) -> list[StreamSummary]:
        deadline = time.monotonic() + timeout
        summaries = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                pipe.send("stop")
            summaries.append(pipe.recv()[1])
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for process in self.processes:
            process.join(timeout=30)
        return summaries


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _latencies(summaries: list[StreamSummary]) -> list[float]:
    values: array[int] = array("q")
    for summary in summaries:
        values.frombytes(summary.latencies)
    return sorted(v / 1e6 for v in values)


def _percentiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    cuts = quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


class PeakRss:
    """Samples a process's RSS in a thread; ``peak`` is the largest seen."""

    def __init__(self, sample: Callable[[], int]) -> None:
        self.peak = sample()
        self._sample = sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._sample())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# Scenarios


def _stream_plans(
    server: Server, channel: str, conns: int, expect: int, stalled: int = 0
) -> list[StreamPlan]:
    parts = [n for n in _split(conns, PROCS) if n]
    return [
        StreamPlan(
            HOST,
            server.port,
            f"/stream?channel={channel}",
            n,
            expect,
            stalled=stalled if i == 0 else 0,
        )
        for i, n in enumerate(parts)
    ]


def _settle(server: Server, channel: str) -> None:
    _wait(lambda: server.count(channel) == 0, 30, 0.5)


def idle(server: Server, n: int) -> dict[str, Any]:
    channel = "idle"
    time.sleep(1)
    before = server.rss()
    clients = Clients(_stream_plans(server, channel, n, 1))
    opened, failed = clients.ready(180)
    counts: list[int] = []  # Flask-SSE's /count may fail at 10,000 (EMFILE)
    _wait(
        lambda: counts.append(server.count(channel)) or counts[-1] >= opened, 120, 0.5
    )
    subscribed: float = counts[-1] if counts else math.nan
    time.sleep(2)
    after = server.rss()
    _wait(lambda: bool(server.post(f"/publish?channel={channel}&count=1")), 10)
    summaries = clients.results(15)
    latencies = _latencies(summaries)
    _settle(server, channel)
    return {
        "streams": n,
        "subscribed": subscribed,
        "failed": failed,
        "rss_mib": after / 2**20,
        "kib_per_stream": (after - before)
        / max(1, counts[-1] if counts else opened)
        / 1024,
        "within_1s": sum(1 for v in latencies if v <= 1000),
        "within_15s": len(latencies),
    }


def fanout(
    server: Server, subscribers: int, events: int, rate: float, size: int = 100
) -> dict[str, Any]:
    channel = f"fanout{int(rate)}"
    clients = Clients(_stream_plans(server, channel, subscribers, events))
    clients.ready(60)
    _wait(lambda: server.count(channel) >= subscribers, 60, 0.2)
    start = time.time_ns()
    cpu = server.cpu()
    server.post(f"/publish?channel={channel}&count={events}&rate={rate}&size={size}")
    expected_span = events / rate if rate else 0
    summaries = clients.results(expected_span + 60)
    cpu = server.cpu() - cpu
    latencies = _latencies(summaries)
    deliveries = sum(s.deliveries for s in summaries)
    last = max(s.last_receive for s in summaries)
    p50, p99 = _percentiles(latencies)
    _settle(server, channel)
    return {
        "deliveries": deliveries,
        "expected": subscribers * events,
        "per_second": deliveries / max(1e-9, (last - start) / 1e9),
        "p50_ms": p50,
        "p99_ms": p99,
        "complete": sum(s.complete for s in summaries),
        "disordered": sum(s.disordered for s in summaries),
        "subscribers": subscribers,
        "cpu_us": cpu / max(1, deliveries) * 1e6,
    }


def churn(server: Server, total: int, concurrency: int = 50) -> dict[str, Any]:
    channel = "churn"
    fds_before = server.fds()
    server.post(f"/publish?channel={channel}&count=1000000&rate=200&size=50")
    # Counted once the app publishes: the connection it publishes on is its own,
    # not one a stream left behind.
    time.sleep(0.5)
    redis_before = server.redis.clients() if server.redis else 0
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    cpu = server.cpu()
    for part in _split(total, CHURN_PROCS):
        plan = ChurnPlan(
            HOST,
            server.port,
            f"/stream?channel={channel}",
            part,
            concurrency // CHURN_PROCS,
        )
        ours, theirs = context.Pipe()
        process = context.Process(target=run_churn, args=(plan, theirs), daemon=True)
        process.start()
        pipes.append(ours)
        processes.append(process)
    summaries: list[ChurnSummary] = []
    for pipe in pipes:
        if pipe.poll(600):
            summaries.append(pipe.recv()[1])
    cpu = server.cpu() - cpu
    for process in processes:
        process.join(timeout=30)
    # The ticks go on a while, so servers that only notice a gone client when a
    # write fails get to notice; then they stop.
    time.sleep(3)
    server.post("/stop")
    _settle(server, channel)
    time.sleep(1)
    started = min(s.started for s in summaries)
    finished = max(s.finished for s in summaries)
    ok = sum(s.ok for s in summaries)
    return {
        "connections": total,
        "ok": ok,
        "failed": sum(s.failed for s in summaries),
        "per_second": ok / max(1e-9, finished - started),
        "cpu_us": cpu / max(1, ok) * 1e6,
        "subscribers_left": server.count(channel),
        "fds_leaked": server.fds() - fds_before,
        "redis_clients_leaked": (server.redis.clients() - redis_before)
        if server.redis
        else 0,
        "errors": [e for s in summaries for e in s.errors][:3],
    }


def stalled(server: Server, readers: int, events: int, size: int) -> dict[str, Any]:
    channel = "stalled"
    clients = Clients(_stream_plans(server, channel, readers + 1, events, stalled=1))
    clients.ready(60)
    _wait(lambda: server.count(channel) >= readers + 1, 60, 0.2)
    base = server.rss()
    peak = PeakRss(server.rss)
    rate = 500.0
    server.post(f"/publish?channel={channel}&count={events}&rate={rate}&size={size}")
    summaries = clients.results(events / rate + 60)
    top = peak.stop()
    latencies = _latencies(summaries)
    p50, p99 = _percentiles(latencies)
    _settle(server, channel)
    return {
        "readers": readers,
        "complete": sum(s.complete for s in summaries),
        "p50_ms": p50,
        "p99_ms": p99,
        "rss_growth_mib": (top - base) / 2**20,
        "stalled_cut_off": sum(s.stalled_closed_by_server for s in summaries),
    }


def hostile(
    server: Server,
    island: vanish.Island | None,
    sizes: Sizes,
    rate: float = 30.0,
    size: int = 1024,
) -> dict[str, Any]:
    channel = "hostile"
    readers, stalled, events = (
        sizes.hostile_readers,
        sizes.hostile_stalled,
        sizes.hostile_events,
    )
    plans = _stream_plans(server, channel, readers + stalled, events, stalled)
    clients = Clients(plans)
    clients.ready(60)
    path = f"/stream?channel={channel}"
    vanished = 0
    if island is not None and island.open_streams(
        server.port, path, sizes.hostile_vanished
    ):
        vanished = sizes.hostile_vanished
    _wait(lambda: server.count(channel) >= readers + stalled + vanished, 60, 0.2)
    if island is not None:
        island.cut()
    rss: list[float] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(1.0):
            with contextlib.suppress(psutil.Error):
                rss.append(server.rss() / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    server.post(f"/publish?channel={channel}&count={events}&rate={rate}&size={size}")
    time.sleep(0.9 * events / rate)  # near the end, every healthy reader still in
    held = server.count(channel) - readers
    summaries = clients.results(events / rate + 60)
    _wait(lambda: server.count(channel) == 0, 35, 0.5)
    held_later = server.count(channel)
    sampling.set()
    sampler.join()
    latencies = _latencies(summaries)
    p50, p99 = _percentiles(latencies)
    return {
        "readers": readers,
        "stalled": stalled,
        "vanished": vanished,
        "complete": sum(s.complete for s in summaries),
        "p50_ms": p50,
        "p99_ms": p99,
        "rss_peak_mib": max(rss, default=math.nan),
        "rss_end_mib": rss[-1] if rss else math.nan,
        "rss_over_time": [round(v) for v in rss[::5]],
        "hostile_held": held,
        "hostile_held_35s_later": held_later,
    }


# Report


def _versions() -> dict[str, str]:
    names = [
        "flask-eventstream",
        "flask",
        "flask-sse",
        "sse-starlette",
        "starlette",
        "uvicorn",
        "gunicorn",
        "gevent",
        "redis",
    ]
    found = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    found["python"] = platform.python_version()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with contextlib.suppress(OSError):
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True
        ).stdout
        found["redis-server"] = out.split()[2].removeprefix("v=")
    return found


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# (scenario, metric, label, better): better is "high", "low" or "" (no ratio).
ROWS = [
    ("idle", "rss_mib", "idle: worker RSS, MiB", "low"),
    ("idle", "kib_per_stream", "idle: RSS per stream, KiB", "low"),
    ("idle", "within_1s", "idle: streams receiving the event within 1 s", "high"),
    ("idle", "within_15s", "idle: ... within 15 s", "high"),
    ("fanout-burst", "per_second", "fan-out burst: deliveries/s", "high"),
    ("fanout-burst", "cpu_us", "fan-out burst: worker CPU per delivery, µs", "low"),
    ("fanout-burst", "p50_ms", "fan-out burst: p50 latency, ms", "low"),
    ("fanout-burst", "p99_ms", "fan-out burst: p99 latency, ms", "low"),
    (
        "fanout-burst",
        "complete",
        "fan-out burst: streams with every event once, in order",
        "",
    ),
    ("fanout-50/s", "per_second", "fan-out 50/s: deliveries/s", "high"),
    ("fanout-50/s", "p50_ms", "fan-out 50/s: p50 latency, ms", "low"),
    ("fanout-50/s", "p99_ms", "fan-out 50/s: p99 latency, ms", "low"),
    (
        "fanout-50/s",
        "complete",
        "fan-out 50/s: streams with every event once, in order",
        "",
    ),
    ("churn", "per_second", "churn: connections/s (median round)", "high"),
    ("churn", "cpu_us", "churn: worker CPU per connection, µs", "low"),
    ("churn", "failed", "churn: failed connections", ""),
    ("churn", "subscribers_left", "churn: subscribers left after", ""),
    ("churn", "fds_leaked", "churn: worker fds leaked", ""),
    ("churn", "redis_clients_leaked", "churn: Redis clients leaked", ""),
    ("stalled", "p99_ms", "1 stalled: others' p99 latency, ms", "low"),
    ("stalled", "complete", "1 stalled: others complete", ""),
    ("stalled", "rss_growth_mib", "1 stalled: worker RSS growth, MiB", "low"),
    ("stalled", "stalled_cut_off", "1 stalled: cut off by the server", ""),
    ("hostile", "p99_ms", "hostile: healthy readers' p99 latency, ms", "low"),
    ("hostile", "complete", "hostile: healthy readers complete", ""),
    ("hostile", "rss_peak_mib", "hostile: worker RSS peak, MiB", "low"),
    ("hostile", "rss_end_mib", "hostile: worker RSS at the end, MiB", "low"),
    ("hostile", "hostile_held", "hostile: hostile streams held as publishing ends", ""),
    (
        "hostile",
        "hostile_held_35s_later",
        "hostile: streams held 35 s after all left",
        "",
    ),
]


def _ratio(ours: Any, theirs: Any, better: str) -> str:
    if (
        not better
        or not isinstance(ours, (int, float))
        or not isinstance(theirs, (int, float))
    ):
        return ""
    if ours != ours or theirs != theirs:
        return ""
    if better == "high":
        return f"{ours / theirs:.1f}x" if theirs else "∞"
    return f"{theirs / ours:.1f}x" if ours else "∞"


def _against_references(
    results: dict[str, dict[str, dict[str, Any]]], before: str | None
) -> list[str]:
    """Ours against the Flask-view floor of the same broker (churn, fan-out burst)
    and, with ``--before``, against ours at that revision: rates (median rounds),
    > 1 is better now."""
    lines: list[str] = []
    for broker, floor_name in (
        ("memory", "flask-floor"),
        ("redis", "flask-floor-redis"),
    ):
        now = results.get(f"ours-{broker}", {})
        then = results.get(f"ours-{broker}-before", {})
        floors = results.get(floor_name, {})
        for scenario, data in now.items():
            rate = data.get("per_second")
            if not isinstance(rate, (int, float)):
                continue
            parts = []
            floor = floors.get(scenario, {}).get("per_second")
            if isinstance(floor, (int, float)) and floor:
                parts.append(f"{rate / floor:.2f}x the {floor_name}")
            old = then.get(scenario, {}).get("per_second")
            if isinstance(old, (int, float)) and old:
                parts.append(f"{rate / old:.2f}x {before}")
            cpu = data.get("cpu_us")
            floor_cpu = floors.get(scenario, {}).get("cpu_us")
            if cpu and floor_cpu:
                parts.append(
                    f"worker CPU per unit {_fmt(cpu)} µs against the floor's "
                    f"{_fmt(floor_cpu)} ({floor_cpu / cpu:.2f}x)"
                )
            if parts:
                lines.append(f"- ours-{broker} {scenario}: " + "; ".join(parts))
    if lines:
        lines = ["", "Against the references (median rounds, per second):", "", *lines]
    return lines


def report(
    results: dict[str, dict[str, dict[str, Any]]],
    mode: str,
    sizes: Sizes,
    started: datetime.datetime,
    load: tuple[float, float, float],
    elapsed: float,
    before: str | None = None,
) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{started:%Y-%m-%d}-{mode}{'-before-after' if before else ''}"
    names = list(results)
    ours = [n for n in names if n.startswith("ours")]
    lines = [
        f"# Benchmark results: {mode}, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {_machine()}. Load average when started: "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other work shares these cores:"
        " figures are comparable within this run, not across machines). "
        f"Run took {elapsed / 60:.1f} min.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()) + ".",
        "",
        f"Sizes: {sizes.idle:,} idle streams; fan-out {sizes.fanout_subscribers:,} "
        f"subscribers x {sizes.fanout_events} events; churn {sizes.churn:,} "
        f"connections, 50 at a time; stalled: {sizes.stalled_readers} readers + 1 "
        f"stalled, {sizes.stalled_events} events of {sizes.stalled_size:,} bytes at "
        "500/s; hostile: "
        f"{sizes.hostile_readers:,} readers + {sizes.hostile_stalled} that never "
        f"read + {sizes.hostile_vanished} that vanish (as root), "
        f"{sizes.hostile_events} events of 1,024 bytes at 30/s. "
        "Each server: one worker process (gunicorn -k gevent; uvicorn); "
        "the load generator: 2 asyncio processes on the same machine "
        "(1 for the churn).",
        "",
        "Ratios: ours vs Flask-SSE, > 1 is better for us (for latency and memory, "
        "Flask-SSE's figure divided by ours).",
        "",
    ]
    header = ["", *names, *(f"{n} / flask-sse" for n in ours)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for scenario, metric, label, better in ROWS:
        row = [label]
        values = [results[n].get(scenario, {}).get(metric, "n/a") for n in names]
        row += [_fmt(v) for v in values]
        theirs = results.get("flask-sse", {}).get(scenario, {}).get(metric)
        for n in ours:
            row.append(_ratio(results[n].get(scenario, {}).get(metric), theirs, better))
        lines.append("| " + " | ".join(row) + " |")
    lines += _every_round(
        results, "rounds", "Every round (the targets took turns), per second:"
    )
    lines += _every_round(
        results,
        "cpu_rounds",
        "Every round, the worker's CPU per delivery (fan-out) or connection "
        "(churn), µs:",
    )
    errors = [
        f"- {n} {scenario}: {data['errors']}"
        for n in names
        for scenario, data in results[n].items()
        if data.get("errors")
    ]
    over_time = [
        f"- {n}: " + ", ".join(str(v) for v in data["rss_over_time"])
        for n in names
        if (data := results[n].get("hostile", {})).get("rss_over_time")
    ]
    if over_time:
        lines += ["", "hostile: worker RSS (MiB) every 5 s:", "", *over_time]
    if errors:
        lines += ["", "Errors seen (first few):", "", *errors]
    lines += _against_references(results, before)
    lines += ["", f"Chart: `{stem.name}.png`.", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    _chart(results, stem.with_suffix(".png"), mode)
    return stem.with_suffix(".md")


def _every_round(
    results: dict[str, dict[str, dict[str, Any]]], key: str, title: str
) -> list[str]:
    """Lines listing each target's figures *key* of every round, under *title*."""
    listed = [
        f"- {n} {scenario}: " + ", ".join(_fmt(v) for v in data[key])
        for n in results
        for scenario, data in results[n].items()
        if data.get(key)
    ]
    return ["", title, "", *listed] if listed else []


def _chart(
    results: dict[str, dict[str, dict[str, Any]]], path: Path, mode: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("idle", "rss_mib", "idle streams: worker RSS (MiB, lower is better)"),
        ("fanout-burst", "per_second", "fan-out burst: deliveries/s"),
        ("fanout-burst", "p99_ms", "fan-out burst: p99 latency (ms)"),
        ("fanout-50/s", "p99_ms", "fan-out 50/s: p99 latency (ms)"),
        ("churn", "per_second", "churn: connections/s"),
        ("stalled", "p99_ms", "1 stalled reader: others' p99 (ms)"),
    ]
    names = list(results)
    colours = ["#2b6cb0", "#63b3ed", "#c53030", "#718096", "#a0aec0", "#cbd5e0"]
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for axis, (scenario, metric, title) in zip(axes.flat, panels, strict=True):
        values = [
            float(results[n].get(scenario, {}).get(metric, 0) or 0) for n in names
        ]
        bars = axis.bar(names, values, color=colours[: len(names)])
        axis.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelsize=8, rotation=15)
    figure.suptitle(f"flask-eventstream vs Flask-SSE and sse-starlette ({mode})")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


#: The apps of ``apps/floor.py`` whose events go through Redis.
_REDIS_FLOORS = ("flask_redis_app",)

#: What sse-starlette's uvicorn runs: not ``hostile``, which needs a gunicorn that
#: listens on a second address.
_UVICORN_SCENARIOS = ("idle", "fanout-burst", "fanout-50/s", "churn", "stalled")


def _targets(only: list[str] | None, before: Path | None = None) -> list[Target]:
    targets = [
        Target("ours-memory", "ours", "memory"),
        Target("ours-redis", "ours", "redis"),
    ]
    if before is not None:
        targets += [
            Target("ours-memory-before", "ours", "memory", source=before),
            Target("ours-redis-before", "ours", "redis", source=before),
        ]
    targets += [
        Target("flask-sse", "flask-sse"),
        Target("sse-starlette", "starlette", scenarios=_UVICORN_SCENARIOS),
    ]
    floors = ("idle", "churn", "fanout-burst")
    for name, app in (("wsgi-floor", "app"), ("flask-floor", "flask_app")):
        targets.append(Target(name, "floor", app, scenarios=floors))
    redis_floor = _REDIS_FLOORS[0]
    targets.append(
        Target("flask-floor-redis", "floor", redis_floor, scenarios=floors[1:])
    )
    return [t for t in targets if not only or t.name in only]


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (200_000, 65_536, hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
            return


@contextlib.contextmanager
def _serving(target: Target, also_on: str | None) -> Iterator[Server]:
    server = Server(target, also_on)
    try:
        yield server
    finally:
        server.stop()


#: Rounds of a scenario, whose median is reported; one for the others. The churn
#: takes 2 to 10 s per server, and its rate swung by up to a third between two
#: runs of the same server here; so did a burst's.
ROUNDS = {"churn": 3, "fanout-burst": 3}

#: Figures of a round that count the worst, not the median, round: leaks.
_WORST = ("failed", "subscribers_left", "fds_leaked", "redis_clients_leaked")


def _run_once(
    target: Target,
    name: str,
    scenario: Callable[[Server], dict[str, Any]],
    also_on: str | None = None,
) -> dict[str, Any]:
    # A fresh server per scenario: nothing left over from the one before.
    with _serving(target, also_on) as server:
        print(f"{target.name}: {name} ...", flush=True)
        try:
            result = scenario(server)
        except Exception as exc:  # keep going: one failure is a result too
            result = {"errors": [repr(exc)]}
        print(f"  {result}", flush=True)
        return result


def _median_round(got: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median rate; leaks and failures from the worst round."""
    if len(got) == 1:
        return got[0]
    ordered = sorted(got, key=lambda r: float(r.get("per_second", 0)))
    result = dict(ordered[len(ordered) // 2])
    result["rounds"] = [round(float(r.get("per_second", 0)), 1) for r in got]
    # The worker's CPU per unit, its own median: where the worker is saturated
    # (the churn) the rate is about its inverse; where it is not (a burst, which
    # the load generator's parsing bounds), it is the server's share.
    cpus = [round(float(r["cpu_us"]), 2) for r in got if "cpu_us" in r]
    if cpus:
        result["cpu_us"] = sorted(cpus)[len(cpus) // 2]
        result["cpu_rounds"] = cpus
    for key in _WORST:
        values = [r[key] for r in got if key in r]
        if values:
            result[key] = max(values)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full sizes")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (default)")
    parser.add_argument("--only", nargs="*", help="targets to run")
    parser.add_argument("--scenarios", nargs="*", help="scenarios to run")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also run ours as of this git revision (a before/after comparison)",
    )
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    sizes = FULL if args.full else QUICK
    _raise_fd_limit()
    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    clock = time.monotonic()
    scenarios: dict[str, Callable[[Server], dict[str, Any]]] = {
        "idle": lambda s: idle(s, sizes.idle),
        "fanout-burst": lambda s: fanout(
            s, sizes.fanout_subscribers, sizes.fanout_events, 0
        ),
        "fanout-50/s": lambda s: fanout(
            s, sizes.fanout_subscribers, sizes.fanout_events, 50
        ),
        "churn": lambda s: churn(s, sizes.churn),
        "stalled": lambda s: stalled(
            s, sizes.stalled_readers, sizes.stalled_events, sizes.stalled_size
        ),
        "hostile": lambda s: hostile(s, island, sizes),
    }
    before = _checkout(args.before) if args.before else None
    island = None
    if vanish.available() and (not args.scenarios or "hostile" in args.scenarios):
        with contextlib.suppress(subprocess.CalledProcessError):
            island = vanish.Island()
    try:
        return _run(args, scenarios, island, mode, sizes, started, load, clock, before)
    finally:
        if island is not None:
            island.remove()
        if before is not None:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before.parent)],
                cwd=ROOT,
                check=False,
            )


def _checkout(revision: str) -> Path:
    """A worktree of *revision* beside this one; its ``src/`` directory."""
    place = Path(tempfile.mkdtemp(prefix="bench-before-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(place), revision],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return place / "src"


def _run(
    args: argparse.Namespace,
    scenarios: dict[str, Callable[[Server], dict[str, Any]]],
    island: vanish.Island | None,
    mode: str,
    sizes: Sizes,
    started: datetime.datetime,
    load: tuple[float, float, float],
    clock: float,
    before: Path | None = None,
) -> int:
    targets = _targets(args.only, before)
    results: dict[str, dict[str, dict[str, Any]]] = {t.name: {} for t in targets}
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in targets}
    for name, scenario in scenarios.items():
        if args.scenarios and name not in args.scenarios:
            continue
        # Short scenarios run several rounds, the targets taking turns, so a slow
        # spell of this shared machine lands on all of them alike.
        for _ in range(ROUNDS.get(name, 1)):
            for target in targets:
                if target.scenarios is not None and name not in target.scenarios:
                    continue
                got = rounds[target.name].setdefault(name, [])
                also_on = island.host_ip if island and name == "hostile" else None
                got.append(_run_once(target, name, scenario, also_on))
    for target in targets:
        for name, got in rounds[target.name].items():
            results[target.name][name] = _median_round(got)
    path = report(
        results, mode, sizes, started, load, time.monotonic() - clock, args.before
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
