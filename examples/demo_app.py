"""Example handlers for `cargo xtask demo` (and the facade's doc example).

Run one worker by hand with: python -m portpool examples/demo_app.py
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import portpool
from portpool import Context

app = portpool.App(max_concurrency=32)


@app.handler
def ping(params: Any) -> str:
    return "pong"


@app.handler
def echo(params: Any) -> Any:
    return params


@app.handler
def primes(params: int) -> int:
    """CPU-bound: counts the primes below `params` in pure Python (holds the GIL)."""
    limit = int(params)
    count = 0
    for n in range(2, limit):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


@app.handler
async def fetch(params: Any) -> dict[str, Any]:
    """I/O-bound: awaits `params` milliseconds (a stand-in for an HTTP or LLM call)."""
    ms = float(params or 0)
    await asyncio.sleep(ms / 1000.0)
    return {"waited_ms": ms, "pid": os.getpid()}


@app.handler
def count(params: int, ctx: Context) -> Any:
    """Streaming: yields 0..params, one chunk each."""
    for i in range(int(params)):
        if ctx.cancelled.is_set():
            break
        yield i


@app.handler
def counter(params: Any, ctx: Context) -> int:
    """Per-session state: how many times this session called `counter`."""
    if ctx.session is None:
        raise portpool.HandlerError("counter needs a session", type="NoSession")
    ctx.session["n"] = ctx.session.get("n", 0) + 1
    return int(ctx.session["n"])


@app.handler
def fail(params: Any) -> None:
    raise ValueError(f"bad input: {params!r}")
