"""Who may subscribe to what: authorization hooks and signed subscribe tokens.

Two ways to let a request open a stream, checked before any stream byte is sent:

- **Authorization hooks** (``@events.authorize``): functions called in the request
  context, once per requested channel, that return a true value to allow it. Every
  hook must allow every channel. A hook may also ``abort(401)`` (or any status)
  itself; Flask answers that error as usual.
- **Subscribe tokens** (``?token=...``): a short-lived grant the server mints with
  :meth:`EventStream.subscribe_token` for a page, naming the channels it may read,
  signed with the app's ``SECRET_KEY`` (itsdangerous, as Flask's session cookie).
  ``EventSource`` cannot send headers, so the token travels in the query string.

A request that carries a token is decided by the token alone: it must be genuine,
unexpired and name every channel asked for; the hooks are not consulted (the grant
was checked when the token was minted, where the user is known). A request without
a token is decided by the hooks, or refused with 401 when
``EVENTSTREAM_REQUIRE_TOKEN`` is set. With neither hooks nor tokens, every channel
is open, as in Flask-SSE.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from ._channels import validate_channel

if TYPE_CHECKING:
    from flask import Flask

    from ._jwt import JWTVerifier


#: Query parameter that carries a subscribe token.
TOKEN_PARAM = "token"

#: Salt of the token signature: a token is valid for nothing else the secret key
#: signs (session cookies, other extensions' tokens), and theirs not here.
TOKEN_SALT = "flask-eventstream.subscribe"

#: A hook: called with one channel name in the request context, true means allowed.
Authorizer = Callable[[str], Any]

#: Clock skew tolerated between the process that minted a token and this one.
_CLOCK_SKEW = 5.0


@dataclass(frozen=True)
class Refusal:
    """Why a subscription is refused: the HTTP status (401, 403) and a message."""

    status: int
    message: str


def signing_keys(app: Flask) -> list[str | bytes]:
    """*app*'s signing keys, newest last; empty when it has no ``SECRET_KEY``."""
    if not app.secret_key:
        return []
    fallbacks = app.config.get("SECRET_KEY_FALLBACKS") or []
    return [*fallbacks, app.secret_key]


def serializer(keys: Sequence[str | bytes]) -> URLSafeTimedSerializer:
    """The token signer for *keys*, newest last (``SECRET_KEY_FALLBACKS`` first).

    Tokens signed with a fallback key stay valid while the key is rotated, as
    Flask's session cookie does.
    """
    # itsdangerous takes a list of keys, newest last; its stub says str | bytes.
    return URLSafeTimedSerializer(list(keys), salt=TOKEN_SALT)  # type: ignore[arg-type]


def mint_token(
    keys: Sequence[str | bytes], channels: Iterable[str], *, max_age: int
) -> str:
    """A URL-safe token granting *channels* for *max_age* seconds from now.

    :raises RuntimeError: for no *keys* (the app has no ``SECRET_KEY``).
    :raises InvalidChannel: for a channel name outside the rules.
    :raises ValueError: for no channel, or a *max_age* below 1.
    """
    if not keys:
        raise RuntimeError(
            "subscribe tokens (subscribe_token(), stream_url(token=True)) are signed "
            "with the app's SECRET_KEY, and this app has none: set "
            "app.config['SECRET_KEY'] to a long random string (secrets.token_hex())"
        )
    names = list(dict.fromkeys(validate_channel(name) for name in channels))
    if not names:
        raise ValueError("a subscribe token must name at least one channel")
    if type(max_age) is not int or max_age < 1:
        raise ValueError(f"max_age must be a positive int of seconds, got {max_age!r}")
    return serializer(keys).dumps({"c": names, "m": max_age})


def check_access(
    app: Flask,
    channels: Sequence[str],
    *,
    token: str | None,
    require_token: bool,
    authorizers: Sequence[Authorizer],
    jwt: JWTVerifier | None = None,
) -> Refusal | None:
    """Decide whether the current request may subscribe to *channels*.

    :param app: the app, whose ``SECRET_KEY`` (and fallbacks) sign tokens.
    :param token: the ``?token=`` value, or ``None`` when absent.
    :param jwt: when set, tokens are JWTs checked by it instead of signed by the
        app's keys.
    :return: ``None`` to allow, else the :class:`Refusal` to answer.
    :raises RuntimeError: if tokens are required but the app has no ``SECRET_KEY``.
    """
    if token is None and not require_token and not authorizers:
        return None  # nothing to check: the common case, kept cheap
    if jwt is not None:
        if token is not None:
            failure = jwt.check(token, channels)
            return None if failure is None else Refusal(*failure)
        keys: list[str | bytes] = []
    else:
        keys = signing_keys(app)
        if not keys:
            if require_token:
                raise RuntimeError(
                    "EVENTSTREAM_REQUIRE_TOKEN is set but the app has no SECRET_KEY "
                    "to check subscribe tokens with; set app.secret_key"
                )
            # No key: no token can have been minted, so the parameter is the app's.
            token = None
    if token is not None:
        return _check_token(channels, token, keys)
    if require_token:
        return Refusal(
            401,
            f"a subscribe token is required: add ?{TOKEN_PARAM}= with a token "
            "from EventStream.subscribe_token()",
        )
    for channel in channels:
        for authorize in authorizers:
            if not authorize(channel):
                return Refusal(403, f"not allowed to subscribe to channel {channel!r}")
    return None


_INVALID = Refusal(401, "the subscribe token is invalid (tampered or not ours)")


def _check_token(
    channels: Sequence[str], token: str, keys: Sequence[str | bytes]
) -> Refusal | None:
    try:
        payload, signed_at = serializer(keys).loads(token, return_timestamp=True)
    except BadSignature:
        return _INVALID
    grant = _grant(payload)
    if grant is None:
        return _INVALID
    granted, max_age = grant
    age = time.time() - signed_at.timestamp()
    if age > max_age or age < -_CLOCK_SKEW:
        return Refusal(401, "the subscribe token has expired; get a new one")
    for channel in channels:
        if channel not in granted:
            return Refusal(
                403, f"the subscribe token does not cover channel {channel!r}"
            )
    return None


def _grant(payload: Any) -> tuple[frozenset[str], int] | None:
    """The channels and lifetime a signed payload grants; ``None`` if malformed.

    Only this module signs with :data:`TOKEN_SALT`, so a malformed payload means a
    foreign signer shares the key and salt: grant nothing rather than guess.
    """
    if isinstance(payload, dict):
        names, max_age = payload.get("c"), payload.get("m")
        if isinstance(names, list) and type(max_age) is int:
            return frozenset(n for n in names if isinstance(n, str)), max_age
    return None
