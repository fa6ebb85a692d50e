"""Finding the :class:`App` that ``python -m portpool APP`` names."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

from portpool._stdio import _log  # noqa: F401
from portpool.app import App

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    from typing import Any


class AppLoadError(Exception):
    """The APP argument does not name a usable :class:`App` (the message says why)."""


def _import_file(path: str) -> types.ModuleType:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise AppLoadError(f"no such file: {path}")
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # so the app can import its sibling modules
    stem = os.path.splitext(os.path.basename(path))[0]
    name = stem if stem.isidentifier() and stem not in sys.modules else "__portpool_app__"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _find_app(module: types.ModuleType) -> App:
    candidate = getattr(module, "app", None)
    if isinstance(candidate, App):
        return candidate
    found: dict[int, tuple[str, App]] = {}
    for attr, value in vars(module).items():
        if isinstance(value, App):
            found.setdefault(id(value), (attr, value))
    if len(found) == 1:
        return next(iter(found.values()))[1]
    if not found:
        raise AppLoadError(f"module {module.__name__!r} defines no portpool.App instance (e.g. app = App())")
    names = ", ".join(sorted(attr for attr, _ in found.values()))
    raise AppLoadError(
        f"module {module.__name__!r} defines several App instances ({names}); name one: APP:NAME"
    )


def load_app(spec: str) -> App:
    """Imports the app named by ``spec``: ``file.py``, ``module``, ``module:attr`` or ``file.py:attr``."""
    target, attr = spec, ""
    if ":" in spec:
        left, _, right = spec.rpartition(":")
        if right and all(part.isidentifier() for part in right.split(".")):
            target, attr = left, right
    if not target:
        raise AppLoadError(f"invalid APP {spec!r}: expected a .py file, a module, or module:attr")
    if target.endswith(".py") or os.sep in target or os.path.isfile(target):
        module = _import_file(target)
    else:
        module = importlib.import_module(target)
    if not attr:
        return _find_app(module)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"{target!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App):
        raise AppLoadError(f"{spec!r} is a {type(obj).__name__}, not a portpool.App")
    return obj
