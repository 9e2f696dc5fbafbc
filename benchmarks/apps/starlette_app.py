"""sse-starlette under test (uvicorn): an in-process broadcast to asyncio queues."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ._ticks import generation, payloads, stop_all, stopped

_subscribers: dict[str, set[asyncio.Queue[str]]] = {}


async def stream(request: Request) -> EventSourceResponse:
    channel = request.query_params.get("channel", "sse")
    queue: asyncio.Queue[str] = asyncio.Queue()
    _subscribers.setdefault(channel, set()).add(queue)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            while True:
                yield {"data": await queue.get()}
        finally:
            _subscribers[channel].discard(queue)

    return EventSourceResponse(events())


async def _publish_loop(channel: str, count: int, rate: float, size: int) -> None:
    data = payloads(count, size)
    loop = asyncio.get_running_loop()
    start = loop.time()
    current = generation()
    for seq in range(count):
        if stopped(current):
            return
        if rate:
            delay = start + seq / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        item = data(seq)
        for queue in list(_subscribers.get(channel, ())):
            queue.put_nowait(item)


_tasks: set[asyncio.Task[None]] = set()


async def publish(request: Request) -> PlainTextResponse:
    q = request.query_params
    task = asyncio.create_task(
        _publish_loop(
            q.get("channel", "sse"),
            int(q.get("count", "1")),
            float(q.get("rate", "0")),
            int(q.get("size", "100")),
        )
    )
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return PlainTextResponse("started")


async def stop(request: Request) -> PlainTextResponse:
    stop_all()
    return PlainTextResponse("stopped")


async def count(request: Request) -> PlainTextResponse:
    channel = request.query_params.get("channel", "sse")
    return PlainTextResponse(str(len(_subscribers.get(channel, ()))))


async def pid(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


app = Starlette(
    routes=[
        Route("/stream", stream),
        Route("/publish", publish, methods=["POST"]),
        Route("/stop", stop, methods=["POST"]),
        Route("/count", count),
        Route("/pid", pid),
    ]
)
