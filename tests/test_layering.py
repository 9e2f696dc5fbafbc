"""The package's modules form layers: each imports only modules below it.

``LAYERS`` lists every module, lowest first (``docs/how-it-works.md`` describes
them). An import of a module listed later is a back-edge, and fails here; so
does a module missing from the list. Imports inside ``if TYPE_CHECKING:`` are
for annotations only and are not counted; imports inside functions are.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "flask_eventstream"

LAYERS = [
    # Values: no Flask, no broker.
    "exceptions",
    "signals",
    "_event",
    "_parser",
    "_channels",
    # Brokers: the wake-up strategy, a subscription, the fan-out, the protocol,
    # then the brokers themselves.
    "brokers._wakeup",
    "brokers._subscription",
    "brokers._fanout",
    "brokers._protocol",
    "brokers._memory",
    "brokers.redis._slots",
    "brokers.redis._pools",
    "brokers.redis._entries",
    "brokers.redis._stats",
    "brokers.redis._publish",
    "brokers.redis._history",
    "brokers.redis._listener",
    "brokers.redis._shard_links",
    "brokers.redis._cluster_listener",
    "brokers.redis._broker",
    "brokers.redis",
    "brokers",
    # Standalone users of the layers above.
    "client",
    "metrics",
    # HTTP: sockets, who may subscribe, response plumbing and bodies.
    "_sockets",
    "_auth",
    "_jwt",
    "_cors",
    "_response",
    "_bodies",
    # The app: settings and state, the endpoint, the extension.
    "_settings",
    "_endpoint",
    "_extension",
    # On top of the extension.
    "compat",
    "cli",
    "gunicorn",
    "",  # the package itself
]


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The package's modules *path* imports, by name relative to the package."""
    name = _name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").startswith("flask_eventstream"):
                target = (node.module or "").removeprefix("flask_eventstream")
                target = target.removeprefix(".")
            else:
                return
            for alias in node.names:  # ``from . import brokers`` names a module
                candidate = f"{target}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in LAYERS else target)

    Visitor().visit(ast.parse(path.read_text()))
    found.discard(name)
    return found


MODULES = {_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    assert sorted(set(MODULES) - set(LAYERS)) == []
    assert sorted(set(LAYERS) - set(MODULES)) == []


@pytest.mark.parametrize("module", LAYERS)
def test_no_module_imports_one_above_it(module: str) -> None:
    rank = LAYERS.index(module)
    above = sorted(
        target
        for target in _imports(MODULES[module])
        if target not in LAYERS or LAYERS.index(target) > rank
    )
    assert above == []
