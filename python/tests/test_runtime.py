"""The runtime as a real subprocess over real pipes: requests, concurrency, streaming, cancel, errors."""

from __future__ import annotations

import pathlib
import platform
import re
import time
from collections.abc import Callable
from typing import Any

from conftest import Worker

from portpool import protocol


def test_hello(worker: Worker) -> None:
    hello = worker.hello
    assert hello is not None
    assert list(hello) == [
        "type",
        "protocol_major",
        "protocol_minor",
        "runtime",
        "runtime_version",
        "pid",
        "max_concurrency",
        "methods",
        "capabilities",
    ]
    assert hello["type"] == "hello"
    assert (hello["protocol_major"], hello["protocol_minor"]) == (1, 0)
    assert hello["runtime"] == "python"
    assert hello["runtime_version"] == platform.python_version()
    assert hello["pid"] == worker.proc.pid
    assert hello["max_concurrency"] == 4
    assert hello["methods"] == sorted(hello["methods"])
    assert {"echo", "add", "async_sleep", "stream_sync"} <= set(hello["methods"])
    assert hello["capabilities"] == ["stream", "cancel", "session"]
    # hello is the very first frame: nothing precedes it on stdout, the import-time print went to stderr
    assert bytes(worker.raw_stdout).startswith(protocol.encode(hello))
    assert "basic app imported" in worker.wait_stderr("basic app imported")


def test_echo_and_friends(worker: Worker) -> None:
    value = {
        "text": "héllo",
        "blob": b"\x00\xff",
        "n": -3,
        "x": 1.5,
        "ok": True,
        "none": None,
        "list": [1, 2],
    }
    assert worker.result("echo", value) == value
    assert worker.result("add", {"a": 2, "b": 40}) == 42
    assert worker.result("no_params") == "none needed"
    assert worker.result("pid") == worker.proc.pid
    who = worker.result("whoami", None, id=77, trace="00-abc", deadline_ms=10_000)
    assert who["request_id"] == 77 and who["method"] == "whoami" and who["trace"] == "00-abc"
    assert who["session_id"] is None and who["has_session"] is False
    assert 8.0 < who["remaining"] <= 10.0
    assert worker.result("echo", None) is None


def test_response_keys_in_wire_order(worker: Worker) -> None:
    worker.request("echo", "hi", id=1)
    assert worker.recv() == {"type": "response", "id": 1, "result": "hi"}
    # byte-exact, identical to the response_ok vector
    assert bytes(worker.raw_stdout).endswith(
        bytes.fromhex("0000001d83a474797065a8726573706f6e7365a2696401a6726573756c74a26869")
    )


def test_async_handlers_run_concurrently(spawn: Callable[..., Worker], write_app: Callable[..., Any]) -> None:
    path = write_app(
        "import asyncio, portpool\n"
        "app = portpool.App(max_concurrency=16)\n"
        "@app.handler\n"
        "async def nap(params):\n"
        "    await asyncio.sleep(params)\n"
        "    return params\n"
    )
    w = spawn(path)
    start = time.monotonic()
    ids = {w.request("nap", 0.2) for _ in range(10)}
    frames = w.collect(ids)
    elapsed = time.monotonic() - start
    assert all(f[-1]["result"] == 0.2 for f in frames.values())
    assert elapsed < 1.5, elapsed


def test_sync_handlers_run_in_parallel_on_the_pool(worker: Worker) -> None:
    start = time.monotonic()
    ids = {worker.request("sync_sleep", 0.3) for _ in range(4)}
    frames = worker.collect(ids)
    elapsed = time.monotonic() - start
    threads = {f[-1]["result"]["thread"] for f in frames.values()}
    assert len(threads) == 4 and all(t.startswith("portpool-handler") for t in threads)
    assert elapsed < 1.0, elapsed  # 4 x 0.3 s serially would be 1.2 s


def test_max_concurrency_queues_in_order(worker: Worker) -> None:
    # max_concurrency is 4: the blockers take every slot; one slot frees at 0.3 s, the others at
    # 0.9 s, so the queued requests run one after another in that one slot, in the order the queue
    # hands them out. Each returns a ticket taken when it started: the tickets give the start order.
    start = time.monotonic()
    blockers = [worker.request("sync_sleep", 0.3)] + [worker.request("sync_sleep", 0.9) for _ in range(3)]
    queued = [worker.request("ticket") for _ in range(6)]
    arrived: dict[int, tuple[float, Any]] = {}
    while len(arrived) < len(blockers) + len(queued):
        msg = worker.recv()
        arrived[msg["id"]] = (time.monotonic() - start, msg.get("result"))
    tickets = [arrived[i][1] for i in queued]
    assert tickets == sorted(tickets), ("queued requests did not start in arrival order", tickets)
    assert all(arrived[blockers[0]][0] <= arrived[i][0] for i in queued), arrived  # after a slot freed
    assert all(arrived[i][0] < arrived[b][0] for i in queued for b in blockers[1:]), arrived


def test_responses_out_of_order(worker: Worker) -> None:
    slow = worker.request("async_sleep", 0.4)
    fast = worker.request("async_sleep", 0.05)
    instant = worker.request("echo", "now")
    got = [worker.recv()["id"] for _ in range(3)]
    assert got == [instant, fast, slow]


def test_streaming_sync_generator(worker: Worker) -> None:
    id_ = worker.request("stream_sync", 5)
    frames = worker.collect({id_})[id_]
    assert [f["type"] for f in frames] == ["chunk"] * 5 + ["response"]
    assert [f["data"] for f in frames[:-1]] == [{"i": i} for i in range(5)]
    assert frames[-1] == {"type": "response", "id": id_, "result": None}


def test_streaming_async_generator(worker: Worker) -> None:
    id_ = worker.request("stream_async", 4)
    frames = worker.collect({id_})[id_]
    assert [f.get("data") for f in frames] == [0, 10, 20, 30, None]
    assert frames[-1] == {"type": "response", "id": id_, "result": None}


def test_streaming_empty_and_failing(worker: Worker) -> None:
    id_ = worker.request("stream_sync", 0)
    assert worker.collect({id_})[id_] == [{"type": "response", "id": id_, "result": None}]
    id_ = worker.request("stream_fail")
    frames = worker.collect({id_})[id_]
    assert frames[0]["data"] == 1
    assert frames[1]["error"]["type"] == "RuntimeError"
    assert "stream broke" in frames[1]["error"]["message"]


def test_cancel_async_handler(worker: Worker, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "marker"
    id_ = worker.request("async_block", {"seconds": 0.5, "marker": str(marker)})
    time.sleep(0.1)
    worker.send(protocol.cancel_message(id_))
    msg = worker.recv()
    assert msg["id"] == id_
    assert msg["error"]["type"] == "Cancelled"
    time.sleep(0.6)
    assert not marker.exists(), "the cancelled handler kept running"
    assert worker.result("echo", "after") == "after"


def test_cancel_sync_handler_sets_event(worker: Worker) -> None:
    id_ = worker.request("sync_wait_cancel", 5.0)
    time.sleep(0.1)
    start = time.monotonic()
    worker.send(protocol.cancel_message(id_))
    msg = worker.recv()
    assert msg["id"] == id_ and msg["error"]["type"] == "Cancelled"
    assert time.monotonic() - start < 1.0
    assert worker.result("echo", 1) == 1


def test_cancel_sync_stream_stops_it(worker: Worker) -> None:
    id_ = worker.request("stream_forever")
    for _ in range(3):
        assert worker.recv()["type"] == "chunk"
    worker.send(protocol.cancel_message(id_))
    while True:
        msg = worker.recv()
        if msg["type"] == "response":
            break
    assert msg["error"]["type"] == "Cancelled"
    assert worker.result("echo", 2) == 2  # and no stray chunks afterwards


def test_cancel_queued_request_and_unknown_id(worker: Worker) -> None:
    busy = [worker.request("sync_sleep", 0.4) for _ in range(4)]
    queued = worker.request("echo", "queued")
    worker.send(protocol.cancel_message(queued))
    worker.send(protocol.cancel_message(999_999))  # unknown: ignored
    msg = worker.recv()
    assert msg["id"] == queued and msg["error"]["type"] == "Cancelled"
    frames = worker.collect(set(busy))
    assert all("result" in f[-1] for f in frames.values())


def test_error_with_traceback(worker: Worker) -> None:
    msg = worker.call("fail", 42)
    err = msg["error"]
    assert err["type"] == "ValueError"
    assert err["message"] == "bad input: 42"
    assert "inner_failure" in err["traceback"] and "fail" in err["traceback"]
    assert err["traceback"].startswith("Traceback (most recent call last):")
    # None of the runtime's own frames (it is split over several portpool/_*.py modules).
    assert not re.search(r"portpool[/\\]_\w+\.py", err["traceback"]), err["traceback"]
    assert "data" not in err

    err = worker.call("async_fail", "k")["error"]
    assert err["type"] == "KeyError" and err["message"] == "'k'" and "async_fail" in err["traceback"]

    err = worker.call("fail_with_data", "x")["error"]
    assert (
        err["type"] == "ValidationError"
        and err["message"] == "invalid field"
        and err["data"] == {"field": "x"}
    )


def test_unknown_method(worker: Worker) -> None:
    err = worker.call("does_not_exist")["error"]
    assert err["type"] == "MethodNotFound"
    assert "does_not_exist" in err["message"] and "echo" in err["message"]
    assert worker.call("_portpool_internal")["error"]["type"] == "MethodNotFound"


def test_unencodable_result_is_an_error(worker: Worker) -> None:
    err = worker.call("unencodable")["error"]
    assert err["type"] == "EncodeError"
    assert "dict" in err["message"] and "set" in err["message"]
    assert worker.result("echo", "alive") == "alive"


def test_result_larger_than_max_frame(spawn: Callable[..., Worker]) -> None:
    w = spawn(env={"PORTPOOL_MAX_FRAME": "1000"})
    assert w.result("big", 500) == b"x" * 500
    err = w.call("big", 5000)["error"]
    assert err["type"] == "EncodeError" and "maximum frame size" in err["message"]


def test_sys_exit_in_handler_is_an_error(worker: Worker) -> None:
    err = worker.call("exit_in_handler")["error"]
    assert err["type"] == "SystemExit"
    assert worker.result("echo", "still here") == "still here"


def test_print_goes_to_stderr(worker: Worker) -> None:
    assert worker.result("shout", "hello") == "HELLO"
    assert worker.result("echo", 1) == 1
    stderr = worker.wait_stderr("via sys.stdout")
    assert "printed: hello" in stderr and "via sys.stdout" in stderr


def test_raw_fd1_writes_do_not_corrupt_frames(worker: Worker) -> None:
    assert worker.result("garbage") == "still framed"
    assert worker.result("echo", [1, 2, 3]) == [1, 2, 3]
    assert "written straight to fd 1" in worker.wait_stderr("written straight to fd 1")


def test_child_process_cannot_touch_the_protocol(worker: Worker) -> None:
    assert worker.result("child") == 0
    assert worker.result("echo", "framed") == "framed"
    stderr = worker.wait_stderr("child stdin")
    assert "child says hi" in stderr and "child stdin: ''" in stderr


def test_ping_pong_while_all_slots_busy(worker: Worker) -> None:
    busy = {worker.request("sync_sleep", 0.5) for _ in range(6)}  # 4 running, 2 queued
    time.sleep(0.05)
    start = time.monotonic()
    worker.send(protocol.ping_message(123))
    msg = worker.recv()
    assert msg == {"type": "pong", "id": 123}
    assert time.monotonic() - start < 0.3
    worker.collect(busy)


def test_sessions(worker: Worker) -> None:
    assert [worker.result("counter", None, session="a") for _ in range(3)] == [1, 2, 3]
    assert worker.result("counter", None, session="b") == 1
    who = worker.result("whoami", None, session="a")
    assert who["session_id"] == "a" and who["has_session"] is True
    worker.send(protocol.session_close_message("a"))
    assert worker.result("counter", None, session="a") == 1
    assert worker.result("counter", None, session="b") == 2
    worker.send(protocol.session_close_message("never-opened"))  # harmless
    assert worker.call("counter")["error"]["type"] == "AssertionError"  # no session -> ctx.session is None
