"""Import an example app from its file, as ``flask --app examples/<name>/app.py`` does.

``examples/`` is not a package, so each example is loaded by path under a fresh
module name: every test gets its own app and its own memory broker.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

_counter = itertools.count()


def import_example(name: str) -> ModuleType:
    """Import ``examples/<name>/app.py`` as a new module and return it.

    Configuration comes from ``FLASK_*`` environment variables, read by each
    example's ``app.config.from_prefixed_env()``; set them before calling this.
    """
    path = EXAMPLES / name / "app.py"
    module_name = f"_example_{name}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    # Flask finds templates next to the module through sys.modules[import_name].
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def forget_example(module: ModuleType) -> None:
    """End the example's open streams and drop its module."""
    module.events.broker().close()
    sys.modules.pop(module.__name__, None)
