"""Handlers for the chaos soak (tests/chaos.rs). Every reply carries
the caller's nonce, so a reply delivered to the wrong caller is detectable."""

import asyncio
import os
import random
import time

import portpool

# Slow starts: each (re)start sleeps a random 0..CHAOS_SLOW_START seconds.
_slow = float(os.environ.get("CHAOS_SLOW_START", "0"))
if _slow:
    time.sleep(random.random() * _slow)

app = portpool.App(max_concurrency=8)


@app.handler
def echo(params):
    return params


@app.handler
async def sleep(params):
    await asyncio.sleep(params["s"])
    return params["nonce"]


@app.handler
def stream(params):
    for i in range(params["n"]):
        yield [params["nonce"], i]


@app.handler
async def count(params, ctx):
    ctx.session["n"] = ctx.session.get("n", 0) + 1
    return ctx.session["n"]


@app.handler
async def hang(params):
    # Far longer than the call timeout: the pool must time it out and cancel.
    await asyncio.sleep(3600)
