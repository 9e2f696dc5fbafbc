"""``flask_eventstream.__all__`` is the public API, no more and no less.

Modelled on encode/httpx ``tests/test_exported_members.py``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import types
from pathlib import Path

import pytest

import flask_eventstream

#: The modules whose ``__all__`` is public API, besides the package itself.
PUBLIC_MODULES = [
    "flask_eventstream.brokers",
    "flask_eventstream.brokers.redis",
    "flask_eventstream.exceptions",
    "flask_eventstream.client",
    "flask_eventstream.compat",
    "flask_eventstream.gunicorn",
    "flask_eventstream.metrics",
    "flask_eventstream.signals",
    "flask_eventstream.cli",
]
API_REFERENCE = Path(__file__).parent.parent / "docs" / "api.md"


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
def test_the_documented_names_are_exported(name: str) -> None:
    assert name in flask_eventstream.__all__


def test_every_other_module_is_private() -> None:
    modules = [
        info.name
        for info in pkgutil.walk_packages(
            flask_eventstream.__path__, "flask_eventstream."
        )
    ]
    assert set(PUBLIC_MODULES) <= set(modules)
    public = [
        name
        for name in modules
        if name not in PUBLIC_MODULES
        and not any(part.startswith("_") for part in name.split(".")[1:])
    ]
    assert public == []


def _documented() -> set[str]:
    """Dotted names the API reference renders: ``::: module.Name`` gives that
    name; ``::: module`` gives its ``members: [...]``, or all its ``__all__``."""
    names: set[str] = set()
    text = API_REFERENCE.read_text()
    for match in re.finditer(
        r"^::: ([\w.]+)\n((?:[ ]{4}.*\n)*)", text, flags=re.MULTILINE
    ):
        target, options = match[1], match[2]
        members = re.search(r"members: \[(.*)\]", options)
        try:
            module = importlib.import_module(target)
        except ImportError:
            names.add(target)
            continue
        listed = members[1].split(", ") if members else module.__all__
        names.update(f"{target}.{name}" for name in listed)
    return names


def _resolve(dotted: str) -> object:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("module", ["flask_eventstream", *PUBLIC_MODULES])
def test_each_public_name_is_in_the_api_reference(module: str) -> None:
    """Under this module's name or another public one (``Broker`` is rendered
    as ``flask_eventstream.brokers.Broker``)."""
    documented = [_resolve(name) for name in _documented()]
    public = importlib.import_module(module)
    missing = [
        name
        for name in public.__all__
        if not any(getattr(public, name) is thing for thing in documented)
    ]
    assert missing == []
