"""Handlers for the resource-limit and environment tests."""

import os

import portpool

app = portpool.App(max_concurrency=4)


@app.handler
def echo(params):
    return params


@app.handler
def alloc(mib):
    """Allocates (and touches) `mib` MiB; returns how much it got."""
    block = bytearray(mib * 1024 * 1024)
    return len(block)


@app.handler
def spin(params):
    """Burns CPU until killed."""
    n = 0
    while True:
        n += 1


@app.handler
def open_many(n):
    """Opens /dev/null `n` times, keeping every file open."""
    files = []
    try:
        for _ in range(n):
            files.append(open(os.devnull, "rb"))
        return len(files)
    finally:
        for f in files:
            f.close()


@app.handler
def environ(params):
    return sorted(os.environ)
