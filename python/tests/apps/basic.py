"""The app most runtime tests drive: python -m portpool tests/apps/basic.py."""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import subprocess
import sys
import threading
import time
from typing import Any

import portpool
from portpool import Context

print("basic app imported (this line must land on stderr)")

app = portpool.App(max_concurrency=4)


@app.handler
def echo(params: Any) -> Any:
    return params


@app.handler("add")
def add_numbers(params: dict[str, int]) -> int:
    return params["a"] + params["b"]


@app.handler
def no_params() -> str:
    return "none needed"


@app.handler
def whoami(params: Any, ctx: Context) -> dict[str, Any]:
    return {
        "request_id": ctx.request_id,
        "method": ctx.method,
        "session_id": ctx.session_id,
        "has_session": ctx.session is not None,
        "remaining": ctx.remaining(),
        "trace": ctx.trace,
    }


@app.handler
async def async_sleep(params: float, ctx: Context) -> int:
    await asyncio.sleep(params)
    return ctx.request_id


@app.handler
def sync_sleep(params: float, ctx: Context) -> dict[str, Any]:
    time.sleep(params)
    return {"id": ctx.request_id, "thread": threading.current_thread().name}


_tickets = itertools.count(1)


@app.handler
def ticket(params: Any) -> int:
    """The order in which requests started: 1, 2, 3, ..."""
    return next(_tickets)


@app.handler
async def async_block(params: dict[str, Any]) -> str:
    """Sleeps, then writes a marker file; cancelling it must prevent the write."""
    await asyncio.sleep(params["seconds"])
    pathlib.Path(params["marker"]).write_text("finished")
    return "finished"


@app.handler
def sync_wait_cancel(params: float, ctx: Context) -> str:
    """Waits until cancelled (or params seconds)."""
    cancelled = ctx.cancelled.wait(params)
    return "saw cancel" if cancelled else "timed out"


@app.handler
def stream_sync(params: int) -> Any:
    for i in range(params):
        yield {"i": i}


@app.handler
async def stream_async(params: int) -> Any:
    for i in range(params):
        await asyncio.sleep(0)
        yield i * 10


@app.handler
def stream_forever(params: Any, ctx: Context) -> Any:
    i = 0
    while True:
        yield i
        i += 1
        time.sleep(0.01)


@app.handler
def stream_fail(params: Any) -> Any:
    yield 1
    raise RuntimeError("stream broke")


def inner_failure(value: Any) -> None:
    raise ValueError(f"bad input: {value!r}")


@app.handler
def fail(params: Any) -> None:
    inner_failure(params)


@app.handler
async def async_fail(params: Any) -> None:
    await asyncio.sleep(0)
    raise KeyError(params)


@app.handler
def fail_with_data(params: Any) -> None:
    raise portpool.HandlerError("invalid field", data={"field": params}, type="ValidationError")


@app.handler
def unencodable(params: Any) -> Any:
    return {"ok": {1, 2, 3}}


@app.handler
def shout(params: str) -> str:
    print(f"printed: {params}")
    print("via sys.stdout", file=sys.stdout, flush=True)
    return params.upper()


@app.handler
def garbage(params: Any) -> str:
    os.write(1, b"garbage\x00\x00\x00\xff written straight to fd 1\n")
    return "still framed"


@app.handler
def counter(params: Any, ctx: Context) -> int:
    assert ctx.session is not None, "counter needs a session"
    ctx.session["n"] = ctx.session.get("n", 0) + 1
    return int(ctx.session["n"])


@app.handler
def exit_in_handler(params: Any) -> None:
    sys.exit(7)


@app.handler
def big(params: int) -> bytes:
    return b"x" * params


@app.handler
def pid(params: Any) -> int:
    return os.getpid()


@app.handler
def child(params: Any) -> int:
    """A child process inherits fds 0-2: it must neither write into the frames nor read them."""
    code = "import sys; print('child says hi'); print('child stdin: ' + repr(sys.stdin.read()))"
    return subprocess.run([sys.executable, "-c", code], timeout=10).returncode
