"""An app without async handlers runs without an event loop (``Runtime.run_without_loop``),
and a worker imports only what serving needs.

Such a worker never imports asyncio (tens of milliseconds of CPU at every start, paid by
every worker of a pool that starts at once); its shutdown, end of input, grace period and
errors behave as with the loop: the lifecycle tests below run against both modes.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import APPS, Worker, worker_env

from portpool import protocol

BOTH = pytest.mark.parametrize("app", [APPS / "basic.py", APPS / "sync_basic.py"], ids=["loop", "no-loop"])

SYNC_ONLY_APP = """\
import sys, threading, portpool
app = portpool.App()

@app.handler
def modules(p):
    return sorted(m for m in sys.modules if m == p or m.startswith(p + "."))

@app.handler
def threads(p):
    return sorted(t.name for t in threading.enumerate())
"""


def test_a_sync_only_worker_never_imports_asyncio(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    w = spawn(write_app(SYNC_ONLY_APP))
    assert w.result("modules", "asyncio") == []
    # Nor what only type checkers, error paths or odd handlers need (see portpool.app):
    for module in ("typing", "inspect", "dataclasses", "traceback"):
        assert w.result("modules", module) == [], module
    assert "MainThread" in w.result("threads")
    w.close_stdin()
    assert w.wait(5) == 0, w.stderr


def test_an_app_with_an_async_handler_gets_its_loop(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    w = spawn(write_app(SYNC_ONLY_APP + "\n@app.handler\nasync def aecho(p):\n    return p\n"))
    assert w.result("aecho", 7) == 7
    assert w.result("modules", "asyncio") != []


AWAITABLE_APP = """\
import asyncio, threading, portpool
app = portpool.App()

async def _where(p):
    await asyncio.sleep(0.01)
    return [p, threading.current_thread().name, id(asyncio.get_running_loop())]

@app.handler
def wrapped(p):
    return _where(p)  # a sync handler that returns a coroutine
"""


def test_an_awaitable_from_a_sync_handler_runs_on_one_loop_thread(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    w = spawn(write_app(AWAITABLE_APP))
    first = w.result("wrapped", 1)
    second = w.result("wrapped", 2)
    assert first[:2] == [1, "portpool-loop"]
    assert second[:2] == [2, "portpool-loop"]
    assert first[2] == second[2]  # the same loop each time
    w.close_stdin()
    assert w.wait(5) == 0, w.stderr


LATE_ASYNC_APP = """\
import portpool
app = portpool.App()

@app.handler
def register(p):
    async def late(q):
        return q
    app.add_handler(late, "late")
    return "ok"
"""


def test_an_async_handler_added_after_a_loopless_start_is_refused(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    w = spawn(write_app(LATE_ASYNC_APP))
    assert w.result("register") == "ok"
    reply = w.call("late", 1)
    assert reply["error"]["type"] == "HandlerError", reply
    assert "without an event loop" in reply["error"]["message"]
    assert w.call("late", 2)["error"]["type"] == "HandlerError"  # still serving, still refused
    w.close_stdin()
    assert w.wait(5) == 0, w.stderr


@BOTH
def test_eof_exits_zero_after_in_flight_sync_work(spawn: Callable[..., Worker], app: Any) -> None:
    w = spawn(app)
    id_ = w.request("sync_sleep", 0.3)
    time.sleep(0.05)
    w.close_stdin()
    msg = w.recv()
    assert msg["id"] == id_ and msg["result"]["id"] == id_, msg
    assert w.wait(5) == 0, w.stderr


@BOTH
def test_shutdown_finishes_work_and_refuses_late_requests(spawn: Callable[..., Worker], app: Any) -> None:
    w = spawn(app)
    a = w.request("sync_sleep", 0.3)
    time.sleep(0.05)
    w.send(protocol.shutdown_message())
    late = w.request("echo", "too late")
    frames = w.collect({a, late})
    assert "result" in frames[a][-1]
    assert frames[late][-1]["error"]["type"] == "ShuttingDown"
    assert w.wait(5) == 0, w.stderr


@BOTH
def test_grace_period_cancels_running_and_queued_sync_work(spawn: Callable[..., Worker], app: Any) -> None:
    w = spawn(app, env={"PORTPOOL_SHUTDOWN_GRACE": "0.3"})
    running = [w.request("sync_wait_cancel", 30) for _ in range(4)]  # max_concurrency 4
    queued = w.request("sync_wait_cancel", 30)
    time.sleep(0.1)
    start = time.monotonic()
    w.send(protocol.shutdown_message())
    frames = w.collect({*running, queued})
    for id_ in running:
        # the handler saw ctx.cancelled and returned, but the request was cancelled: Cancelled
        assert frames[id_][-1]["error"]["type"] == "Cancelled", frames[id_]
    assert frames[queued][-1]["error"]["type"] == "Cancelled"
    assert w.wait(5) == 0, w.stderr
    assert time.monotonic() - start < 3.0
    assert "still in flight" in w.stderr


@BOTH
def test_a_handler_that_ignores_cancel_is_abandoned(spawn: Callable[..., Worker], app: Any) -> None:
    w = spawn(app, env={"PORTPOOL_SHUTDOWN_GRACE": "0.2"})
    stuck = w.request("sync_sleep", 30)  # never looks at ctx.cancelled
    time.sleep(0.05)
    w.send(protocol.shutdown_message())
    frames = w.collect({stuck}, timeout=10)
    assert frames[stuck][-1]["error"]["type"] == "Cancelled"
    assert w.wait(10) == 0, w.stderr


@BOTH
def test_sigint_exits_130(spawn: Callable[..., Worker], app: Any) -> None:
    w = spawn(app)
    assert w.result("echo", 1) == 1
    w.proc.send_signal(signal.SIGINT)
    assert w.wait(5) == 130, w.stderr


@BOTH
def test_sigterm_exits_promptly_while_a_handler_runs(spawn: Callable[..., Worker], app: Any) -> None:
    w = spawn(app)
    w.request("sync_sleep", 10)
    time.sleep(0.05)
    w.proc.send_signal(signal.SIGTERM)
    assert w.wait(5) == -signal.SIGTERM


@BOTH
def test_protocol_violation_exits_2(spawn: Callable[..., Worker], app: Any) -> None:
    w = spawn(app)
    w.request("sync_sleep", 1, id=5)
    w.request("sync_sleep", 1, id=5)
    assert w.wait(5) == 2
    assert "already in flight" in w.stderr


@BOTH
def test_oversize_header_exits_2(spawn: Callable[..., Worker], app: Any) -> None:
    w = spawn(app, env={"PORTPOOL_MAX_FRAME": "64"})
    w.send_raw(struct.pack(">I", 65))
    assert w.wait(5) == 2, w.stderr


@BOTH
def test_output_closed_exits_1(app: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "portpool", str(app)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=worker_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        header = proc.stdout.read(4)
        proc.stdout.read(struct.unpack(">I", header)[0])  # the hello
        proc.stdin.write(protocol.encode(protocol.request_message(1, "sync_sleep", 0.2)))
        proc.stdin.flush()
        proc.stdout.close()  # the host stops reading: the response cannot be written
        assert proc.wait(5) == 1
        assert proc.stderr is not None
        assert b"writing to the host failed" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
