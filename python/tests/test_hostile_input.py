"""Input and handlers that used to take a whole worker down, now failing only the call concerned.

Each test runs the runtime as a real subprocess over real pipes (see conftest.Worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from conftest import Worker

from portpool import protocol


def _request_with_raw_params(id_: int, method: str, params: bytes) -> bytes:
    """A request frame whose params are the given raw MessagePack bytes (whatever Python can decode)."""
    body = b"\x84" + b"".join(
        msgpack.packb(x) for x in ("type", "request", "id", id_, "method", method, "params")
    )
    return protocol.frame(body + params)


# Params that are valid MessagePack (a Rust host can send them) but that msgpack-python cannot decode.
UNDECODABLE_PARAMS = {
    "deep": (b"\x91" * 5000 + b"\x01", "nested too deeply"),
    "array-key": (b"\x81\x92\x01\x02\xa1x", "map key is an array or a map"),
    "map-key": (b"\x81\x81\xa1k\x01\xa1x", "map key is an array or a map"),
    "bad-ext": (b"\xc7\x03\xff\x00\x00\x00", "invalid timestamp"),  # ext -1 (timestamp) of length 3
    "bad-utf8": (b"\x81\xa1k\xa2\xff\xfe", "not valid UTF-8"),
}


@pytest.mark.parametrize("kind", list(UNDECODABLE_PARAMS))
def test_undecodable_params_fail_only_that_call(worker: Worker, kind: str) -> None:
    params, fragment = UNDECODABLE_PARAMS[kind]
    long_sync = worker.request("sync_sleep", 0.5)
    long_async = worker.request("async_sleep", 0.5)
    time.sleep(0.05)  # both running
    start = time.monotonic()
    worker.send_raw(_request_with_raw_params(41, "echo", params))
    msg = worker.recv()
    assert msg["id"] == 41, msg  # the bad call is answered at once, before the long ones
    assert time.monotonic() - start < 0.4
    err = msg["error"]
    assert err["type"] == "InvalidParams", err
    assert fragment in err["message"] and "41" in err["message"] and "echo" in err["message"], err
    frames = worker.collect({long_sync, long_async})
    assert "result" in frames[long_sync][-1] and "result" in frames[long_async][-1], frames
    assert worker.result("echo", "still serving") == "still serving"
    assert worker.proc.poll() is None
    assert "protocol violation" not in worker.stderr


def test_undecodable_params_of_an_unknown_method_or_in_flight_id(worker: Worker) -> None:
    deep = UNDECODABLE_PARAMS["deep"][0]
    worker.send_raw(_request_with_raw_params(1, "nope", deep))
    assert worker.recv()["error"]["type"] == "MethodNotFound"
    worker.request("async_sleep", 0.3, id=2)
    worker.send_raw(_request_with_raw_params(2, "echo", deep))  # the id is in flight: a violation
    assert worker.wait(5) == 2
    assert "already in flight" in worker.stderr


def test_a_frame_with_no_readable_envelope_is_still_a_violation(worker: Worker) -> None:
    # Too deep, and no map around it: no id to answer, so the frame cannot be read as a request at all.
    worker.send_raw(protocol.frame(b"\x91" * 5000 + b"\x01"))
    assert worker.wait(5) == 2
    assert "not valid MessagePack" in worker.stderr


LOOP_HOG_APP = """\
import time, portpool
app = portpool.App(max_concurrency=8)

@app.handler
async def fast(p):
    return "fast"

@app.handler
async def hog(p):
    time.sleep(p)  # blocks the event loop
    return "hog"

@app.handler
def sync_echo(p):
    return p
"""


def _arrivals(w: Worker, until_id: int, start: float, timeout: float = 10.0) -> dict[tuple[str, int], float]:
    """Reads frames until the response of ``until_id``; returns when each (type, id) came, after ``start``."""
    seen: dict[tuple[str, int], float] = {}
    while ("response", until_id) not in seen:
        msg = w.recv(max(0.01, timeout - (time.monotonic() - start)))
        seen[(msg["type"], msg["id"])] = time.monotonic() - start
    return seen


@pytest.mark.parametrize("with_fast_async", [False, True], ids=["hog-only", "fast-and-hog"])
def test_a_loop_blocking_async_handler_does_not_hold_back_other_replies(
    spawn: Callable[..., Worker], write_app: Callable[..., Any], with_fast_async: bool
) -> None:
    w = spawn(write_app(LOOP_HOG_APP))
    batch = [protocol.request_message(2, "hog", 2.0)]
    if with_fast_async:
        batch.insert(0, protocol.request_message(1, "fast", None))
    batch += [protocol.ping_message(3), protocol.request_message(4, "sync_echo", "s")]
    start = time.monotonic()
    w.send_raw(b"".join(protocol.encode(m) for m in batch))  # ONE write: one read in the worker
    time.sleep(0.2)
    w.send_raw(
        protocol.encode(protocol.ping_message(5))
        + protocol.encode(protocol.request_message(6, "sync_echo", "t"))
    )
    seen = _arrivals(w, 2, start)
    for key in (("pong", 3), ("response", 4), ("pong", 5), ("response", 6)):
        assert seen.get(key, 99.0) < 1.0, seen  # the hog ends at 2 s
    assert seen[("response", 2)] >= 1.9, seen


ERRORS_APP = """\
import portpool
app = portpool.App(max_concurrency=4)

@app.handler
def fail(p):
    raise ValueError(p["char"] * p["n"])

@app.handler
def fail_typed(p):
    raise portpool.HandlerError(p["char"] * p["n"], type=p["char"] * p["n"], data=p.get("data"))

@app.handler
def fail_data(p):
    raise portpool.HandlerError("with data", data=b"x" * p)

@app.handler
def fail_long_traceback(p):
    try:
        raise KeyError("ü" * p)  # shows in the traceback only, as the context
    except KeyError:
        raise RuntimeError("é" * 100)

@app.handler
def echo(p):
    return p
"""

SMALL_FRAME = 4096


@pytest.mark.parametrize("char", ["a", "é", "€", "😀"], ids=["ascii", "2-byte", "3-byte", "4-byte"])
def test_long_error_messages_are_cut_by_encoded_bytes(
    spawn: Callable[..., Worker], write_app: Callable[..., Any], char: str
) -> None:
    env = {"PORTPOOL_MAX_FRAME": str(SMALL_FRAME)}
    w = spawn(write_app(ERRORS_APP), env=env, max_frame=SMALL_FRAME)
    assert w.call("fail", {"char": char, "n": 100})["error"]["message"] == char * 100  # fits: intact
    for n in (SMALL_FRAME, 1_000_000):
        err = w.call("fail", {"char": char, "n": n})["error"]
        assert err["type"] == "ValueError"
        kept, _, mark = err["message"].partition(" … ")
        assert kept == char * len(kept) and len(kept) >= 100, err["message"]  # whole characters only
        assert mark.startswith("[truncated ") and mark.endswith(" bytes]"), mark
        assert len(protocol.encode(protocol.response_error_message(1, **err))) <= SMALL_FRAME
        err = w.call("fail_typed", {"char": char, "n": n})["error"]
        assert "[truncated" in err["message"] and len(err["type"].encode()) <= 256
    assert w.result("echo", "alive") == "alive"
    assert w.proc.poll() is None


def test_huge_error_data_or_traceback_does_not_kill_the_worker(
    spawn: Callable[..., Worker], write_app: Callable[..., Any]
) -> None:
    env = {"PORTPOOL_MAX_FRAME": str(SMALL_FRAME)}
    w = spawn(write_app(ERRORS_APP), env=env, max_frame=SMALL_FRAME)
    err = w.call("fail_data", 100)["error"]  # small data fits: kept
    assert err["data"] == b"x" * 100 and err["message"] == "with data"
    err = w.call("fail_data", 10 * SMALL_FRAME)["error"]
    assert "data" not in err and "error data dropped" in err["message"], err
    err = w.call("fail_typed", {"char": "€", "n": 50_000, "data": {"k": "v"}})["error"]
    assert "[truncated" in err["message"]
    err = w.call("fail_long_traceback", 100_000)["error"]  # a traceback far over the limit: its tail is kept
    assert err["type"] == "RuntimeError" and err["message"] == "é" * 100
    assert "[truncated" in err["traceback"] and err["traceback"].rstrip().endswith("é" * 100), err[
        "traceback"
    ]
    assert w.result("echo", "alive") == "alive"


def test_error_responses_always_fit_the_frame_limit() -> None:
    from portpool._frames import _fit_error, _safe_str

    texts = ["", "a" * 10, "é" * 5000, "€" * 70_000, "😀" * 30_000, "a😀" * 20_000, "\udcff" * 3000]
    datas: list[Any] = [None, 1, b"x" * 50, b"x" * 100_000, {"k": "€" * 10_000}, {1, 2}]
    for max_frame in (200, 300, 1000, 4096, 65_536):
        for text in texts:
            for data in datas:
                body = _fit_error(9, text or "E", text, text if len(text) % 2 == 0 else None, data, max_frame)
                assert len(body) <= max_frame, (max_frame, len(text), type(data))
                err = protocol.unpack(body)["error"]
                if err["message"] == _safe_str(text) and (data is None or err.get("data") == data):
                    continue  # fitted whole
                assert "truncated" in err["message"] or "dropped" in err["message"] or not err["message"]
