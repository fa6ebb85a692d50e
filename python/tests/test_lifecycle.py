"""Start-up failures, shutdown, end of input, signals and protocol violations."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from conftest import APPS, Worker, worker_env

from portpool import protocol


def run_failing(
    app: Any, timeout: float = 10.0, args: list[str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "portpool", *(args if args is not None else [str(app)])],
        stdin=subprocess.PIPE,  # kept open: a hang would show as a timeout
        capture_output=True,
        env=worker_env(),
        timeout=timeout,
    )


def test_import_error_exits_nonzero_with_traceback(write_app: Callable[..., Any]) -> None:
    path = write_app("import portpool\nimport definitely_not_a_module_xyz\napp = portpool.App()\n")
    start = time.monotonic()
    proc = run_failing(path)
    assert time.monotonic() - start < 5
    assert proc.returncode == 1
    stderr = proc.stderr.decode()
    assert "Traceback (most recent call last)" in stderr
    assert "ModuleNotFoundError" in stderr and "definitely_not_a_module_xyz" in stderr
    assert proc.stdout == b""  # no hello


def test_exception_at_import_of_module_attr(write_app: Callable[..., Any]) -> None:
    path = write_app("raise RuntimeError('boom at import')\n", name="boom_mod.py")
    proc = subprocess.run(
        [sys.executable, "-m", "portpool", "boom_mod:app"],
        stdin=subprocess.PIPE,
        capture_output=True,
        env=worker_env(),
        cwd=str(path.parent),
        timeout=10,
    )
    assert proc.returncode == 1
    assert "RuntimeError: boom at import" in proc.stderr.decode()


def test_system_exit_at_import(write_app: Callable[..., Any]) -> None:
    path = write_app("import sys\nprint('leaving')\nsys.exit(3)\n")
    proc = run_failing(path)
    assert proc.returncode == 3
    assert proc.stdout == b""
    assert "leaving" in proc.stderr.decode()  # print at import goes to stderr, not the protocol


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("x = 1\n", "no portpool.App instance"),
        ("import portpool\na = portpool.App()\nb = portpool.App()\n", "several App instances"),
    ],
)
def test_app_not_found(write_app: Callable[..., Any], source: str, fragment: str) -> None:
    proc = run_failing(write_app(source))
    assert proc.returncode == 1
    assert fragment in proc.stderr.decode()


def test_missing_file_and_usage() -> None:
    proc = run_failing("/nonexistent/app.py")
    assert proc.returncode == 1 and "no such file" in proc.stderr.decode()
    proc = run_failing(None, args=[])
    assert proc.returncode == 1 and "usage" in proc.stderr.decode()


def test_module_attr_form(spawn: Callable[..., Worker], write_app: Callable[..., Any]) -> None:
    source = "import portpool\nworker_app = portpool.App(max_concurrency=2)\n"
    source += "@worker_app.handler\ndef hi(p):\n    return 'hi ' + p\n"
    path = write_app(source, name="named_mod.py")
    w = spawn(f"{path}:worker_app")
    assert w.hello is not None and w.hello["methods"] == ["hi"] and w.hello["max_concurrency"] == 2
    assert w.result("hi", "there") == "hi there"
    w2 = spawn("apps.basic:app")  # module:attr, importable from the tests directory (the cwd)
    assert w2.result("echo", 5) == 5


def test_stdin_eof_exits_zero_promptly(worker: Worker) -> None:
    assert worker.result("echo", 1) == 1
    start = time.monotonic()
    worker.close_stdin()
    assert worker.wait(5) == 0
    assert time.monotonic() - start < 1.0


def test_stdin_eof_lets_in_flight_work_finish(worker: Worker) -> None:
    id_ = worker.request("async_sleep", 0.3)
    worker.close_stdin()
    msg = worker.recv()
    assert msg == {"type": "response", "id": id_, "result": id_}
    assert worker.wait(5) == 0


def test_shutdown_finishes_in_flight_work(worker: Worker) -> None:
    a = worker.request("sync_sleep", 0.3)
    b = worker.request("async_sleep", 0.3)
    time.sleep(0.05)
    worker.send(protocol.shutdown_message())
    late = worker.request("echo", "too late")
    frames = worker.collect({a, b, late})
    assert "result" in frames[a][-1] and "result" in frames[b][-1]
    assert frames[late][-1]["error"]["type"] == "ShuttingDown"
    assert worker.wait(5) == 0


def test_shutdown_grace_cancels_stragglers(spawn: Callable[..., Worker]) -> None:
    w = spawn(env={"PORTPOOL_SHUTDOWN_GRACE": "0.3"})
    slow_async = w.request("async_sleep", 30)
    slow_sync = w.request("sync_wait_cancel", 30)
    time.sleep(0.05)
    start = time.monotonic()
    w.send(protocol.shutdown_message())
    frames = w.collect({slow_async, slow_sync})
    assert frames[slow_async][-1]["error"]["type"] == "Cancelled"
    assert frames[slow_sync][-1]["error"]["type"] == "Cancelled"
    assert w.wait(5) == 0
    assert time.monotonic() - start < 2.0


def test_sigterm_exits_promptly(worker: Worker) -> None:
    worker.request("sync_sleep", 10)
    time.sleep(0.05)
    start = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.wait(5)
    assert time.monotonic() - start < 1.0
    assert code == -signal.SIGTERM


def _frame(raw_body: bytes) -> bytes:
    return struct.pack(">I", len(raw_body)) + raw_body


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"\xff\xff\xff\xff", "FrameTooLarge"),
        (_frame(b"\xc1\xc1\xc1"), "not valid MessagePack"),
        (_frame(msgpack.packb([1, 2, 3])), "not a map"),
        (_frame(msgpack.packb({"type": "launch_missiles"})), "unknown message type"),
        (_frame(msgpack.packb({"type": "request", "id": 1})), "missing required key 'method'"),
        (_frame(msgpack.packb({"type": "pong", "id": 1})), "worker -> host"),
        (os.urandom(3) + b"\x00" * 5 + b"\xff" * 64, "protocol violation"),
        (struct.pack(">I", 100) + b"abc", "TruncatedFrame"),  # then EOF inside the frame
    ],
    ids=[
        "oversize",
        "bad-msgpack",
        "not-map",
        "unknown-type",
        "missing-key",
        "wrong-direction",
        "random",
        "truncated",
    ],
)
def test_malformed_input_exits_2(spawn: Callable[..., Worker], payload: bytes, fragment: str) -> None:
    w = spawn()
    w.send_raw(payload)
    w.close_stdin()
    code = w.wait(5)
    assert code == 2, w.stderr
    assert fragment in w.stderr, w.stderr


def test_oversize_header_with_env_override(spawn: Callable[..., Worker]) -> None:
    w = spawn(env={"PORTPOOL_MAX_FRAME": "64"})
    assert w.result("echo", "x" * 10) == "x" * 10
    w.send_raw(struct.pack(">I", 65))  # stdin stays open: the header alone must trigger the exit
    assert w.wait(5) == 2
    assert "65" in w.stderr and "64" in w.stderr


def test_duplicate_in_flight_id_is_a_violation(worker: Worker) -> None:
    worker.request("async_sleep", 1, id=5)
    worker.request("async_sleep", 1, id=5)
    assert worker.wait(5) == 2
    assert "already in flight" in worker.stderr


def test_blocked_event_loop_still_exits_on_eof(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    path = write_app(
        "import time, portpool\napp = portpool.App()\n"
        "@app.handler\nasync def hog(p):\n    time.sleep(p)\n    return 1\n"
    )
    w = spawn(path, env={"PORTPOOL_SHUTDOWN_GRACE": "0"})
    w.request("hog", 60)
    time.sleep(0.1)
    w.close_stdin()
    # the watchdog forces the exit even though the loop never gets control back
    assert w.wait(10) == 0
    assert "forcing exit" in w.stderr


def test_app_run_entry_point(write_app: Callable[..., Any]) -> None:
    path = write_app(
        "import portpool\napp = portpool.App()\n@app.handler\ndef echo(p):\n    return p\n"
        "if __name__ == '__main__':\n    app.run()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=worker_env(),
    )  # fmt: skip
    try:
        out, _ = proc.communicate(protocol.encode(protocol.request_message(1, "echo", "x")), timeout=10)
    finally:
        proc.kill()
    reader = protocol.FrameReader()
    msgs = [protocol.unpack(b) for b in reader.feed(out)]
    assert [m["type"] for m in msgs] == ["hello", "response"]
    assert msgs[1]["result"] == "x"
    assert proc.returncode == 0
    assert APPS.exists()


SPAWNING_APP = """\
import subprocess, portpool
app = portpool.App()

@app.handler
def spawn(p):
    child = subprocess.Popen(["sleep", "60"])
    # a grandchild under a live child, and one orphaned at once (its parent exits)
    holder = subprocess.Popen(["sh", "-c", "sleep 61 & echo $!; wait"], stdout=subprocess.PIPE)
    grandchild = int(holder.stdout.readline())
    out = subprocess.run(["sh", "-c", "sleep 62 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    return [child.pid, holder.pid, grandchild, int(out.stdout)]
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_stdin_eof_kills_the_rest_of_the_workers_process_group(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    w = spawn(write_app(SPAWNING_APP), new_session=True)  # leads its group, as under portpool
    pids: list[int] = w.result("spawn")
    try:
        assert all(_alive(p) for p in pids), pids
        w.close_stdin()
        assert w.wait(5) == 0, w.stderr
        deadline = time.monotonic() + 2.0
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not [p for p in pids if _alive(p)], "children and grandchildren outlived the worker"
    finally:
        _kill_all(pids)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_stdin_eof_never_kills_a_group_the_worker_does_not_lead(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    w = spawn(write_app(SPAWNING_APP))  # in pytest's own group: that group must be left alone
    pids: list[int] = w.result("spawn")
    try:
        w.close_stdin()
        assert w.wait(5) == 0, w.stderr
        time.sleep(0.2)
        assert all(_alive(p) for p in pids), pids
    finally:
        _kill_all(pids)
