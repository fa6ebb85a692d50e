"""Review finding R2: an exception the runtime cannot describe must still end its call.

``str(exc)`` runs user code (``__str__``), and ``HandlerError.type`` is whatever the
handler passed. When describing the error failed, a sync handler's call got an error about
the error, but an async handler's task died: no response ever, and its slot was never freed
(the call hung forever without a call time-out).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
from conftest import Worker

APP = """
from portpool import App, HandlerError
app = App(max_concurrency=1)

class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("no str for you")

class NotStr(Exception):
    def __str__(self):
        return 42

@app.handler
def sync_bad_str(x):
    raise BadStr()

@app.handler
async def async_bad_str(x):
    raise BadStr()

@app.handler
async def async_not_str(x):
    raise NotStr()

@app.handler
async def async_int_type(x):
    raise HandlerError("typed by a number", type=123)

@app.handler
def sync_int_type(x):
    raise HandlerError("typed by a number", type=123)

@app.handler
async def async_bad_str_gen(x):
    yield 1
    raise BadStr()

@app.handler
def echo(x):
    return x
"""


@pytest.mark.parametrize(
    "method",
    [
        "sync_bad_str",
        "async_bad_str",
        "async_not_str",
        "async_int_type",
        "sync_int_type",
        "async_bad_str_gen",
    ],
)
def test_an_exception_that_cannot_be_described_still_ends_its_call(
    spawn: Callable[..., Worker], write_app: Callable[[str], pathlib.Path], method: str
) -> None:
    worker = spawn(write_app(APP))
    frames = worker.collect({worker.request(method, 1)}, timeout=3.0)
    final = next(iter(frames.values()))[-1]
    assert "error" in final, frames
    err = final["error"]
    assert isinstance(err["type"], str) and err["type"], err
    assert isinstance(err["message"], str), err
    # The slot was freed (max_concurrency 1) and the worker serves on.
    assert worker.result("echo", "still serving") == "still serving"
    assert worker.proc.poll() is None
