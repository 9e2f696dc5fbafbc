"""Publishing to the Redis broker: one script run per event, and an honest result.

The publish script (:data:`~._entries.XADD`) appends the event to its channel's
stream. What :meth:`Publisher.publish` raises says whether the event may have been
stored: nothing was sent (``BrokerUnavailable``), Redis refused it (``BrokerError``),
or it was sent and no answer came (``PublishUncertain``). A token stored with the
entry (an app's ``idempotency_key``, else a random one) makes a second run of a
stored attempt return the stored entry instead of storing it again.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, cast

from redis import BlockingConnectionPool, Redis
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError

from ..._event import Event
from ...exceptions import BrokerError, BrokerUnavailable, PublishUncertain
from ._entries import DATA, DEDUPE_WINDOW, ID, KEY_TTL, RETRY, TOKEN, TYPE, XADD
from ._pools import UNAVAILABLE


class _Sent(Exception):
    """A publish command was written to Redis, then its reply failed."""


class Publisher:
    """Runs the publish script on the broker's shared pool, from any thread.

    :param redis: a client of *pool* (to register the script).
    :param key: a channel's stream key.
    :param last_id_key: the key of the newest id given out.
    :param history: entries kept per stream.
    :param where: what errors name.
    """

    def __init__(
        self,
        redis: Redis,
        pool: BlockingConnectionPool,
        *,
        key: Callable[[str], str],
        last_id_key: str,
        history: int,
        where: str,
    ) -> None:
        self._pool = pool
        self._script = redis.register_script(XADD)
        self._key = key
        self._last_id_key = last_id_key
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
        idempotency = (
            f"{self._key(channel)}:key:{token}" if keyed else self._key(channel)
        )
        keys = [self._key(channel), self._last_id_key, idempotency]
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
        "not stored".
        """
        pool: Any = self._pool  # redis-py leaves these methods untyped
        sent = False
        failure: BaseException | None = None
        for _ in range(2):
            try:
                connection = pool.get_connection()
            except UNAVAILABLE as exc:
                failure = exc
                break  # cannot connect: no second attempt will either
            if sent:  # the first attempt may have been stored: look for it
                args = [*args[:2], DEDUPE_WINDOW, *args[3:]]
            try:
                return self._send(connection, keys, args)
            except _Sent as exc:
                sent = True
                failure = exc.__cause__
                connection.disconnect()
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

    def _send(self, connection: Any, keys: list[str], args: list[Any]) -> bytes:
        """EVALSHA the publish script on *connection* (EVAL if Redis lacks it).

        :raises _Sent: the command was written and then the reply failed (from
            the Redis error as ``__cause__``).
        """
        script = self._script
        for command, body in (("EVALSHA", script.sha), ("EVAL", script.script)):
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
