"""Replacing a message's id without touching the rest of its bytes (portpool._listen_ids)."""

from __future__ import annotations

import msgpack
import pytest

from portpool import protocol
from portpool._listen_ids import _pack_uint, id_span, with_id


@pytest.mark.parametrize("old_id", [0, 1, 127, 128, 255, 256, 2**16, 2**32, 2**64 - 1])
@pytest.mark.parametrize("new_id", [1, 200, 70_000, 2**40])
def test_canonical_bodies_keep_every_other_byte(old_id: int, new_id: int) -> None:
    message = protocol.response_ok_message(old_id, {"f32": 1.5, "bin": b"\x00\xff", "deep": [[[1]]]})
    body = protocol.pack(message)
    kind, id_, start, end = id_span(body)
    assert (kind, id_) == ("response", old_id)
    frame = with_id(body, start, end, new_id)
    new_body = frame[4:]
    assert int.from_bytes(frame[:4], "big") == len(new_body)
    assert protocol.unpack(new_body) == {**message, "id": new_id}
    assert new_body == body[:start] + msgpack.packb(new_id) + body[end:]  # the rest byte for byte


@pytest.mark.parametrize("n", [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
def test_ids_are_packed_as_msgpack_packs_them(n: int) -> None:
    assert _pack_uint(n) == msgpack.packb(n)


def test_any_key_order_and_undecodable_params() -> None:
    # params is a str that is not UTF-8: the id is found and replaced without decoding it.
    body = msgpack.packb({"params": "x", "method": "echo", "id": 9, "type": "request"})
    body = body.replace(b"\xa1x", b"\xa2\xff\xfe")
    kind, id_, start, end = id_span(body)
    assert (kind, id_) == ("request", 9)
    assert with_id(body, start, end, 300)[4:] == body[:start] + msgpack.packb(300) + body[end:]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x91\x01",  # an array
        msgpack.packb({"type": "response"}),  # no id
        msgpack.packb({"type": "response", "id": -1}),
        msgpack.packb({"type": "response", "id": "7"}),
        msgpack.packb({"id": 7}),  # no type
        b"\x82\xa4type\xa8response",  # truncated
    ],
)
def test_bodies_without_a_usable_id_are_malformed(body: bytes) -> None:
    with pytest.raises(protocol.Malformed):
        id_span(body)
