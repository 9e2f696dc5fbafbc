"""Where a channel lives in a Redis Cluster: its hash tag, and the names that
share its slot.

A channel's stream key ``<prefix>{<channel>}`` carries the channel as its hash
tag, so Redis hashes only the part between the braces: the channel decides the
slot. Up to the first ``}``, that is: channels ``room7}chat`` and ``room7}typing``
have the hash tag ``room7`` and share a slot on purpose. Channels of one hash tag
form a *group*: they share the last id given out (``<prefix>last-id{<tag>}``)
and the shard channel their new entries are announced on (``<prefix>{<tag>}``,
in the pub/sub namespace, apart from keys), so their ids increase across them
and a stream of several of them resumes exactly from one id, as on one Redis.
"""

from __future__ import annotations


def hash_tag(key: str) -> str | None:
    """The part of *key* Redis Cluster hashes, if it has a hash tag (the text
    between the first ``{`` and the first ``}`` after it, if not empty)."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


class ClusterNames:
    """The names of a channel's group in a cluster (see the module docstring).

    :raises ValueError: for a key prefix with a brace (its hash tag would put
        every channel in one slot, or split a channel's names over slots).
    """

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(
                f"a key prefix for a Redis Cluster must not hold braces, got {prefix!r}"
            )
        self._prefix = prefix

    def key(self, channel: str) -> str:
        return f"{self._prefix}{{{channel}}}"

    def group(self, channel: str) -> str:
        """The hash tag of *channel*'s stream: channels of one group share a slot
        and comparable ids. A channel starting with ``}`` has no hash tag and is
        a group of its own (named by its whole key)."""
        key = self.key(channel)
        return hash_tag(key) or key

    def last_id_key(self, channel: str) -> str:
        """The key of the newest id given out in *channel*'s group; the stream key
        itself for a channel without hash tag (its ids then come from its own
        last entry)."""
        tag = hash_tag(self.key(channel))
        return f"{self._prefix}last-id{{{tag}}}" if tag else self.key(channel)

    def notices(self, channel: str) -> str:
        """The shard channel that announces *channel*'s new entries."""
        tag = hash_tag(self.key(channel))
        return f"{self._prefix}{{{tag}}}" if tag else self.key(channel)
