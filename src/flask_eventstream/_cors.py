"""CORS for cross-origin ``EventSource`` (``docs/protocol.md``: S14, C15, C16).

Off unless ``EVENTSTREAM_CORS_ORIGINS`` names origins: a page on another origin then
cannot read the stream (the browser blocks it). When on, only a listed origin is
echoed in ``Access-Control-Allow-Origin``, with ``Vary: Origin`` so caches keep the
answers apart. ``"*"`` allows any origin, but only without credentials: a browser
refuses ``*`` for ``withCredentials`` streams, and echoing any origin with
credentials would hand every site the user's cookies' worth of data.

Preflights (``OPTIONS``) are answered allowing ``GET`` and the ``Last-Event-ID``
header: a browser sends one before a cross-origin reconnection whose id is longer
than 128 bytes or holds bytes outside the CORS-safe set (C16).

CORS only tells the *browser* whom to show the response; it does not stop a request
reaching the server. Authorization is the job of :mod:`flask_eventstream._auth`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flask import Response, request

__all__ = ["CorsPolicy"]

#: Request headers a cross-origin stream may send: ``Last-Event-ID`` (C16), and
#: those XHR-based polyfills add (O8).
_ALLOW_HEADERS = "Last-Event-ID, Cache-Control, X-Requested-With"

#: Seconds a browser may cache a preflight answer (Chromium caps it at 7200).
_PREFLIGHT_MAX_AGE = "600"


@dataclass(frozen=True)
class CorsPolicy:
    """Which origins may read the stream, and whether with credentials.

    :param origins: allowed origins, lower case without a trailing ``/``;
        ``None`` means any origin (``*``).
    :param credentials: send ``Access-Control-Allow-Credentials: true``, so that
        ``new EventSource(url, {withCredentials: true})`` works with cookies.
    """

    origins: frozenset[str] | None
    credentials: bool = False

    @classmethod
    def from_config(
        cls, origins: str | Iterable[str] | None, credentials: bool
    ) -> CorsPolicy | None:
        """The policy ``EVENTSTREAM_CORS_ORIGINS`` and ``..._CREDENTIALS`` describe.

        :param origins: ``None`` or empty (no CORS), ``"*"``, one origin, or an
            iterable of origins such as ``["https://app.example.com"]``.
        :return: ``None`` when CORS is off.
        :raises ValueError: for ``"*"`` with credentials, or an origin that is not
            ``scheme://host[:port]``.
        """
        if not origins:
            return None
        names = [origins] if isinstance(origins, str) else list(origins)
        if "*" in names:
            if credentials:
                raise ValueError(
                    "EVENTSTREAM_CORS_ORIGINS='*' cannot be used with "
                    "EVENTSTREAM_CORS_CREDENTIALS: browsers reject it, and allowing "
                    "every origin with cookies exposes every user; list the origins"
                )
            return cls(None, credentials=False)
        return cls(frozenset(_origin(name) for name in names), bool(credentials))

    def allows(self, origin: str) -> bool:
        """Whether a request with this ``Origin`` header may read the response."""
        return self.origins is None or origin.lower() in self.origins

    def apply(self, response: Response) -> Response:
        """Add the CORS headers for the current request to *response*.

        Registered as the stream blueprint's ``after_request``, so it also covers
        Flask's automatic ``OPTIONS`` answer (the preflight) and refusals (401, 403,
        503), whose status and text a cross-origin ``fetch()`` can then read.
        """
        if self.origins is not None:
            response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin is None or not self.allows(origin):
            return response
        headers = response.headers
        if self.origins is None:
            headers["Access-Control-Allow-Origin"] = "*"
        else:
            headers["Access-Control-Allow-Origin"] = origin
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if request.method == "OPTIONS":
            headers["Access-Control-Allow-Methods"] = "GET"
            headers["Access-Control-Allow-Headers"] = _ALLOW_HEADERS
            headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
        return response


def _origin(name: str) -> str:
    origin = name.strip().rstrip("/").lower()
    scheme, sep, host = origin.partition("://")
    if not sep or not scheme or not host or "/" in host:
        raise ValueError(
            f"EVENTSTREAM_CORS_ORIGINS entry {name!r} is not an origin; write it as "
            "scheme://host[:port], e.g. 'https://app.example.com'"
        )
    return origin
