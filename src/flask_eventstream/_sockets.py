"""The client socket of a stream: bounds on how long a dead or stuck client holds it.

A WSGI server notices a gone client only when a write fails (PEP 3333). A client
that vanishes without a word (a laptop lid closed, a phone out of range, a
firewall that forgets the connection) makes no write fail for as long as the
kernel keeps retransmitting: about 15 minutes with Linux's defaults
(``tcp_retries2``), heartbeats or not, since they only queue up behind each other.
And a client that stops reading blocks the write in progress until it closes.

So when the server hands the app its client socket (gunicorn's
``gunicorn.socket``, Werkzeug's ``werkzeug.socket``), a stream sets on it:

- ``TCP_USER_TIMEOUT`` (Linux): once written bytes have gone unacknowledged for
  ``EVENTSTREAM_CLIENT_TIMEOUT`` seconds, the kernel drops the connection; a write
  in progress fails at once, and the next heartbeat fails if none was.
- ``SO_KEEPALIVE`` with probes after the same idle time, where the platform has
  no ``TCP_USER_TIMEOUT``: a connection with nothing in flight is checked too.

and, when the subscription is cut off for falling behind while its write is
blocked, :func:`abort` ends that write at once: the server's thread or greenlet,
the file descriptor, the stream slot and the kernel's send buffer are freed then,
not when the client finally reads or closes. See ``docs/deploying.md`` for what
each server exposes.
"""

from __future__ import annotations

import functools
import logging
import socket
import struct
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

#: Where servers put the client socket in the WSGI environ.
_ENVIRON_KEYS = ("gunicorn.socket", "werkzeug.socket")

#: Shortest ``TCP_USER_TIMEOUT`` set, in seconds: below it a busy but healthy
#: client (delayed ACKs, one lost segment) could be taken for dead.
MIN_CLIENT_TIMEOUT = 1.0

#: Keep-alive probes sent before the connection is given up.
_KEEPALIVE_PROBES = 3

#: ``SO_LINGER`` on, 0 s: closing the socket resets the connection and drops what
#: the kernel still holds for it, instead of trying to deliver it.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def client_timeout(heartbeat: float, configured: float | None) -> float:
    """``EVENTSTREAM_CLIENT_TIMEOUT``, or its default: half a heartbeat.

    Half, so that a client that vanished right after a write is dropped before the
    next heartbeat, which then fails: the stream is freed within two heartbeats
    of the client's last acknowledgement.
    """
    if configured is not None:
        if configured <= 0:
            raise ValueError(
                f"EVENTSTREAM_CLIENT_TIMEOUT must be more than 0, got {configured}"
            )
        return float(configured)
    return max(heartbeat / 2, MIN_CLIENT_TIMEOUT)


def client_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    """The client's socket, if the server put it in *environ*; else ``None``."""
    for key in _ENVIRON_KEYS:
        sock = environ.get(key)
        if sock is not None and hasattr(sock, "setsockopt"):
            return sock  # type: ignore[no-any-return]
    return None


def bound_dead_client(sock: socket.socket, timeout: float) -> None:
    """Have the kernel drop the connection when *sock*'s client stops answering
    for *timeout* seconds (see the module docstring).

    Options a socket does not take (a Unix socket behind a proxy) are skipped.
    """
    try:
        for level, option, value in _bounding_options(timeout):
            sock.setsockopt(level, option, value)
    except OSError as exc:  # not TCP: the proxy in front bounds its own clients
        logger.debug("stream socket options not set: %s", exc)


@functools.lru_cache(maxsize=8)
def _bounding_options(timeout: float) -> tuple[tuple[int, int, int], ...]:
    """The socket options of :func:`bound_dead_client`, worked out once per value.

    With ``TCP_USER_TIMEOUT``, that one alone: a stream writes at least a
    heartbeat per interval, so its connection always has bytes in flight to
    time out, and keep-alive probes would find nothing more.
    """
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        return ((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(timeout * 1000)),)
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    if hasattr(socket, "TCP_KEEPIDLE"):
        seconds = max(1, round(timeout))
        interval = max(1, seconds // _KEEPALIVE_PROBES)
        options += [
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPALIVE_PROBES),
        ]
    return tuple(options)


def abort(sock: socket.socket) -> None:
    """End *sock*'s connection now: a write blocked on it fails (``EPIPE``), and
    closing it resets the connection, dropping what the kernel still holds for it.

    Safe from any thread or greenlet; does nothing to a socket already closed.
    """
    try:
        if _is_gevent(sock):
            # Through a duplicate: gevent's own shutdown() fails the blocked write
            # with EBADF, which servers log as an error; the kernel's gives EPIPE,
            # which they take for a client gone. (One thread: no close can come
            # between fileno() and the dup.)
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
                _reset(dup)
        else:
            _reset(sock)
    except OSError:  # already closed, or the client went first
        pass


def connection_lost(sock: socket.socket) -> bool:
    """Whether the kernel gave *sock*'s connection up (``TCP_USER_TIMEOUT``,
    keep-alive, a reset). Takes the error, so that the next write fails with
    ``EPIPE``, which servers take for a client gone, not with ``ETIMEDOUT``,
    which they log as an error."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    except OSError:
        return True


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    sock.shutdown(socket.SHUT_RDWR)


def _is_gevent(sock: socket.socket) -> bool:
    return type(sock).__module__.startswith("gevent")
