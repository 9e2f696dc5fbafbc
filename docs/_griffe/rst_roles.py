"""A griffe extension for the API reference: Sphinx roles in docstrings as code.

The docstrings are Sphinx reST (``:class:`~flask_eventstream.Event```); mkdocstrings
renders their text as Markdown, where a role would show up raw. This rewrites each
role to inline code of its target (the last dotted part with ``~``), and ``::``
before a literal block to ``:``, so the page reads as the docstring means.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`<]*?)(?:\s*<([^>]+)>)?`")


def _code(match: re.Match[str]) -> str:
    tilde, text, target = match.groups()
    name = (target or text).strip()
    if tilde:
        name = name.rsplit(".", 1)[-1]
    return f"`{name}`"


def rewrite(text: str) -> str:
    """*text* with Sphinx roles as inline code and ``::`` literal markers as ``:``."""
    text = _ROLE.sub(_code, text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return re.sub(r"(\S)::$", r"\1:", re.sub(r"^::$", "", text, flags=re.M), flags=re.M)


class RstRoles(Extension):
    """Rewrite every docstring once it is loaded."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
