"""The load generator: many event-stream clients on raw asyncio sockets, no browser.

Each client process (see :func:`run_streams` and :func:`run_churn`) runs one
asyncio loop. Requests are HTTP/1.0, so every server answers with a plain body
(no chunked framing to decode) and closes at the end: the cheapest client, the
same for every server under test. Events carry ``{"seq": i, "t": ns}`` (see
``apps/_ticks.py``): the client checks that each stream sees ``seq`` 0, 1, 2, ...
exactly once, in order, and records ``receive time - t`` as the latency.

The client processes share the cores with the server under test, so any CPU
they spend shows up as the server's latency. A reading stream is therefore an
:class:`asyncio.BufferedProtocol` (:class:`_StreamProtocol`) that parses each
read at once, not a task awaiting an :class:`asyncio.StreamReader` (a future
and a task step per event), and it reads into one buffer allocated once per
process: the transport's own ``recv()`` asks for 256 KiB each time, and
allocating and freeing that much per read (an mmap for malloc) cost more than
everything else together: about 30 us per read, and a read is mostly one event.
A stalled stream, which reads nothing until the end, keeps the simpler reader.

Processes talk to the driver (``run.py``) over a :mod:`multiprocessing` pipe:
``("ready", opened, failed)`` once every stream sent its request, then
``("done", summary)``; the driver may send ``"stop"`` to end the wait early.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any


@dataclass
class StreamPlan:
    """What one client process does: open *conns* streams, wait for *expect* events."""

    host: str
    port: int
    path: str
    conns: int
    expect: int
    stalled: int = 0  # of the conns, how many never read (and have a tiny buffer)
    connect_concurrency: int = 256


@dataclass
class StreamSummary:
    opened: int = 0
    failed: int = 0
    complete: int = 0  # streams that got seq 0..expect-1 exactly once, in order
    disordered: int = 0  # streams that saw a duplicate, a gap or a reordering
    deliveries: int = 0
    latencies: bytes = b""  # array("q") of ns
    last_receive: int = 0
    stalled_closed_by_server: int = 0
    errors: list[str] = field(default_factory=list)


def _request(host: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


# One match per event. The data is our JSON, or (Flask-SSE) that JSON as a JSON
# string, with escaped quotes. A regex over the buffer is several times cheaper
# than splitting lines and json.loads(): the client must not be the bottleneck.
_STAMP = re.compile(rb'seq\\?": (\d+), \\?"t\\?": (\d+)')


class _Reader:
    """Splits a body into events and checks their sequence numbers."""

    __slots__ = ("buffer", "next_seq", "ok", "count", "in_head")

    def __init__(self) -> None:
        self.buffer = b""
        self.next_seq = 0
        self.ok = True
        self.count = 0
        self.in_head = True

    def feed(self, data: bytes, now: int, latencies: array[int]) -> None:
        buffer = (self.buffer + data).replace(b"\r\n", b"\n")
        if self.in_head:
            head, sep, rest = buffer.partition(b"\n\n")
            if not sep:
                self.buffer = buffer
                return
            if not head.split(b" ", 2)[1].startswith(b"200"):
                raise ConnectionError(head.split(b"\n", 1)[0].decode())
            self.in_head = False
            buffer = rest
        end = buffer.rfind(b"\n\n") + 2  # only whole events; the rest waits
        if end < 2:
            self.buffer = buffer
            return
        self.buffer = buffer[end:]
        for match in _STAMP.finditer(buffer, 0, end):
            seq = int(match[1])
            latencies.append(now - int(match[2]))
            if seq != self.next_seq:
                self.ok = False
            self.next_seq = seq + 1
            self.count += 1


def _socket(stalled: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if stalled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    return sock


async def _open(plan: StreamPlan) -> tuple[asyncio.StreamReader, Any]:
    """A stalled stream: a :class:`asyncio.StreamReader` it reads only at the end."""
    sock = _socket(stalled=True)
    await asyncio.get_running_loop().sock_connect(sock, (plan.host, plan.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    writer.write(_request(plan.host, plan.path))
    return reader, writer


async def _ended_by_server(reader: asyncio.StreamReader, wait: float = 5.0) -> bool:
    """Whether the server ended a stalled stream: read what it had queued (the
    server cannot close a connection while its write to it is blocked), then see
    whether the end comes within *wait* seconds, not just heartbeats. A reset
    ends it too: a server that cut the stream off may drop what it had queued."""

    async def drain() -> None:
        while await reader.read(1 << 18):
            pass

    try:
        await asyncio.wait_for(drain(), wait)
    except ConnectionResetError:
        return True
    except (asyncio.TimeoutError, OSError, ConnectionError):
        return False
    return True


class _Pending:
    """How many reading streams are not done yet; *all_done* is set at zero.

    One shared counter and one event, rather than a future per stream."""

    __slots__ = ("left", "all_done")

    def __init__(self, left: int) -> None:
        self.left = left
        self.all_done = asyncio.Event()
        if left <= 0:
            self.all_done.set()

    def one_done(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.all_done.set()


class _StreamProtocol(asyncio.BufferedProtocol):
    """Reads one stream: each read goes straight to :meth:`_Reader.feed`.

    Every stream of the process reads into the same *buffer*: the transport
    calls :meth:`get_buffer`, ``recv_into`` and :meth:`buffer_updated` in one go,
    so the bytes are copied out before another stream reads.

    Done (counted once in *pending*) when it has *expect* events, when the
    connection ends, or on a bad response. Then it stops reading, but the
    connection stays open until the process reports: closing it would change the
    server's subscriber count while the other streams are still measured."""

    __slots__ = (
        "state",
        "summary",
        "latencies",
        "expect",
        "pending",
        "buffer",
        "transport",
        "done",
    )

    def __init__(
        self,
        summary: StreamSummary,
        latencies: array[int],
        expect: int,
        pending: _Pending,
        buffer: memoryview,
    ) -> None:
        self.state = _Reader()
        self.summary = summary
        self.latencies = latencies
        self.expect = expect
        self.pending = pending
        self.buffer = buffer
        self.transport: asyncio.Transport | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.done:
            return
        now = time.time_ns()
        try:
            self.state.feed(bytes(self.buffer[:nbytes]), now, self.latencies)
        except (OSError, ValueError) as exc:
            self._error(exc)
            self.finish()
            return
        self.summary.last_receive = now
        if self.state.count >= self.expect:
            self.finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.done:
            self._error(exc)
        self.finish()

    def _error(self, exc: BaseException) -> None:
        if len(self.summary.errors) < 5:
            self.summary.errors.append(repr(exc))

    def finish(self) -> None:
        """Stop reading (idempotent): no more events are counted."""
        if self.done:
            return
        self.done = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.pending.one_done()


async def _streams(plan: StreamPlan, pipe: Connection) -> StreamSummary:
    summary = StreamSummary()
    latencies: array[int] = array("q")
    gate = asyncio.Semaphore(plan.connect_concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    writers: list[Any] = []
    streams: list[_StreamProtocol] = []
    pending = _Pending(plan.conns - plan.stalled)
    buffer = memoryview(bytearray(1 << 18))  # shared by every reading stream

    def failed(exc: OSError) -> None:
        summary.failed += 1
        if len(summary.errors) < 5:
            summary.errors.append(repr(exc))

    async def reading() -> None:
        async with gate:
            protocol = _StreamProtocol(summary, latencies, plan.expect, pending, buffer)
            sock = _socket(stalled=False)
            try:
                await loop.sock_connect(sock, (plan.host, plan.port))
                await loop.create_connection(lambda: protocol, sock=sock)
            except OSError as exc:
                sock.close()
                failed(exc)
                pending.one_done()
                return
            assert protocol.transport is not None
            protocol.transport.write(_request(plan.host, plan.path))
        summary.opened += 1
        streams.append(protocol)

    async def stalled() -> None:
        async with gate:
            try:
                reader, writer = await _open(plan)
            except OSError as exc:
                failed(exc)
                return
        summary.opened += 1
        writers.append(writer)
        await stop.wait()
        summary.stalled_closed_by_server += await _ended_by_server(reader)

    tasks = [
        asyncio.create_task(stalled() if i < plan.stalled else reading())
        for i in range(plan.conns)
    ]
    # "ready" once every connection was attempted and its request written.
    while summary.opened + summary.failed < plan.conns:
        await asyncio.sleep(0.05)
    pipe.send(("ready", summary.opened, summary.failed))
    stopper = loop.run_in_executor(None, pipe.recv)
    readers_done = asyncio.ensure_future(pending.all_done.wait())
    await asyncio.wait([stopper, readers_done], return_when=asyncio.FIRST_COMPLETED)
    readers_done.cancel()
    stop.set()
    for stream in streams:  # stop counting while the stalled ones drain (bounded)
        stream.finish()
    for task in tasks[plan.stalled :]:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for writer in writers:
        writer.close()
    for stream in streams:
        if stream.transport is not None:
            stream.transport.close()
        state = stream.state
        summary.deliveries += state.count
        if not state.ok:
            summary.disordered += 1
        elif state.count == plan.expect:
            summary.complete += 1
    summary.latencies = latencies.tobytes()
    if not stopper.done():
        pipe.send(("done", summary))
        await stopper  # the driver always sends "stop" eventually
    else:
        pipe.send(("done", summary))
    return summary


def run_streams(plan: StreamPlan, pipe: Connection) -> None:
    """Process entry point: hold *plan.conns* streams, report over *pipe*."""
    asyncio.run(_streams(plan, pipe))


@dataclass
class ChurnPlan:
    """Open *total* short connections, *concurrency* at a time; each reads one event."""

    host: str
    port: int
    path: str
    total: int
    concurrency: int


@dataclass
class ChurnSummary:
    ok: int = 0
    failed: int = 0
    started: float = 0.0
    finished: float = 0.0
    errors: list[str] = field(default_factory=list)


def _has_event(data: bytes) -> bool:
    start = data.find(b"data:")
    return start >= 0 and (
        data.find(b"\n\n", start) >= 0 or data.find(b"\r\n\r\n", start) >= 0
    )


class _ChurnProtocol(asyncio.Protocol):
    """One short connection: send the request, read until one whole event with
    data arrived, close. *done* gets ``None`` then, or the error that ended it.

    A protocol, not ``open_connection()`` and a ``StreamReader`` awaited under
    ``wait_for``: those cost a task step and a timer per read, and the churn
    client shares the cores with the server it measures (it cost about as much
    CPU per connection as the server's whole request handling)."""

    __slots__ = ("request", "done", "data", "transport")

    def __init__(self, request: bytes, done: asyncio.Future[BaseException | None]):
        self.request = request
        self.done = done
        self.data = b""
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.data += data
        if not self.done.done() and _has_event(self.data):
            self.done.set_result(None)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(exc or ConnectionError("closed before an event"))


async def _churn(plan: ChurnPlan) -> ChurnSummary:
    summary = ChurnSummary(started=time.time())
    left = plan.total
    request = _request(plan.host, plan.path)
    loop = asyncio.get_running_loop()

    async def one() -> BaseException | None:
        done: asyncio.Future[BaseException | None] = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: _ChurnProtocol(request, done), plan.host, plan.port
        )
        try:
            return await done
        finally:
            transport.close()

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                async with asyncio.timeout(10):
                    error = await one()
            except (OSError, asyncio.TimeoutError) as exc:
                error = exc
            if error is None:
                summary.ok += 1
                continue
            summary.failed += 1
            if len(summary.errors) < 5:
                summary.errors.append(repr(error))

    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    summary.finished = time.time()
    return summary


def run_churn(plan: ChurnPlan, pipe: Connection) -> None:
    """Process entry point: run the churn, send ``("done", summary)``."""
    pipe.send(("done", asyncio.run(_churn(plan))))
