"""Handlers for the transport tests."""

import asyncio
import os
import random
import subprocess
import time

import portpool

app = portpool.App(max_concurrency=1000)


@app.handler
def echo(params):
    return params


@app.handler
async def jitter(params):
    # Random sleeps so replies come back out of order.
    await asyncio.sleep(random.random() * 0.05)
    return params


@app.handler
async def sleep(params):
    await asyncio.sleep(params)
    return params


@app.handler
def block(params):
    time.sleep(params)
    return params


@app.handler
def pid(params):
    return os.getpid()


@app.handler
def env(params):
    return os.environ.get(params)


@app.handler
def fail(params):
    raise ValueError(f"bad input: {params}")


@app.handler
def count(params):
    for i in range(params):
        yield i


@app.handler
def big(params):
    return b"x" * params


@app.handler
def spawn_grandchild(params):
    child = subprocess.Popen(["sleep", "60"])
    return child.pid


@app.handler
def noisy(params):
    print("printed to stdout by a handler")
    os.write(1, b"raw bytes on fd 1")
    return "still framed"


@app.handler
def counter(params, ctx):
    ctx.session["n"] = ctx.session.get("n", 0) + 1
    return ctx.session["n"]


cancelled_calls = []


@app.handler
async def cancellable(params, ctx):
    try:
        await asyncio.sleep(params)
    except asyncio.CancelledError:
        cancelled_calls.append(ctx.request_id)
        raise
    return "finished"


@app.handler
def cancelled(params):
    return len(cancelled_calls)
