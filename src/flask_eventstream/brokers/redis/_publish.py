"""Publishing to the Redis broker: one script run per event, and an honest result.

The publish script (:data:`~._entries.XADD`) appends the event to its channel's
stream. What :meth:`Publisher.publish` raises says whether the event may have been
stored: nothing was sent (``BrokerUnavailable``), Redis refused it (``BrokerError``),
or it was sent and no answer came (``PublishUncertain``). A token stored with the
entry (an app's ``idempotency_key``, else a random one) makes a second run of a
stored attempt return the stored entry instead of storing it again.

In a Redis Cluster the script runs on the primary of the channel's slot (its
keys share the channel's hash tag); a redirection (``MOVED``, ``ASK``) or a
slot in migration (``TRYAGAIN``) is an answer, so the event was not stored: the
script is sent again where Redis says, a few times, then ``BrokerUnavailable``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, cast

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from ..._event import Event
from ...exceptions import BrokerError, BrokerUnavailable, PublishUncertain
from ._entries import (
    DATA,
    DEDUPE_WINDOW,
    ID,
    KEY_TTL,
    RETRY,
    TOKEN,
    TYPE,
    XADD,
    XADD_NOTIFY,
)
from ._pools import UNAVAILABLE

#: Cluster answers that mean "not here, not now": the script did not run.
_REDIRECTED = (AskError, MovedError, TryAgainError, ClusterDownError)
#: How many redirections one publish follows before it reports Redis unavailable.
_REDIRECTS = 5


class _Sent(Exception):
    """A publish command was written to Redis, then its reply failed."""


class Publisher:
    """Runs the publish script on the broker's shared pools, from any thread.

    :param redis: a client to register the script with.
    :param route: the pool of the Redis that serves a key; in a cluster the
        primary of its slot, or the node an ``ASK`` redirection names (the second
        argument, ``None`` unless redirected).
    :param keys: a channel's stream key and the key of the newest id given out.
    :param notices: in a cluster, the shard channel that announces a channel's
        entries (the script then announces them, see :data:`._entries.XADD_NOTIFY`).
    :param refresh: re-read where slots are served (after ``MOVED``, or a node
        that cannot be reached); nothing for one Redis.
    :param history: entries kept per stream.
    :param where: what errors name.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        route: Callable[[str, tuple[str, int] | None], Any],
        keys: Callable[[str], tuple[str, str]],
        notices: Callable[[str], str] | None = None,
        refresh: Callable[[], None] = lambda: None,
        history: int,
        where: str,
    ) -> None:
        self._script = redis.register_script(XADD if notices is None else XADD_NOTIFY)
        self._route = route
        self._keys = keys
        self._notices = notices
        self._refresh = refresh
        self._history = history
        self._where = where

    def store(
        self, channel: str, event: Event, *, idempotency_key: str | None = None
    ) -> bytes:
        """Append *event* to *channel*'s stream; return its entry id (or the id of
        the entry already stored under *idempotency_key* in the last hour).

        :raises BrokerUnavailable: not stored: Redis cannot be reached (or is
            read-only).
        :raises PublishUncertain: sent, but no answer came in time: it may have
            been stored. The exception carries the token to retry with.
        :raises BrokerError: not stored: Redis refused it (out of memory, say).
        """
        fields: list[bytes | str] = [DATA, event.data.encode()]
        if event.event is not None:
            fields += [TYPE, event.event]
        if event.id is not None:
            fields += [ID, event.id]
        if event.retry is not None:
            fields += [RETRY, str(event.retry)]
        token = idempotency_key or secrets.token_hex(8)
        fields += [TOKEN, token]
        keyed = idempotency_key is not None
        stream, last_id = self._keys(channel)
        idempotency = f"{stream}:key:{token}" if keyed else stream
        keys = [stream, last_id, idempotency]
        if self._notices is not None:
            keys.append(self._notices(channel))
        # A key may come from a PublishUncertain: look for its earlier attempt.
        look = DEDUPE_WINDOW if keyed else 0
        args = [self._history, token, look, int(keyed), KEY_TTL, *fields]
        return self._run(channel, token, keys, args)

    def _run(self, channel: str, token: str, keys: list[str], args: list[Any]) -> bytes:
        """Run the publish script; the new (or already stored) entry's id.

        Two attempts, the second on a fresh connection: a pooled connection may
        be dead (Redis restarted), and the token makes a second run of a stored
        attempt return the first one's entry. What is raised says whether the
        command may have run: only a failure before any attempt was sent is
        "not stored". A cluster's redirections are followed (see the module
        docstring) without counting as attempts.
        """
        sent = False
        failure: BaseException | None = None
        attempts = redirects = 0
        ask: tuple[str, int] | None = None
        while attempts < 2:
            try:
                pool = self._route(keys[0], ask)
                connection = pool.get_connection()
            except _REDIRECTED as exc:
                failure = exc
                break
            except UNAVAILABLE as exc:
                failure = exc
                self._refresh()  # a cluster node gone: ask who serves the slot now
                break  # cannot connect: no second attempt will either
            if sent:  # the first attempt may have been stored: look for it
                args = [*args[:2], DEDUPE_WINDOW, *args[3:]]
            try:
                return self._send(connection, keys, args, asking=ask is not None)
            except _Sent as exc:
                sent = True
                failure = exc.__cause__
                connection.disconnect()
                attempts += 1
            except _REDIRECTED as exc:  # an answer: not run; go where Redis says
                failure = exc
                redirects += 1
                if redirects > _REDIRECTS:
                    break
                ask = None
                if isinstance(exc, MovedError):
                    self._refresh()
                elif isinstance(exc, AskError):
                    ask = (exc.host, exc.port)
                else:  # a slot being migrated or taken over: wait a moment
                    time.sleep(0.05 * redirects)
                    self._refresh()
            except ResponseError as exc:  # an answer: certainly not stored
                refused: type[BrokerError] = (
                    BrokerUnavailable if isinstance(exc, ReadOnlyError) else BrokerError
                )
                raise refused(
                    f"Redis at {self._where} refused the event for channel "
                    f"{channel!r}: {exc}"
                ) from exc
            except UNAVAILABLE as exc:  # failed while sending: not run
                failure = exc
                connection.disconnect()
                attempts += 1
                if attempts == 1:
                    self._refresh()
            finally:
                pool.release(connection)
        if sent:
            raise PublishUncertain(
                f"Redis at {self._where} did not answer in time ({failure}); the "
                f"event for channel {channel!r} may or may not have been stored: "
                "retry with this exception's idempotency_key",
                channel=channel,
                idempotency_key=token,
            ) from failure
        raise BrokerUnavailable(
            f"Redis at {self._where} is unavailable ({failure}); the event for "
            f"channel {channel!r} was not published"
        ) from failure

    def _send(
        self, connection: Any, keys: list[str], args: list[Any], *, asking: bool
    ) -> bytes:
        """EVALSHA the publish script on *connection* (EVAL if Redis lacks it),
        after ``ASKING`` for a slot being imported there.

        :raises _Sent: the command was written and then the reply failed (from
            the Redis error as ``__cause__``).
        """
        script = self._script
        for command, body in (("EVALSHA", script.sha), ("EVAL", script.script)):
            if asking:
                connection.send_command("ASKING")
                connection.read_response()
            connection.send_command(command, body, len(keys), *keys, *args)
            try:
                return cast(bytes, connection.read_response())
            except NoScriptError:
                continue  # certainly not run: send the script itself
            except ResponseError:
                raise  # an answer (out of memory, read-only): not run
            except UNAVAILABLE as exc:
                raise _Sent() from exc
        raise BrokerError("Redis did not take the publish script")
