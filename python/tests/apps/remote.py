"""The app the --listen tests serve: calls that wait for cancels and remember them, session state."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import Any

import portpool
from portpool import Context

print("remote app imported: these are its last words", file=sys.stderr, flush=True)

app = portpool.App(max_concurrency=8)

_outcomes: dict[str, str] = {}
_lock = threading.Lock()


@app.handler
def echo(params: Any) -> Any:
    return params


@app.handler
def pid(params: Any) -> int:
    return os.getpid()


@app.handler
def environ(params: str) -> str | None:
    return os.environ.get(params)


@app.handler
def wait_cancel(params: dict[str, Any], ctx: Context) -> str:
    """Waits until cancelled (or ``seconds``); records which under ``key`` for :func:`outcome`."""
    with _lock:
        _outcomes[params["key"]] = "running"
    cancelled = ctx.cancelled.wait(params["seconds"])
    with _lock:
        _outcomes[params["key"]] = "cancelled" if cancelled else "timed out"
    return _outcomes[params["key"]]


@app.handler
def outcome(params: str) -> str | None:
    with _lock:
        return _outcomes.get(params)


@app.handler
async def sleep(params: float) -> float:
    await asyncio.sleep(params)
    return params


@app.handler
def sync_sleep(params: float) -> float:
    time.sleep(params)
    return params


@app.handler
def session_set(params: dict[str, Any], ctx: Context) -> None:
    assert ctx.session is not None
    ctx.session.update(params)


@app.handler
def session_get(params: str, ctx: Context) -> Any:
    assert ctx.session is not None
    return ctx.session.get(params)


@app.handler
def big(params: int) -> bytes:
    return b"x" * params


@app.handler
def stream(params: int) -> Any:
    yield from range(params)
