"""The runtime under concurrency: many requests of every kind at once, big frames, id reuse."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from conftest import Worker

from portpool import protocol

MIXED_APP = """
import asyncio, random, threading, time, portpool

app = portpool.App(max_concurrency=8)

@app.handler
def echo(params):
    return params

@app.handler
async def aecho(params):
    return params

@app.handler
def snooze(params, ctx):
    ctx.cancelled.wait(params)
    return params

@app.handler
async def anap(params):
    await asyncio.sleep(params)
    return params

@app.handler
def count(params, ctx):
    for i in range(params):
        if ctx.cancelled.is_set():
            break
        yield i

@app.handler
async def acount(params):
    for i in range(params):
        await asyncio.sleep(0)
        yield i

@app.handler
def big(params):
    return b"b" * params

@app.handler
async def abig(params):
    return b"a" * params
"""


def _parse(raw: bytes) -> list[dict[str, Any]]:
    reader = protocol.FrameReader()
    msgs = [protocol.unpack(body) for body in reader.feed(raw)]
    assert reader.at_boundary
    return msgs


def test_mixed_burst_with_pings_and_cancels_answers_everything_once(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    w = spawn(write_app(MIXED_APP))
    rng = random.Random(1234)
    kinds = [
        ("echo", lambda: rng.randrange(1000)),
        ("aecho", lambda: "x" * rng.randrange(50)),
        ("snooze", lambda: rng.choice([0.0, 0.001, 0.02])),
        ("anap", lambda: rng.choice([0.0, 0.001, 0.02])),
        ("count", lambda: rng.randrange(5)),
        ("acount", lambda: rng.randrange(5)),
    ]
    blob = bytearray()
    requests: dict[int, str] = {}
    pings: set[int] = set()
    cancelled: set[int] = set()
    next_id = 1
    for _ in range(400):
        roll = rng.random()
        if roll < 0.1:
            pings.add(next_id)
            blob += protocol.encode(protocol.ping_message(next_id))
        elif roll < 0.2 and requests:
            victim = rng.choice(sorted(requests))
            cancelled.add(victim)
            blob += protocol.encode(protocol.cancel_message(victim))
            continue
        else:
            method, params = rng.choice(kinds)
            requests[next_id] = method
            blob += protocol.encode(protocol.request_message(next_id, method, params()))
        next_id += 1
    # in a few writes, so batches split frames at arbitrary points
    cuts = sorted(rng.sample(range(1, len(blob)), 5))
    for start, end in zip([0, *cuts], [*cuts, len(blob)], strict=True):
        w.send_raw(bytes(blob[start:end]))

    responses: dict[int, dict[str, Any]] = {}
    pongs: set[int] = set()
    chunks: dict[int, list[Any]] = {}
    deadline = time.monotonic() + 20
    while len(responses) < len(requests) or len(pongs) < len(pings):
        msg = w.recv(max(0.1, deadline - time.monotonic()))
        if msg["type"] == "pong":
            assert msg["id"] in pings and msg["id"] not in pongs, msg
            pongs.add(msg["id"])
        elif msg["type"] == "chunk":
            assert msg["id"] not in responses, f"chunk after the response: {msg}"
            chunks.setdefault(msg["id"], []).append(msg["data"])
        else:
            assert msg["type"] == "response" and msg["id"] in requests, msg
            assert msg["id"] not in responses, f"second response: {msg}"
            responses[msg["id"]] = msg
    for id_, msg in responses.items():
        if "error" in msg:
            assert msg["error"]["type"] == "Cancelled" and id_ in cancelled, msg
        elif requests[id_] in ("count", "acount"):
            assert msg["result"] is None
            assert chunks.get(id_, []) == list(range(len(chunks.get(id_, []))))
    # nothing else arrives afterwards, and the worker still works
    assert w.result("echo", "done") == "done"


def test_big_frames_never_interleave_with_other_output(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    w = spawn(write_app(MIXED_APP))
    size = 3 * 1024 * 1024  # far more than a pipe holds: output backs up while others write
    blob = bytearray()
    ids: dict[int, tuple[str, Any]] = {}
    for i in range(1, 121):
        method, params = [
            ("big", size),
            ("abig", size),
            ("echo", i),
            ("aecho", i),
            ("count", 3),
        ][i % 5]
        ids[i] = (method, params)
        blob += protocol.encode(protocol.request_message(i, method, params))
        if i % 7 == 0:
            blob += protocol.encode(protocol.ping_message(10_000 + i))
    w.send_raw(bytes(blob))
    frames = w.collect(set(ids), timeout=30)
    for id_, (method, params) in ids.items():
        final = frames[id_][-1]
        assert final["type"] == "response", final
        if method == "big":
            assert final["result"] == b"b" * size
        elif method == "abig":
            assert final["result"] == b"a" * size
        elif method == "count":
            assert [f["data"] for f in frames[id_][:-1]] == [0, 1, 2]
        else:
            assert final["result"] == params
    assert w.result("echo", 1) == 1
    # the raw byte stream is whole frames back to back
    msgs = _parse(bytes(w.raw_stdout))
    assert sum(1 for m in msgs if m["type"] == "pong") == len([i for i in ids if i % 7 == 0])


def test_id_reused_right_after_its_response(worker: Worker) -> None:
    # the host may reuse an id as soon as it sees the response: never a "duplicate id" violation
    for i in range(300):
        method = ("echo", "async_sleep")[i % 2]
        msg = worker.call(method, 0 if method == "async_sleep" else i, id=7)
        assert "result" in msg, msg
    assert worker.proc.poll() is None


def test_cancel_in_the_same_write_as_its_request(worker: Worker) -> None:
    for method, params in (("async_sleep", 5), ("sync_wait_cancel", 5.0), ("stream_forever", None)):
        id_ = 500 + len(method)
        blob = protocol.encode(protocol.request_message(id_, method, params))
        blob += protocol.encode(protocol.cancel_message(id_))
        start = time.monotonic()
        worker.send_raw(blob)
        frames = worker.collect({id_})[id_]
        assert frames[-1]["error"]["type"] == "Cancelled", frames[-1]
        assert time.monotonic() - start < 1.0
    assert worker.result("echo", "ok") == "ok"


def test_blocking_sync_handler_does_not_block_reading(worker: Worker) -> None:
    # each of these runs on the thread that read it; reading must go on meanwhile
    blockers = [worker.request("sync_wait_cancel", 5.0) for _ in range(3)]
    time.sleep(0.05)
    start = time.monotonic()
    assert worker.result("echo", "quick") == "quick"
    worker.send(protocol.ping_message(42))
    assert worker.recv() == {"type": "pong", "id": 42}
    for id_ in blockers:
        worker.send(protocol.cancel_message(id_))
    frames = worker.collect(set(blockers))
    assert all(f[-1]["error"]["type"] == "Cancelled" for f in frames.values())
    assert time.monotonic() - start < 1.0


def test_sync_responses_written_by_handler_threads_stay_whole(worker: Worker) -> None:
    # many sync handlers finishing at once write their own frames concurrently
    ids = {worker.request("big", 200_000 + i) for i in range(40)}
    frames = worker.collect(ids, timeout=20)
    for id_ in ids:
        assert len(frames[id_][-1]["result"]) >= 200_000
    _parse(bytes(worker.raw_stdout))
