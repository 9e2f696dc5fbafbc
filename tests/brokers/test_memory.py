"""What only the memory broker promises: bounded channel history, restart-safe ids."""

from __future__ import annotations

import pytest

from flask_eventstream import Event, MemoryBroker

from .reading import Reader


class TestRetainedChannels:
    def test_least_recently_published_channel_forgets_its_history(self) -> None:
        broker = MemoryBroker(retained_channels=2)
        first = broker.publish("a", Event("a1"))
        broker.publish("b", Event("b1"))
        broker.publish("a", Event("a2"))  # "a" is now the most recent
        broker.publish("c", Event("c1"))  # over the cap: "b" goes
        assert first.id is not None
        kept = broker.subscribe(["a"], last_event_id=first.id)
        assert not kept.missed
        assert [e.data for e in Reader(kept).read(1)] == ["a2"]
        forgotten = broker.subscribe(["b"], last_event_id=first.id)
        assert forgotten.missed

    def test_a_new_channel_after_forgetting_is_complete(self) -> None:
        broker = MemoryBroker(retained_channels=1)
        broker.publish("a", Event("a1"))
        marker = broker.publish("b", Event("b1"))  # "a" forgotten
        broker.publish("c", Event("c1"))  # "b" forgotten; "c" created after
        assert marker.id is not None
        resumed = broker.subscribe(["c"], last_event_id=marker.id)
        assert not resumed.missed
        assert [e.data for e in Reader(resumed).read(1)] == ["c1"]

    def test_retained_channels_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="retained_channels"):
            MemoryBroker(retained_channels=0)


class TestIds:
    def test_ids_from_before_a_restart_are_recognised_as_unknown(self) -> None:
        before = MemoryBroker().publish("a", Event("old"))
        restarted = MemoryBroker()
        restarted.publish("a", Event("new"))
        assert before.id is not None
        sub = restarted.subscribe(["a"], last_event_id=before.id)
        assert sub.missed
        assert [e.data for e in Reader(sub).read(1)] == ["new"]

    def test_history_zero_flags_every_resume_with_later_events(self) -> None:
        broker = MemoryBroker(history=0)
        first = broker.publish("a", Event("1"))
        broker.publish("a", Event("2"))
        assert first.id is not None
        assert broker.subscribe(["a"], last_event_id=first.id).missed
