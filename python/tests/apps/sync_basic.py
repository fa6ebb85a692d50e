"""tests/apps/basic.py's handlers without its async ones: a worker of this app runs without an
event loop (``Runtime.run_without_loop``), so the lifecycle tests run against both modes."""

from __future__ import annotations

import basic  # the sibling module (the loader puts this folder on sys.path)

import portpool
from portpool.app import HandlerKind

app = portpool.App(max_concurrency=basic.app.max_concurrency)
for _name in basic.app.methods:
    _handler = basic.app.get_handler(_name)
    assert _handler is not None
    if _handler.kind in (HandlerKind.SYNC, HandlerKind.SYNC_GEN):
        app.add_handler(_handler.func, _name)
