"""Fixtures for the example apps: each test imports a fresh copy of an example."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from .loader import forget_example, import_example


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ModuleType]]:
    """``example("chat", EVENTSTREAM_RETRY=500)``: a fresh import of that example.

    Keyword arguments become ``FLASK_<KEY>`` environment variables, which the
    examples read with ``from_prefixed_env()`` (values as JSON). A short heartbeat
    is the default, so server threads notice closed test clients quickly.
    """
    loaded: list[ModuleType] = []

    def load(name: str, **config: Any) -> ModuleType:
        config.setdefault("EVENTSTREAM_HEARTBEAT", 0.5)
        config.setdefault("TESTING", True)
        for key, value in config.items():
            monkeypatch.setenv(f"FLASK_{key}", json.dumps(value))
        module = import_example(name)
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        forget_example(module)
