"""The app tests/remote.rs serves through `python -m portpool APP --listen`."""

import asyncio
import os
import sys
import threading

import portpool

app = portpool.App(max_concurrency=32)

_cancelled = []
_lock = threading.Lock()


@app.handler
def echo(params):
    return params


@app.handler
def pid(params):
    return os.getpid()


@app.handler
async def sleep(params):
    await asyncio.sleep(params)
    return params


@app.handler
async def cancellable(params, ctx):
    try:
        await asyncio.sleep(params)
    except asyncio.CancelledError:
        with _lock:
            _cancelled.append(ctx.request_id)
        raise
    return "finished"


@app.handler
def cancelled(params):
    with _lock:
        return len(_cancelled)


@app.handler
def count(params):
    for i in range(params):
        yield i


@app.handler
def counter(params, ctx):
    ctx.session["n"] = ctx.session.get("n", 0) + 1
    return ctx.session["n"]


@app.handler
def die(params):
    print(f"remote app: dying on purpose ({params})", file=sys.stderr, flush=True)
    os._exit(3)
