"""Pure encode/decode helpers for the portpool wire protocol, version 1.0.

No I/O happens here. A frame is a 4-byte big-endian body length followed by the
body, one MessagePack map whose ``type`` key comes first. Builders return plain
dicts whose keys are in wire order (so :func:`pack` yields the canonical bytes);
optional keys are omitted when absent. :func:`unpack` validates a body and
returns a normalized dict: known keys only, in wire order. Each kind of message has
its :class:`TypedDict` (``RequestMessage``, ``PingMessage``...); :data:`Message` is their
union, narrowed by ``msg["type"]``.

See ``protocol/PROTOCOL.md`` in the repository for the authoritative rules.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Mapping

import msgpack

from portpool._messages import (
    CAPABILITIES,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    cancel_message,
    chunk_message,
    goodbye_message,
    hello_message,
    ping_message,
    pong_message,
    request_message,
    response_error_message,
    response_ok_message,
    session_close_message,
    shutdown_message,
)

# The message types (TypedDicts) come from portpool._message_types, which imports typing: for
# type checkers here, and at run time on first use (see __getattr__), so that a worker never
# imports typing (it costs a cold start more CPU than the runtime's own modules).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from portpool._message_types import (
        AuthChallengeMessage,
        AuthFailedMessage,
        AuthOkMessage,
        AuthResponseMessage,
        CancelMessage,
        ChunkMessage,
        ErrorInfo,
        GoodbyeMessage,
        HelloMessage,
        Message,
        PingMessage,
        PongMessage,
        RequestMessage,
        ResponseErrorMessage,
        ResponseOkMessage,
        SessionCloseMessage,
        ShutdownMessage,
    )
_MESSAGE_TYPES = frozenset(
    (
        "AuthChallengeMessage",
        "AuthFailedMessage",
        "AuthOkMessage",
        "AuthResponseMessage",
        "GoodbyeMessage",
        "CancelMessage",
        "ChunkMessage",
        "ErrorInfo",
        "HelloMessage",
        "Message",
        "PingMessage",
        "PongMessage",
        "RequestMessage",
        "ResponseErrorMessage",
        "ResponseOkMessage",
        "SessionCloseMessage",
        "ShutdownMessage",
    )
)


def __getattr__(name: str) -> object:
    """The message types, imported on first use (see above)."""
    if name in _MESSAGE_TYPES:
        from portpool import _message_types

        value: object = getattr(_message_types, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AuthChallengeMessage",
    "AuthFailedMessage",
    "AuthOkMessage",
    "AuthResponseMessage",
    "cancel_message",
    "CancelMessage",
    "CAPABILITIES",
    "chunk_message",
    "ChunkMessage",
    "decode_frame",
    "DEFAULT_MAX_FRAME",
    "encode",
    "ErrorInfo",
    "frame",
    "FrameReader",
    "FrameTooLarge",
    "goodbye_message",
    "GoodbyeMessage",
    "HEADER_SIZE",
    "hello_message",
    "HelloMessage",
    "InvalidParams",
    "Malformed",
    "Message",
    "pack",
    "ping_message",
    "PingMessage",
    "pong_message",
    "PongMessage",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "ProtocolError",
    "request_message",
    "RequestMessage",
    "response_error_message",
    "response_ok_message",
    "ResponseErrorMessage",
    "ResponseOkMessage",
    "session_close_message",
    "SessionCloseMessage",
    "shutdown_message",
    "ShutdownMessage",
    "TruncatedFrame",
    "unpack",
]

HEADER_SIZE: Final = 4
DEFAULT_MAX_FRAME: Final = 64 * 1024 * 1024

_U64_MAX: Final = 2**64 - 1
_U32_MAX: Final = 2**32 - 1
_U16_MAX: Final = 2**16 - 1
_HEADER: Final = struct.Struct(">I")


class ProtocolError(Exception):
    """A peer broke the protocol; the connection cannot continue."""


class Malformed(ProtocolError):
    """A body that is not a valid message (bad MessagePack, unknown type, missing or mistyped key)."""


class InvalidParams(Malformed):
    """A ``request`` whose envelope is readable but whose ``params`` cannot be decoded.

    Examples: nesting deeper than msgpack-python decodes, a map key that is an array or
    a map (unhashable in Python), a ``str`` that is not UTF-8, an ext value msgpack
    rejects (a timestamp of a bad length). Only that call fails: a worker answers it
    with an error of type ``InvalidParams`` and keeps serving. It subclasses
    :class:`Malformed` so that code that knows only ``Malformed`` stays conservative.

    ``message`` is the request without ``params`` (``type``, ``id``, ``method`` and
    the optional keys that were present); ``reason`` says what could not be decoded.
    """

    def __init__(self, message: dict[str, Any], reason: str) -> None:
        self.message = message
        self.id: int = message["id"]
        self.method: str = message["method"]
        self.reason = reason
        super().__init__(f"params of request {self.id} ({self.method!r}) cannot be decoded: {reason}")


class FrameTooLarge(ProtocolError):
    """A frame header announced a body larger than the configured maximum."""

    def __init__(self, length: int, max_frame: int) -> None:
        super().__init__(f"frame header announces {length} bytes, more than the maximum of {max_frame}")
        self.length = length
        self.max_frame = max_frame


class TruncatedFrame(ProtocolError):
    """The stream ended inside a frame."""


# --------------------------------------------------------------------------- framing


def frame(body: bytes) -> bytes:
    """Prefixes ``body`` with its 4-byte big-endian length."""
    if len(body) > _U32_MAX:
        raise FrameTooLarge(len(body), _U32_MAX)
    return _HEADER.pack(len(body)) + body


# Each thread packs with a Packer of its own, made once: ``msgpack.packb`` builds a fresh
# one (and its buffer) per call. One Packer cannot be shared: packing may run Python code
# (a dict subclass's ``items``), and another thread could then pack on the same buffer.
_packers = threading.local()
# A Packer keeps the buffer it grew; after a body larger than this the thread's Packer is
# dropped, so idle threads do not each hold on to their largest message.
_PACKER_KEEP: Final = 1 << 20


def _new_packer() -> msgpack.Packer:
    """A Packer as :func:`pack` uses (one per thread, see ``_packers``)."""
    return msgpack.Packer(use_bin_type=True)


def pack(message: Mapping[str, Any]) -> bytes:
    """Encodes a message body (MessagePack, ``bin`` for bytes, ``str`` for text).

    Raises ``TypeError``/``ValueError``/``OverflowError`` when a value cannot be encoded.
    """
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = _new_packer()
    body: bytes = packer.pack(message)  # a failed pack leaves the Packer empty and usable
    if len(body) > _PACKER_KEEP:
        del _packers.packer
    return body


def encode(message: Mapping[str, Any]) -> bytes:
    """Encodes a message as a complete frame (header + body)."""
    return frame(pack(message))


class FrameReader:
    """Incremental frame splitter: feed bytes, get complete bodies.

    The header is checked against ``max_frame`` as soon as its 4 bytes are
    known, before any body is buffered.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 0:
            raise ValueError("max_frame must be >= 0")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being read, once its header is known

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Adds ``data``; returns the bodies of all frames completed by it (possibly none).

        Nothing keeps a reference to ``data`` afterwards: the caller may reuse its buffer.
        """
        buf = self._buf
        src: bytes | bytearray | memoryview
        if buf:
            buf += data
            src = buf
        else:
            src = data  # nothing buffered (the usual case): split ``data`` without copying it first
        end = len(src)
        pos = 0
        need = self._need
        bodies: list[bytes] = []
        while True:
            if need is None:
                if end - pos < HEADER_SIZE:
                    break
                (length,) = _HEADER.unpack_from(src, pos)
                if length > self.max_frame:
                    raise FrameTooLarge(length, self.max_frame)
                pos += HEADER_SIZE
                need = length
            if end - pos < need:
                break
            bodies.append(bytes(src[pos : pos + need]))
            pos += need
            need = None
        self._need = need
        if src is buf:
            del buf[:pos]
        elif pos < end:
            buf += memoryview(data)[pos:]
        return bodies

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (end of stream here is clean)."""
        return self._need is None and not self._buf

    def eof(self) -> None:
        """Signals end of stream; raises :class:`TruncatedFrame` if it ended inside a frame."""
        if not self.at_boundary:
            buffered = len(self._buf) + (HEADER_SIZE if self._need is not None else 0)
            raise TruncatedFrame(f"stream ended inside a frame ({buffered} bytes of an incomplete frame)")


# --------------------------------------------------------------------------- decoding

_ANY: Final = object()


def _check(msg: Mapping[str, Any], key: str, kind: object, *, optional: bool = False) -> bool:
    """Validates ``msg[key]``; returns whether the key is present."""
    if key not in msg:
        if optional:
            return False
        raise Malformed(f"{msg.get('type')!s} message is missing required key {key!r}")
    value = msg[key]
    if type(value) is _Undecodable and not (kind is _ANY and key == "params"):
        raise Malformed(f"{msg.get('type')!s} message key {key!r} cannot be decoded: {value.reason}")
    ok: bool
    if kind is _ANY:
        ok = True
    elif kind == "u64":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX
    elif kind == "u32":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U32_MAX
    elif kind == "u16":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U16_MAX
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "[str]":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif kind == "map":
        ok = isinstance(value, dict)
    else:  # pragma: no cover - programming error
        raise AssertionError(kind)
    if not ok:
        raise Malformed(f"{msg.get('type')!s} message key {key!r} must be {kind}, got {value!r:.80}")
    return True


# For each type: (key, kind, optional) in wire order.
_SCHEMA: Final[dict[str, tuple[tuple[str, object, bool], ...]]] = {
    "hello": (
        ("protocol_major", "u16", False),
        ("protocol_minor", "u16", False),
        ("runtime", "str", False),
        ("runtime_version", "str", False),
        ("pid", "u32", False),
        ("max_concurrency", "u32", False),
        ("methods", "[str]", False),
        ("capabilities", "[str]", False),
    ),
    "request": (
        ("id", "u64", False),
        ("method", "str", False),
        ("params", _ANY, False),
        ("session", "str", True),
        ("deadline_ms", "u64", True),
        ("trace", "str", True),
    ),
    "response": (("id", "u64", False),),  # plus result | error, checked below
    "chunk": (("id", "u64", False), ("data", _ANY, False)),
    "cancel": (("id", "u64", False),),
    "ping": (("id", "u64", False),),
    "pong": (("id", "u64", False),),
    "shutdown": (),
    "session_close": (("session", "str", False),),
    "goodbye": (("reason", "str", False),),
}

_ERROR_SCHEMA: Final = (("type", "str", False), ("message", "str", False), ("traceback", "str", True))


class _Undecodable:
    """Stands for a top-level value that is valid MessagePack but that msgpack-python cannot decode."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


# Bytes 0xc0..0xdf: (kind, n, extra). kind "fixed": n payload bytes; "len": an n-byte length,
# then extra + length payload bytes; "array"/"map": an n-byte element count. None: never valid.
_FORMATS: Final[dict[int, tuple[str, int, int] | None]] = {
    0xC0: ("fixed", 0, 0),
    0xC1: None,
    0xC2: ("fixed", 0, 0),
    0xC3: ("fixed", 0, 0),
    0xC4: ("len", 1, 0),
    0xC5: ("len", 2, 0),
    0xC6: ("len", 4, 0),
    0xC7: ("len", 1, 1),
    0xC8: ("len", 2, 1),
    0xC9: ("len", 4, 1),
    0xCA: ("fixed", 4, 0),
    0xCB: ("fixed", 8, 0),
    0xCC: ("fixed", 1, 0),
    0xCD: ("fixed", 2, 0),
    0xCE: ("fixed", 4, 0),
    0xCF: ("fixed", 8, 0),
    0xD0: ("fixed", 1, 0),
    0xD1: ("fixed", 2, 0),
    0xD2: ("fixed", 4, 0),
    0xD3: ("fixed", 8, 0),
    0xD4: ("fixed", 2, 0),
    0xD5: ("fixed", 3, 0),
    0xD6: ("fixed", 5, 0),
    0xD7: ("fixed", 9, 0),
    0xD8: ("fixed", 17, 0),
    0xD9: ("len", 1, 0),
    0xDA: ("len", 2, 0),
    0xDB: ("len", 4, 0),
    0xDC: ("array", 2, 0),
    0xDD: ("array", 4, 0),
    0xDE: ("map", 2, 0),
    0xDF: ("map", 4, 0),
}


class _Truncated(Exception):
    pass


def _skip(body: bytes, pos: int) -> int:
    """Returns the offset just past the MessagePack value that starts at ``pos``.

    Checks structure only (no values are built), iteratively: any depth, and at most one
    step per byte of ``body``. Raises :class:`_Truncated` or :class:`Malformed`.
    """
    end = len(body)
    remaining = 1  # values still to skip
    while remaining:
        if pos >= end:
            raise _Truncated()
        b = body[pos]
        pos += 1
        remaining -= 1
        if b <= 0x7F or b >= 0xE0:  # positive / negative fixint
            continue
        if b <= 0x8F:  # fixmap
            remaining += 2 * (b & 0x0F)
            continue
        if b <= 0x9F:  # fixarray
            remaining += b & 0x0F
            continue
        if b <= 0xBF:  # fixstr
            pos += b & 0x1F
            continue
        fmt = _FORMATS[b]
        if fmt is None:
            raise Malformed(f"body is not valid MessagePack (byte 0x{b:02x} at offset {pos - 1})")
        kind, n, extra = fmt
        if kind == "fixed":
            pos += n
            continue
        if pos + n > end:
            raise _Truncated()
        count = int.from_bytes(body[pos : pos + n], "big")
        pos += n
        if kind == "len":
            pos += extra + count
        elif kind == "array":
            remaining += count
        else:
            remaining += 2 * count
    if pos > end:
        raise _Truncated()
    return pos


def _why_undecodable(exc: Exception) -> str:
    if isinstance(exc, msgpack.StackError):
        return "it is nested too deeply for msgpack-python"
    if isinstance(exc, TypeError) and "unhashable" in str(exc):
        return f"a map key is an array or a map, which Python cannot use as a key ({exc})"
    if isinstance(exc, UnicodeDecodeError):
        return f"a string is not valid UTF-8 ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _unpack_envelope(body: bytes, first_error: Exception) -> dict[Any, Any]:
    """Second pass, after decoding ``body`` in one go failed: the top-level map key by key.

    The envelope must be well-formed MessagePack (a map, not truncated, nothing after it)
    and its keys must decode; each value is decoded on its own, and one that cannot be is
    kept as an :class:`_Undecodable`. Keys that are not strings are dropped (unknown fields).

    Values are delimited with msgpack's own ``skip`` (C speed, builds nothing); a value too
    deep for it is walked by :func:`_skip` (pure Python, any depth, linear in its size).
    """
    not_msgpack = Malformed(f"body is not valid MessagePack ({type(first_error).__name__}: {first_error})")
    end = len(body)
    stream = io.BytesIO(body)

    def unpacker_at(pos: int) -> msgpack.Unpacker:
        stream.seek(pos)
        return msgpack.Unpacker(stream, max_buffer_size=max(end, 1024))

    unpacker = unpacker_at(0)
    base = 0  # offset in body where ``unpacker`` started reading

    def end_of_value(pos: int) -> int:
        nonlocal unpacker, base
        try:
            unpacker.skip()
            return base + int(unpacker.tell())
        except msgpack.OutOfData:
            raise _Truncated() from None
        except Exception:  # too deep for msgpack (or not valid: then _skip says so)
            value_end = _skip(body, pos)
            unpacker, base = unpacker_at(value_end), value_end
            return value_end

    try:
        try:
            count = unpacker.read_map_header()
        except Exception:
            raise not_msgpack from None  # not a map (e.g. a too-deep array), or truncated
        pos = int(unpacker.tell())
        raw: dict[Any, Any] = {}
        for _ in range(count):
            key_end = end_of_value(pos)
            key_bytes, pos = body[pos:key_end], key_end
            value_end = end_of_value(pos)
            start, pos = pos, value_end
            try:
                key = msgpack.unpackb(key_bytes, raw=False, strict_map_key=False)
            except Exception:
                raise not_msgpack from None
            if type(key) is not str:
                continue
            try:
                raw[key] = msgpack.unpackb(body[start:value_end], raw=False, strict_map_key=False)
            except Exception as exc:
                raw[key] = _Undecodable(_why_undecodable(exc))
        if pos != end:
            raise not_msgpack  # bytes after the map
        return raw
    except (_Truncated, Malformed):
        raise not_msgpack from None


def unpack(body: bytes) -> Message:
    """Decodes and validates one body; returns known keys only, in wire order.

    Raises :class:`Malformed` for anything that is not a valid 1.0 message, and its
    subclass :class:`InvalidParams` for a request that is valid except that its
    ``params`` cannot be decoded (the exception carries the request's id and method).
    """
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types (ExtraData, ValueError, ...)
        return _validate(_unpack_envelope(body, exc))
    if type(raw) is dict and len(raw) == 4 and raw.get("type") == "request":
        # Fast path for the most common message, a plain request: exactly type, id, method, params.
        id_ = raw.get("id")
        method = raw.get("method")
        if type(id_) is int and 0 <= id_ <= _U64_MAX and type(method) is str and "params" in raw:
            return {"type": "request", "id": id_, "method": method, "params": raw["params"]}
    return _validate(raw)


def _validate(raw: Any) -> Message:
    """Checks a decoded body against the schema; returns known keys only, in wire order."""
    if not isinstance(raw, dict):
        raise Malformed(f"body is a MessagePack {type(raw).__name__}, not a map")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise Malformed("message has no string 'type' key")
    schema = _SCHEMA.get(kind)
    if schema is None:
        raise Malformed(f"unknown message type {kind!r}")
    msg: dict[str, Any] = {"type": kind}
    for key, check, optional in schema:
        if _check(raw, key, check, optional=optional):
            msg[key] = raw[key]
    if kind == "request" and type(msg["params"]) is _Undecodable:
        reason = msg.pop("params").reason
        raise InvalidParams(msg, reason)
    if kind == "response":
        if "result" in raw:
            if type(raw["result"]) is _Undecodable:
                raise Malformed(f"response message key 'result' cannot be decoded: {raw['result'].reason}")
            msg["result"] = raw["result"]
        elif "error" in raw:
            _check(raw, "error", "map")
            err_raw = raw["error"]
            err: dict[str, Any] = {}
            for key, check, optional in _ERROR_SCHEMA:
                if _check(err_raw, key, check, optional=optional):
                    err[key] = err_raw[key]
            if "data" in err_raw:
                err["data"] = err_raw["data"]
            msg["error"] = err
        else:
            raise Malformed("response message has neither 'result' nor 'error'")
    return msg  # type: ignore[return-value]  # checked above, key by key


def decode_frame(data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Message:
    """Decodes exactly one complete frame (header + body)."""
    if len(data) < HEADER_SIZE:
        raise TruncatedFrame(f"{len(data)} bytes is shorter than a frame header")
    (length,) = _HEADER.unpack_from(data, 0)
    if length > max_frame:
        raise FrameTooLarge(length, max_frame)
    if len(data) - HEADER_SIZE < length:
        raise TruncatedFrame(f"frame announces {length} bytes but only {len(data) - HEADER_SIZE} follow")
    if len(data) - HEADER_SIZE > length:
        raise Malformed(f"{len(data) - HEADER_SIZE - length} bytes after the end of the frame")
    return unpack(data[HEADER_SIZE:])
