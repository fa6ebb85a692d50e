"""The shared byte-exact vectors (protocol/vectors/vectors.json) against portpool.protocol."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import msgpack
import pytest

from portpool import protocol

VECTORS_PATH = pathlib.Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "vectors.json"
DATA = json.loads(VECTORS_PATH.read_text())
VECTORS: list[dict[str, Any]] = DATA["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}
ENCODABLE = [v for v in VECTORS if not v.get("decode_only")]
DECODE_ONLY = [v for v in VECTORS if v.get("decode_only")]


def from_json(value: Any) -> Any:
    """JSON form -> protocol value; {"$bin": hex} is a bin payload."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def test_vectors_present() -> None:
    assert DATA["protocol"] == f"{protocol.PROTOCOL_MAJOR}.{protocol.PROTOCOL_MINOR}"
    kinds = {v["message"]["type"] for v in ENCODABLE}
    assert kinds == {
        "hello", "request", "response", "chunk", "cancel", "ping", "pong", "shutdown", "session_close"
    }  # fmt: skip
    assert DECODE_ONLY


@pytest.mark.parametrize("vector", ENCODABLE, ids=lambda v: v["name"])
def test_encode_matches_frame(vector: dict[str, Any]) -> None:
    message = from_json(vector["message"])
    assert protocol.encode(message).hex() == vector["frame"]
    assert protocol.frame(protocol.pack(message)).hex() == vector["frame"]
    # plain msgpack agrees too (what the generator used)
    assert msgpack.packb(message, use_bin_type=True).hex() == vector["frame"][8:]


@pytest.mark.parametrize("vector", ENCODABLE, ids=lambda v: v["name"])
def test_decode_matches_message(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["frame"])
    decoded = protocol.decode_frame(frame)
    expected = from_json(vector["message"])
    assert decoded == expected
    assert list(decoded) == list(expected)  # wire order preserved
    # the incremental reader agrees, even fed one byte at a time
    reader = protocol.FrameReader()
    bodies = [b for i in range(len(frame)) for b in reader.feed(frame[i : i + 1])]
    assert bodies == [frame[4:]]
    assert reader.at_boundary
    assert protocol.unpack(bodies[0]) == expected


@pytest.mark.parametrize("vector", DECODE_ONLY, ids=lambda v: v["name"])
def test_decode_only_vectors(vector: dict[str, Any]) -> None:
    decoded = protocol.decode_frame(bytes.fromhex(vector["frame"]))
    assert decoded == from_json(BY_NAME[vector["equals"]]["message"])


def _check_builder(name: str, built: dict[str, Any]) -> None:
    vector = BY_NAME[name]
    assert built == from_json(vector["message"])
    assert protocol.encode(built).hex() == vector["frame"], name


def test_runtime_builders_produce_vector_bytes() -> None:
    _check_builder(
        "hello",
        protocol.hello_message(
            runtime_version="3.11.7", pid=4242, max_concurrency=16, methods=["echo", "sleep"]
        ),
    )
    _check_builder("response_ok", protocol.response_ok_message(1, "hi"))
    _check_builder("response_ok_nil", protocol.response_ok_message(2, None))
    _check_builder(
        "response_error",
        protocol.response_error_message(
            3,
            "ValueError",
            "bad input",
            traceback="Traceback (most recent call last):\n  ...\nValueError: bad input\n",
            data={"field": "x"},
        ),
    )
    _check_builder("response_error_minimal", protocol.response_error_message(4, "KeyError", "'k'"))
    _check_builder("chunk", protocol.chunk_message(5, b"\xde\xad\xbe\xef"))
    _check_builder("pong", protocol.pong_message(7))


def test_host_builders_produce_vector_bytes() -> None:
    _check_builder("request_minimal", protocol.request_message(1, "echo", "hi"))
    _check_builder(
        "request_full",
        protocol.request_message(
            4294967296,
            "embed",
            from_json(BY_NAME["request_full"]["message"]["params"]),
            session="s-1",
            deadline_ms=2500,
            trace="00-abc-def-01",
        ),
    )
    _check_builder("cancel", protocol.cancel_message(5))
    _check_builder("ping", protocol.ping_message(7))
    _check_builder("shutdown", protocol.shutdown_message())
    _check_builder("session_close", protocol.session_close_message("s-1"))


def test_runtime_error_frame_matches_vector() -> None:
    """The runtime's own error-response path (not just the builder) yields the vector bytes."""
    from portpool._runtime import Runtime
    from portpool.app import App

    runtime = Runtime(App(), -1, -1)
    frame = runtime._error_frame_plain(4, "KeyError", "'k'")
    assert frame.hex() == BY_NAME["response_error_minimal"]["frame"]
    runtime.close()
