"""Reading and replacing a message's ``id`` without decoding the rest of it.

The listener relays every request, cancel and ping (host -> child) and every response,
chunk and pong (child -> host) under a different id. Decoding a whole body and encoding it
again would cost time in proportion to ``params``/``result`` and could change their bytes
(a float32 comes back as a float64; a value msgpack-python cannot decode could not be sent
on at all). Instead the id's bytes are located and spliced: everything else is relayed
byte for byte.

Bodies from the runtime (and from the Rust host) put ``type`` first and ``id`` second, which
:func:`id_span` reads by hand; any other key order falls back to walking the map's keys.
"""

from __future__ import annotations

import struct
from typing import Final

import msgpack

from portpool import protocol
from portpool.protocol import _skip  # the structure walker, shared on purpose

_U64_MAX: Final = 2**64 - 1
_UINT_SIZES: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_HEADER: Final = struct.Struct(">I")


def id_span(body: bytes) -> tuple[str, int, int, int]:
    """``(type, id, start, end)``: the message's type, its id, and where the id's bytes are.

    Raises :class:`~portpool.protocol.Malformed` when the body has no string ``type`` or no
    unsigned 64-bit ``id``.
    """
    try:
        # Fast path: fixmap, "type": fixstr, "id": uint -- every body the runtime writes.
        if 0x80 <= body[0] <= 0x8F and body[1:6] == b"\xa4type" and 0xA0 <= body[6] <= 0xBF:
            pos = 7 + (body[6] - 0xA0)
            kind = body[7:pos].decode("utf-8")
            if body[pos : pos + 3] == b"\xa2id":
                start = pos + 3
                b = body[start]
                if b <= 0x7F:
                    return kind, b, start, start + 1
                size = _UINT_SIZES.get(b)
                end = start + 1 + size if size is not None else 0
                if size is not None and end <= len(body):
                    return kind, int.from_bytes(body[start + 1 : end], "big"), start, end
    except (IndexError, UnicodeDecodeError):
        pass
    return _id_span_slow(body)


def _map_header(body: bytes) -> tuple[int, int]:
    """``(count, offset of the first key)`` of the map ``body`` starts with."""
    b = body[0]
    if 0x80 <= b <= 0x8F:
        return b & 0x0F, 1
    if b == 0xDE:
        return int.from_bytes(body[1:3], "big"), 3
    if b == 0xDF:
        return int.from_bytes(body[1:5], "big"), 5
    raise protocol.Malformed("body is not a MessagePack map")


def _id_span_slow(body: bytes) -> tuple[str, int, int, int]:
    """:func:`id_span` for any key order: keys are decoded, values only skipped over."""
    kind: str | None = None
    found: tuple[int, int, int] | None = None
    try:
        count, pos = _map_header(body)
        for _ in range(count):
            key_end = _skip(body, pos)
            key = msgpack.unpackb(body[pos:key_end], raw=False, strict_map_key=False)
            value_end = _skip(body, key_end)
            if key == "type":
                kind = msgpack.unpackb(body[key_end:value_end], raw=False)
            elif key == "id":
                value = msgpack.unpackb(body[key_end:value_end])
                if type(value) is int and 0 <= value <= _U64_MAX:
                    found = (value, key_end, value_end)
            if isinstance(kind, str) and found is not None:
                return kind, found[0], found[1], found[2]
            pos = value_end
    except protocol.Malformed:
        raise
    except Exception as exc:
        raise protocol.Malformed(f"cannot read the message's id ({type(exc).__name__})") from None
    raise protocol.Malformed("message has no string 'type' and unsigned 'id'")


def check_unique_keys(body: bytes) -> None:
    """Raises :class:`~portpool.protocol.Malformed` when the body's map has a key twice.

    :func:`id_span` reads the first ``id`` and a decoder (the child's) keeps the last: with
    two ids the listener would route one and the child answer under the other, which may be
    another host's call. Keys are decoded, values skipped in C (no objects are built for them);
    a value too deep for msgpack is skipped by the protocol's own walker instead.
    """
    try:
        keys = _keys_fast(body)
    except Exception:  # too deep for msgpack, or not valid
        keys = _keys_slow(body)
    seen: set[object] = set()
    for key in keys:
        if not isinstance(key, (str, bytes, int)):
            continue  # not a message key (the decoder would fail on or ignore it)
        if key in seen:
            raise protocol.Malformed(f"the key {str(key)[:40]!r} appears twice in the message")
        seen.add(key)


def _keys_fast(body: bytes) -> list[object]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(body), 1024))
    unpacker.feed(body)
    keys: list[object] = []
    for _ in range(unpacker.read_map_header()):
        keys.append(unpacker.unpack())
        unpacker.skip()
    return keys


def _keys_slow(body: bytes) -> list[object]:
    try:
        count, pos = _map_header(body)
        keys: list[object] = []
        for _ in range(count):
            key_end = _skip(body, pos)
            try:
                keys.append(msgpack.unpackb(body[pos:key_end], raw=False, strict_map_key=False))
            except Exception:
                keys.append(None)  # a key msgpack cannot decode is no message key
            pos = _skip(body, key_end)
        return keys
    except protocol.Malformed:
        raise
    except Exception as exc:
        raise protocol.Malformed(f"cannot read the message's keys ({type(exc).__name__})") from None


def _pack_uint(n: int) -> bytes:
    """The shortest MessagePack encoding of ``0 <= n < 2**64`` (what ``msgpack.packb`` writes)."""
    if n <= 0x7F:
        return bytes((n,))
    if n <= 0xFF:
        return b"\xcc" + n.to_bytes(1, "big")
    if n <= 0xFFFF:
        return b"\xcd" + n.to_bytes(2, "big")
    if n <= 0xFFFFFFFF:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


def with_id(body: bytes, start: int, end: int, new_id: int) -> bytes:
    """The complete frame (header included) of ``body`` with bytes ``start:end`` replaced by ``new_id``."""
    packed = _pack_uint(new_id)
    length = len(body) - (end - start) + len(packed)
    return b"".join((_HEADER.pack(length), body[:start], packed, body[end:]))
