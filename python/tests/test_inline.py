"""A sync request read while nothing else runs runs on the thread that read it (no hand-off).

While it runs nobody reads input, so the watcher thread hands reading to another thread once
the handler runs long: pings, cancels, further requests and end of input are still acted on.
These tests pin down that guarantee and the races between an inline run finishing and the
watcher taking the lead over.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable

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
