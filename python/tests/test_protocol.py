"""Unit tests of portpool.protocol: framing and validation."""

from __future__ import annotations

import struct

import msgpack
import pytest

from portpool import protocol


def body(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def test_frame_reader_splits_and_joins() -> None:
    frames = b"".join(protocol.encode(protocol.ping_message(i)) for i in range(5))
    reader = protocol.FrameReader()
    out = reader.feed(frames[:7]) + reader.feed(frames[7:30]) + reader.feed(frames[30:])
    assert [protocol.unpack(b)["id"] for b in out] == [0, 1, 2, 3, 4]
    assert reader.at_boundary
    reader.eof()  # clean


def test_frame_reader_rejects_oversize_header_before_body() -> None:
    reader = protocol.FrameReader(max_frame=100)
    assert reader.feed(struct.pack(">I", 100) + b"x" * 100) == [b"x" * 100]
    with pytest.raises(protocol.FrameTooLarge) as info:
        reader.feed(b"\xff\xff\xff\xff")
    assert info.value.length == 0xFFFFFFFF
    assert "4294967295" in str(info.value)


def test_frame_reader_truncated() -> None:
    reader = protocol.FrameReader()
    reader.feed(struct.pack(">I", 10) + b"abc")
    with pytest.raises(protocol.TruncatedFrame):
        reader.eof()
    reader = protocol.FrameReader()
    reader.feed(b"\x00\x00")
    with pytest.raises(protocol.TruncatedFrame):
        reader.eof()


def test_empty_body_frame() -> None:
    assert protocol.FrameReader().feed(b"\x00\x00\x00\x00") == [b""]
    with pytest.raises(protocol.Malformed):
        protocol.unpack(b"")


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"\xc1", "not valid MessagePack"),
        (b"\x81\xa4type", "not valid MessagePack"),  # truncated map
        (body([1, 2]), "not a map"),
        (body({"id": 1}), "no string 'type'"),
        (body({"type": "explode"}), "unknown message type 'explode'"),
        (body({"type": "request", "id": 1, "method": "m"}), "missing required key 'params'"),
        (body({"type": "request", "id": -1, "method": "m", "params": 1}), "'id' must be u64"),
        (body({"type": "request", "id": True, "method": "m", "params": 1}), "'id' must be u64"),
        (body({"type": "request", "id": 1, "method": 5, "params": 1}), "'method' must be str"),
        (body({"type": "request", "id": 1, "method": "m", "params": 1, "session": 3}), "'session'"),
        (body({"type": "cancel"}), "missing required key 'id'"),
        (body({"type": "session_close"}), "missing required key 'session'"),
        (body({"type": "response", "id": 1}), "neither 'result' nor 'error'"),
        (body({"type": "response", "id": 1, "error": {"type": "E"}}), "'message'"),
        (body({"type": "ping", "id": 1}) + b"\x00", "not valid MessagePack"),  # trailing bytes
    ],
)
def test_unpack_rejects(raw: bytes, fragment: str) -> None:
    with pytest.raises(protocol.Malformed) as info:
        protocol.unpack(raw)
    assert fragment in str(info.value)


def test_unpack_ignores_unknown_keys_and_normalizes_order() -> None:
    raw = body({"params": [1], "x_private": 1, "method": "m", "id": 9, "type": "request", "trace": "t"})
    msg = protocol.unpack(raw)
    assert list(msg.items()) == [
        ("type", "request"),
        ("id", 9),
        ("method", "m"),
        ("params", [1]),
        ("trace", "t"),
    ]


def test_unpack_error_response_keeps_data() -> None:
    raw = protocol.pack(protocol.response_error_message(1, "E", "m", data=[1, b"\x00"]))
    assert protocol.unpack(raw)["error"] == {"type": "E", "message": "m", "data": [1, b"\x00"]}


def test_non_string_map_keys_in_params_are_accepted() -> None:
    raw = body({"type": "request", "id": 1, "method": "m", "params": {1: "one"}})
    assert protocol.unpack(raw)["params"] == {1: "one"}


def test_optional_keys_omitted() -> None:
    assert protocol.request_message(1, "m", None) == {
        "type": "request",
        "id": 1,
        "method": "m",
        "params": None,
    }
    assert "traceback" not in protocol.response_error_message(1, "E", "m")["error"]
    assert protocol.response_ok_message(1, None) == {"type": "response", "id": 1, "result": None}


def test_decode_frame_checks_length() -> None:
    frame = protocol.encode(protocol.ping_message(1))
    with pytest.raises(protocol.TruncatedFrame):
        protocol.decode_frame(frame[:-1])
    with pytest.raises(protocol.Malformed):
        protocol.decode_frame(frame + b"\x00")
    with pytest.raises(protocol.FrameTooLarge):
        protocol.decode_frame(frame, max_frame=3)


def test_frame_reader_any_split_of_many_frames() -> None:
    frames = [protocol.encode(protocol.request_message(i, "m", "x" * (i * 37 % 300))) for i in range(40)]
    stream = b"".join(frames)
    expected = [f[protocol.HEADER_SIZE :] for f in frames]
    for step in (1, 3, 4, 5, 64, 1000, len(stream)):
        reader = protocol.FrameReader()
        got: list[bytes] = []
        for start in range(0, len(stream), step):
            got += reader.feed(stream[start : start + step])
        assert got == expected, step
        assert all(type(b) is bytes for b in got)
        assert reader.at_boundary
        reader.eof()
    reader = protocol.FrameReader(max_frame=10)
    assert reader.feed(b"\x00\x00\x00\x02ab\x00\x00") == [b"ab"]
    with pytest.raises(protocol.FrameTooLarge):
        reader.feed(b"\x00\x0b")  # the header is complete: rejected before any body arrives


def test_unpack_request_fast_path_matches_the_general_rules() -> None:
    body = protocol.pack({"type": "request", "id": 3, "method": "m", "params": [1]})
    assert protocol.unpack(body) == {"type": "request", "id": 3, "method": "m", "params": [1]}
    for bad in (
        {"type": "request", "id": -1, "method": "m", "params": 1},
        {"type": "request", "id": True, "method": "m", "params": 1},
        {"type": "request", "id": 1.0, "method": "m", "params": 1},
        {"type": "request", "id": 1, "method": b"m", "params": 1},
        {"type": "request", "id": 1, "method": "m", "x_other": 1},
    ):
        with pytest.raises(protocol.Malformed):
            protocol.unpack(msgpack.packb(bad))
    extra = protocol.unpack(protocol.pack({"type": "request", "id": 1, "method": "m", "params": 0, "x_k": 1}))
    assert extra == {"type": "request", "id": 1, "method": "m", "params": 0}


def _raw_request(params: bytes, tail: bytes = b"", extra_keys: int = 0) -> bytes:
    head = bytes([0x84 + extra_keys]) + b"".join(
        msgpack.packb(x) for x in ("type", "request", "id", 7, "method", "m", "params")
    )
    return head + params + tail


@pytest.mark.parametrize(
    "params, fragment",
    [
        (b"\x91" * 5000 + b"\x01", "nested too deeply"),
        (b"\x81\x91\x01\x02", "map key is an array or a map"),
        (b"\x81\x80\x02", "map key is an array or a map"),
        (b"\xc7\x03\xff\x00\x00\x00", "invalid timestamp"),
        (b"\xa2\xff\xfe", "not valid UTF-8"),
    ],
    ids=["deep", "array-key", "map-key", "bad-ext", "bad-utf8"],
)
def test_undecodable_params_are_invalid_params_with_the_id(params: bytes, fragment: str) -> None:
    for tail, extra in ((b"", 0), (msgpack.packb("session") + msgpack.packb("s"), 1)):
        with pytest.raises(protocol.InvalidParams) as info:
            protocol.unpack(_raw_request(params, tail, extra))
        exc = info.value
        assert isinstance(exc, protocol.Malformed)
        assert (exc.id, exc.method) == (7, "m") and fragment in exc.reason and fragment in str(exc)
        assert exc.message == {
            "type": "request",
            "id": 7,
            "method": "m",
            **({"session": "s"} if extra else {}),
        }


def test_second_pass_keeps_the_envelope_rules() -> None:
    deep = b"\x91" * 5000 + b"\x01"
    for raw in (
        _raw_request(deep)[:-1],  # truncated
        _raw_request(deep) + b"\x00",  # trailing bytes
        deep,  # not a map
        _raw_request(b"\x01", msgpack.packb("session") + deep, 1),  # a known key other than params
    ):
        with pytest.raises(protocol.Malformed) as info:
            protocol.unpack(raw)
        assert not isinstance(info.value, protocol.InvalidParams)
    # an undecodable value under an unknown key is ignored, like any unknown key
    msg = protocol.unpack(_raw_request(b"\x01", msgpack.packb("x_junk") + deep, 1))
    assert msg == {"type": "request", "id": 7, "method": "m", "params": 1}
    # and so is a key that cannot be a Python key
    msg = protocol.unpack(_raw_request(b"\x01", b"\x91\x01\x02", 1))
    assert msg == {"type": "request", "id": 7, "method": "m", "params": 1}


def test_mutated_bodies_only_ever_raise_malformed() -> None:
    import random

    rng = random.Random(11)
    deep_request = _raw_request(b"\x91" * 1100 + b"\x01")
    bases = [
        protocol.pack(protocol.request_message(5, "m", {"a": [1, {"b": b"x"}]}, session="s", deadline_ms=3)),
        deep_request,
        protocol.pack(protocol.ping_message(3)),
    ]
    kinds = set()
    for _ in range(5000):
        raw = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(raw) + 1)
            op = rng.random()
            if op < 0.4 and raw:
                raw[min(pos, len(raw) - 1)] = rng.randrange(256)
            elif op < 0.7:
                raw[pos:pos] = bytes([rng.choice([0x91, 0x81, 0x80, 0xC1, 0xD6, 0xDD, 0xDF, 0xC7, 0xA2])])
            else:
                del raw[pos : pos + rng.randint(1, 3)]
        try:
            protocol.unpack(bytes(raw))
            kinds.add("ok")
        except protocol.InvalidParams:
            kinds.add("invalid-params")
        except protocol.Malformed:
            kinds.add("malformed")
    assert kinds == {"ok", "invalid-params", "malformed"}


def test_feed_keeps_nothing_of_a_reused_read_buffer() -> None:
    # the runtime reads into one buffer and feeds views of it: what feed keeps (bodies and a
    # partial frame) must be copies, since the next read overwrites the buffer
    frames = b"".join(protocol.frame(bytes([i]) * (10 + i)) for i in range(5))
    buf = bytearray(len(frames))
    view = memoryview(buf)
    reader = protocol.FrameReader()
    bodies: list[bytes] = []
    pos = 0
    for size in (14, 15, 5, 20, 1, 100):  # at frame ends, inside bodies and headers
        chunk = frames[pos : pos + size]
        buf[: len(chunk)] = chunk
        bodies += reader.feed(view[: len(chunk)])
        buf[:] = b"\xee" * len(buf)  # the next read overwrites it
        pos += len(chunk)
    assert bodies == [bytes([i]) * (10 + i) for i in range(5)]
    assert reader.at_boundary


def test_goodbye_round_trips_and_needs_a_reason() -> None:
    """``goodbye`` (listener -> host, docs/remote.md) is a message the protocol module decodes."""
    msg = protocol.goodbye_message("draining")
    assert protocol.pack(msg) == b"\x82\xa4type\xa7goodbye\xa6reason\xa8draining"
    assert protocol.unpack(protocol.pack(msg)) == msg
    with pytest.raises(protocol.Malformed, match="reason"):
        protocol.unpack(msgpack.packb({"type": "goodbye"}))
