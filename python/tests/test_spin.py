"""Low-latency mode: with ``PORTPOOL_SPIN_US`` set (the host's ``WorkerCommand::spin``), the
thread holding the lead polls the input for up to that long before a blocking read.

Behaviour must not change: calls are answered, pings too while a handler runs long, and a
frame arriving after the spin gave up is still read (by the blocking read that follows).
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import Callable

from conftest import Worker

from portpool import protocol
from portpool._runtime import Runtime
from portpool.app import App

SPIN_APP = """
import gc
import portpool
from portpool._runtime import Runtime

app = portpool.App(max_concurrency=4)

@app.handler
def echo(params):
    return params

@app.handler
def sleep(params):
    import time
    time.sleep(params)
    return "slept"

@app.handler
def spin_us(params):
    # what the runtime serving this call parsed from PORTPOOL_SPIN_US
    return [round(o._spin * 1e6) for o in gc.get_objects() if isinstance(o, Runtime)]
"""


def test_with_spin_set_calls_and_pings_are_answered(
    spawn: Callable[..., Worker], write_app: Callable[[str], pathlib.Path]
) -> None:
    w = spawn(write_app(SPIN_APP), env={"PORTPOOL_SPIN_US": "500"})
    assert w.result("spin_us") == [500]  # the env var reached the runtime
    for i in range(50):  # one at a time: each read after a response spins first
        assert w.result("echo", i) == i
    slow = w.request("sleep", 0.5)
    w.send(protocol.ping_message(77))
    assert w.recv() == {"type": "pong", "id": 77}  # read while the handler still runs
    assert w.recv()["id"] == slow
    time.sleep(0.01)  # longer than the spin: the next request finds a blocking read
    assert w.result("echo", "after a pause") == "after a pause"


def test_without_the_env_var_nothing_spins(
    spawn: Callable[..., Worker], write_app: Callable[[str], pathlib.Path]
) -> None:
    w = spawn(write_app(SPIN_APP))
    assert w.result("spin_us") == [0]


def test_read_spinning_reads_what_waits_and_what_comes_after_the_spin() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    runtime = Runtime(App(), in_r, out_w, spin=0.001)
    try:
        assert runtime._spin_poll is not None
        os.write(in_w, b"waiting")
        assert bytes(runtime._read_spinning()) == b"waiting"
        later = threading.Timer(0.05, os.write, (in_w, b"later"))  # after the 1 ms spin
        later.start()
        assert bytes(runtime._read_spinning()) == b"later"
        later.join()
        os.close(in_w)
        assert bytes(runtime._read_spinning()) == b""  # end of input ends the spin too
    finally:
        runtime.close()
        for fd in (in_r, out_r, out_w):
            os.close(fd)
