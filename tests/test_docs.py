"""The documentation keeps up with the code: every config key is in the table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flask_eventstream._settings import DEFAULTS as _DEFAULTS

DOCS = Path(__file__).parent.parent / "docs"


def documented_defaults() -> dict[str, str]:
    """``{key: default}`` from the rows of docs/configuration.md's tables."""
    text = (DOCS / "configuration.md").read_text()
    rows = re.findall(r"^\| `(EVENTSTREAM_[A-Z_]+)` \| `([^`]*)` \|", text, re.M)
    return dict(rows)


def python_literal(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


@pytest.mark.parametrize("key", sorted(_DEFAULTS))
def test_every_config_key_is_documented_with_its_default(key: str) -> None:
    documented = documented_defaults()
    assert key in documented, f"add {key} to docs/configuration.md"
    assert documented[key] == python_literal(_DEFAULTS[key])


def test_no_documented_key_is_unknown() -> None:
    assert set(documented_defaults()) <= set(_DEFAULTS)
