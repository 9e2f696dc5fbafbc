"""JWT subscribe tokens, for Mercure-style set-ups (the ``jwt`` extra).

When another service mints the tokens (an auth server, a Mercure hub's publisher),
set ``EVENTSTREAM_JWT_KEY`` to the key that checks them; every ``?token=`` is then
a JWT (or an ``Authorization: Bearer`` header, for clients that can send one). The
token must carry ``exp``, and grants channels by either claim:

- ``{"mercure": {"subscribe": ["chat", "user:42"]}}``, as Mercure hubs read it;
- ``{"channels": ["chat", "user:42"]}``.

``"*"`` in the list grants every channel; a single string (``{"channels": "*"}``,
``{"channels": "chat"}``) is read as a list of one. An expired or forged token
gets 401, a channel the token does not grant gets 403, before any stream byte.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["JWTVerifier"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JWTVerifier:
    """Checks JWT subscribe tokens with *key* (a secret, or a public key in PEM).

    :param algorithms: the algorithms accepted; never let the token choose
        (``"none"`` is refused by PyJWT whatever this says).
    :raises RuntimeError: if PyJWT is not installed.
    """

    key: str | bytes
    algorithms: tuple[str, ...] = ("HS256",)

    def __post_init__(self) -> None:
        try:
            import jwt  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "EVENTSTREAM_JWT_KEY needs PyJWT: pip install 'flask-eventstream[jwt]'"
            ) from None
        if not self.key:
            raise ValueError("EVENTSTREAM_JWT_KEY must not be empty")

    def check(self, token: str, channels: Sequence[str]) -> tuple[int, str] | None:
        """``None`` if *token* grants every one of *channels*, else (status, why)."""
        import jwt

        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            return 401, "the subscribe token has expired; get a new one"
        except jwt.InvalidTokenError:
            return 401, "the subscribe token is invalid (not a JWT signed with our key)"
        except Exception:
            # A key that does not fit the token's algorithm (PyJWT's
            # InvalidKeyError for an HS256 token checked with an RSA public key)
            # or a crypto library's error: a token that fails to verify is refused.
            logger.debug("subscribe token could not be verified", exc_info=True)
            return 401, "the subscribe token is invalid (not a JWT signed with our key)"
        granted = _granted(claims)
        for channel in channels:
            if "*" not in granted and channel not in granted:
                return 403, f"the subscribe token does not cover channel {channel!r}"
        return None


def _granted(claims: Any) -> frozenset[str]:
    mercure = claims.get("mercure") if isinstance(claims, dict) else None
    names = mercure.get("subscribe") if isinstance(mercure, dict) else None
    if names is None and isinstance(claims, dict):
        names = claims.get("channels")
    if isinstance(names, str):
        return frozenset([names])  # "*" or one channel, as written without a list
    if not isinstance(names, list):
        return frozenset()
    return frozenset(name for name in names if isinstance(name, str))
