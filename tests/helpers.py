"""Test helpers: a raw streaming HTTP client and bounded waits."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from flask_eventstream import Event, EventParser


class StreamClient:
    """Opens ``url`` with ``http.client`` and decodes the body with our parser.

    Every read is bounded by *timeout*; nothing here can hang a test.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=timeout
        )
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.connection.request("GET", path, headers=dict(headers or {}))
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers
        self.parser = EventParser()
        self.raw = bytearray()
        self.events: list[Event] = []
        self.ended = False

    def read_until(
        self, done: Callable[[StreamClient], bool], timeout: float = 5.0
    ) -> None:
        """Read until ``done(self)`` holds; fail after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while not done(self):
            if self.ended:
                raise AssertionError(f"stream ended early; got {bytes(self.raw)!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {bytes(self.raw)!r}")
            self.read_some()

    def read_some(self) -> bytes:
        chunk = self.response.read1(65536)
        if not chunk:
            self.ended = True
        self.raw += chunk
        self.events += self.parser.feed(chunk)
        return chunk

    def read_events(self, count: int, timeout: float = 5.0) -> list[Event]:
        self.read_until(lambda c: len(c.events) >= count, timeout)
        return self.events[:count]

    def read_to_end(self, timeout: float = 5.0) -> None:
        self.read_until(lambda c: c.ended, timeout)

    def close(self) -> None:
        """Close the connection for real (the response holds the socket too)."""
        self.response.close()
        self.connection.close()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until *condition()* is true; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
