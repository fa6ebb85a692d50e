"""Session handlers for the session crate's tests."""

import os

import portpool

app = portpool.App(max_concurrency=8)


@app.handler
async def count(params, ctx):
    # Async: read and write happen on the one event loop, with no await in
    # between, so concurrent calls of a session cannot lose an update.
    ctx.session["n"] = ctx.session.get("n", 0) + 1
    return ctx.session["n"]


@app.handler
def pid(params):
    return os.getpid()
