"""The runtime reads its input into one reused buffer: frames split across reads in any way,
including frames larger than one read, arrive intact, for sync and async handlers alike."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from conftest import Worker

from portpool import protocol

APP = """\
import portpool
app = portpool.App(max_concurrency=4)

@app.handler
def echo(params):
    return params

@app.handler
async def aecho(params):
    return params
"""


def test_frames_split_across_reads_arrive_intact(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    w = spawn(write_app(APP))
    rng = random.Random(7)
    sizes = [0, 1, 100, 4000, 256 * 1024 - 30, 256 * 1024 + 7, 600 * 1024] + [
        rng.randrange(0, 3000) for _ in range(60)
    ]
    rng.shuffle(sizes)
    expected: dict[int, bytes] = {}
    stream = b""
    for id_, size in enumerate(sizes, start=1):
        payload = rng.randbytes(size)
        expected[id_] = payload
        stream += protocol.encode(protocol.request_message(id_, rng.choice(["echo", "aecho"]), payload))
    pos = 0
    while pos < len(stream):  # cuts anywhere: inside headers, bodies, across several frames
        step = rng.choice([1, 3, 50, 5000, 70_000, 300_000])
        w.send_raw(stream[pos : pos + step])
        pos += step
        if rng.random() < 0.2:
            time.sleep(0.002)  # let the worker read what it has so far
    got = w.collect(set(expected), timeout=20.0)
    for id_, payload in expected.items():
        (msg,) = got[id_]
        assert msg.get("result") == payload, (id_, len(payload), msg.get("error"))
