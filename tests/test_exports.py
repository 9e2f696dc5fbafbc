"""``flask_eventstream.__all__`` is the public API, no more and no less.

Modelled on encode/httpx ``tests/test_exported_members.py``.
"""

from __future__ import annotations

import types

import pytest

import flask_eventstream


def _is_public_member(name: str, value: object) -> bool:
    # Submodules bound by the package's own imports and ``from __future__`` flags
    # are attributes of the package without being API it chose to export.
    if name.startswith("_") or type(value).__module__ == "__future__":
        return False
    return not (
        isinstance(value, types.ModuleType)
        and value.__name__.startswith("flask_eventstream.")
    )


def test_all_lists_exactly_the_public_members() -> None:
    public = {
        name
        for name, value in vars(flask_eventstream).items()
        if _is_public_member(name, value)
    }
    assert set(flask_eventstream.__all__) == public


def test_all_has_no_duplicates_or_private_names() -> None:
    names = flask_eventstream.__all__
    assert len(names) == len(set(names))
    assert not [name for name in names if name.startswith("_")]


@pytest.mark.parametrize("name", flask_eventstream.__all__)
def test_each_name_is_importable_and_defined_here(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from flask_eventstream import {name}", namespace)
    value = namespace[name]
    # Classes and functions must be ours, not re-exported third-party objects.
    if isinstance(value, types.ModuleType):
        assert value.__name__.startswith("flask_eventstream.")
    elif isinstance(value, (type, types.FunctionType)):
        assert value.__module__.startswith("flask_eventstream."), value.__module__


def test_star_import_gives_all() -> None:
    namespace: dict[str, object] = {}
    exec("from flask_eventstream import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(flask_eventstream.__all__)


@pytest.mark.parametrize(
    "name", ["EventStream", "Event", "EventParser", "InvalidEvent"]
)
def test_fixed_names_of_issue_3_are_exported(name: str) -> None:
    assert name in flask_eventstream.__all__
