"""Misbehaving handlers for the bad-input matrix (tests/bad_input.rs)."""

import os
import sys
import time

import portpool

# Shutdown-during-build test: record our pid, then import slowly.
_pid_dir = os.environ.get("BAD_PID_DIR")
if _pid_dir:
    with open(os.path.join(_pid_dir, str(os.getpid())), "w") as f:
        f.write("started")
_import_sleep = float(os.environ.get("BAD_IMPORT_SLEEP", "0"))
if _import_sleep:
    print(f"bad.py: importing slowly ({_import_sleep}s)", file=sys.stderr, flush=True)
    time.sleep(_import_sleep)

app = portpool.App(max_concurrency=4)


@app.handler
def echo(params):
    return params


@app.handler
def big(n):
    """A result of `n` bytes."""
    return b"x" * n


@app.handler
def c_write(params):
    """Writes to fd 1 below Python's sys.stdout, as C code would."""
    os.write(1, b"\x00\x00\x00\x05garbage written to fd 1 from C\n")
    return "framing intact"


@app.handler
def exit0(params):
    """Exits with status 0 in the middle of a call."""
    os._exit(0)


@app.handler
def spin(params):
    """Burns CPU until the CPU limit ends the worker."""
    while True:
        pass


@app.handler
def pid(params):
    return os.getpid()
