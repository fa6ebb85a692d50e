"""A sync request read while nothing else runs runs on the thread that read it (no hand-off).

While it runs nobody reads input, so the watcher thread hands reading to another thread once
the handler runs long: pings, cancels, further requests and end of input are still acted on.
These tests pin down that guarantee and the races between an inline run finishing and the
watcher taking the lead over.
"""

from __future__ import annotations

import itertools
import pathlib
import random
import time
from collections.abc import Callable
from typing import Any

from conftest import Worker

from portpool import protocol


def test_sequential_sync_calls_run_on_the_thread_that_read_them(worker: Worker) -> None:
    # one request at a time, nothing else in flight: the reading thread runs each itself, so
    # consecutive calls mostly see the same thread (handing the lead on alternates threads)
    names = [worker.result("sync_sleep", 0)["thread"] for _ in range(30)]
    same = sum(a == b for a, b in itertools.pairwise(names))
    assert same >= 15, names


def test_ping_is_answered_while_a_long_sync_handler_runs_on_the_reading_thread(worker: Worker) -> None:
    slow = worker.request("sync_sleep", 2.0)  # alone: runs on the thread that read it
    time.sleep(0.1)
    start = time.monotonic()
    worker.send(protocol.ping_message(7))
    assert worker.recv(timeout=3.0) == {"type": "pong", "id": 7}
    assert time.monotonic() - start < 0.5
    assert worker.recv(timeout=5.0)["id"] == slow


def test_cancel_reaches_a_sync_handler_running_on_the_reading_thread(worker: Worker) -> None:
    id_ = worker.request("sync_wait_cancel", 5.0)
    time.sleep(0.1)
    start = time.monotonic()
    worker.send(protocol.cancel_message(id_))
    msg = worker.recv(timeout=3.0)
    assert msg["id"] == id_ and msg["error"]["type"] == "Cancelled", msg
    assert time.monotonic() - start < 1.0


def test_a_request_arriving_during_an_inline_run_starts_at_once(worker: Worker) -> None:
    slow = worker.request("sync_sleep", 1.5)
    time.sleep(0.1)
    start = time.monotonic()
    assert worker.result("echo", "meanwhile") == "meanwhile"
    assert time.monotonic() - start < 0.5
    assert worker.recv(timeout=5.0)["id"] == slow


def test_end_of_input_during_an_inline_run_answers_it_then_exits(worker: Worker) -> None:
    id_ = worker.request("sync_sleep", 0.3)
    time.sleep(0.05)
    worker.close_stdin()
    msg = worker.recv(timeout=5.0)
    assert msg["id"] == id_ and "result" in msg, msg
    assert worker.wait() == 0


def test_inline_runs_racing_the_takeover_lose_and_duplicate_nothing(
    spawn: Callable[..., Worker],
) -> None:
    # handlers lasting around the takeover time, with pings and requests arriving before,
    # during and after each run: every request gets exactly one response, every ping a pong
    worker = spawn()
    rng = random.Random(12)
    ids: set[int] = set()
    pings: set[int] = set()
    for i in range(150):
        seconds = rng.choice((0.0, 0.0005, 0.001, 0.002, 0.003, 0.005))
        ids.add(worker.request("sync_sleep", seconds))
        what = rng.random()
        if what < 0.3:
            time.sleep(rng.choice((0.0, 0.0005, 0.001, 0.002, 0.004)))
            worker.send(protocol.ping_message(10_000 + i))
            pings.add(10_000 + i)
        elif what < 0.5:
            ids.add(worker.request("echo", i))  # a second request, maybe during the run
        if rng.random() < 0.5:  # sometimes wait for everything so far, sometimes keep going
            _drain(worker, ids, pings)
    _drain(worker, ids, pings)
    assert worker.result("echo", "alive") == "alive"


def _drain(worker: Worker, ids: set[int], pings: set[int]) -> None:
    while ids or pings:
        msg = worker.recv(timeout=5.0)
        if msg["type"] == "pong":
            assert msg["id"] in pings, msg
            pings.discard(msg["id"])
        else:
            assert msg["type"] == "response" and msg["id"] in ids, msg
            assert "result" in msg, msg
            ids.discard(msg["id"])


def test_a_params_only_handler_cancelled_while_it_runs_answers_cancelled(
    spawn: Callable[..., Worker], write_app: Callable[..., Any], tmp_path: pathlib.Path
) -> None:
    # A handler of the params alone (no Context) runs on the folded common path of _run_sync:
    # a cancel applied while it runs still turns its result, or its exception, into Cancelled.
    path = write_app(
        "import os, time, portpool\n"
        "app = portpool.App()\n"
        "def _wait(where):\n"
        "    open(os.path.join(where, 'started'), 'w').close()\n"
        "    while not os.path.exists(os.path.join(where, 'release')):\n"
        "        time.sleep(0.005)\n"
        "@app.handler\n"
        "def wait_ok(params):\n"
        "    _wait(params)\n"
        "    return {'done': True}\n"
        "@app.handler\n"
        "def wait_fail(params):\n"
        "    _wait(params)\n"
        "    raise ValueError('after the cancel')\n"
    )
    w = spawn(path)
    for n, method in enumerate(["wait_ok", "wait_fail"]):
        where = tmp_path / f"run_{n}"
        where.mkdir()
        id_ = w.request(method, str(where))
        while not (where / "started").exists():  # the handler runs: the cancel comes while it does
            time.sleep(0.005)
        w.send(protocol.cancel_message(id_))
        w.send(protocol.ping_message(100 + n))  # read after the cancel: once ponged, it is applied
        assert w.recv(timeout=10.0) == {"type": "pong", "id": 100 + n}
        (where / "release").touch()
        msg = w.recv(timeout=10.0)
        assert msg["id"] == id_ and msg["error"]["type"] == "Cancelled", msg
    where = tmp_path / "uncancelled"
    where.mkdir()
    (where / "release").touch()
    assert w.result("wait_ok", str(where)) == {"done": True}
    err = w.call("wait_fail", str(where))["error"]
    assert err["type"] == "ValueError" and "after the cancel" in err["traceback"]
