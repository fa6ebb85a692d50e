"""Encoding responses into frames: results, stream items, and errors that always fit."""

from __future__ import annotations

import os
import struct

from portpool import protocol
from portpool.app import HandlerError

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    from typing import Any

    from portpool._state import _Request

_FRAME_HEADER = struct.Struct(">I")  # as protocol.frame writes it
_U32_MAX = 2**32 - 1

_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _safe_str(text: str) -> str:
    """Makes ``text`` encodable as UTF-8 (lone surrogates become escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _EncodeFailure(Exception):
    """A value a handler produced cannot be sent (not MessagePack-encodable or too large)."""


class _Frames:
    """The response-encoding half of :class:`~portpool._runtime.Runtime` (a mixin)."""

    max_frame: int
    _frame_limit: int

    def _checked(self, message: protocol.Message, what: str, value: Any) -> bytes:
        try:
            body = protocol.pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _EncodeFailure(f"cannot encode {what} of type {type(value).__name__}: {exc}") from None
        if len(body) > self.max_frame:
            raise _EncodeFailure(
                f"{what} of type {type(value).__name__} encodes to {len(body)} bytes, "
                f"more than the maximum frame size of {self.max_frame}"
            )
        return protocol.frame(body)

    def _ok_frame(self, req: _Request, result: Any) -> bytes:
        try:  # the usual case first, in one step: response_ok_message + _checked
            body = protocol.pack({"type": "response", "id": req.id, "result": result})
            if len(body) <= self._frame_limit:
                return _FRAME_HEADER.pack(len(body)) + body
        except (TypeError, ValueError, OverflowError):
            pass
        try:  # again, to say why it failed
            return self._checked(protocol.response_ok_message(req.id, result), "result", result)
        except _EncodeFailure as exc:
            return self._error_frame_plain(req.id, "EncodeError", str(exc))

    def _chunk_frame(self, req: _Request, item: Any) -> bytes:
        return self._checked(protocol.chunk_message(req.id, item), "stream item", item)

    def _cancelled_frame(self, req: _Request, why: str = "cancelled") -> bytes:
        return self._error_frame_plain(req.id, "Cancelled", f"request {req.id} ({req.method}): {why}")

    def _error_frame_plain(
        self, id_: int, type_: str, message: str, traceback_: str | None = None, *, data: Any = None
    ) -> bytes:
        """An error response that always fits in ``max_frame`` (see :func:`_fit_error`)."""
        return protocol.frame(_fit_error(id_, type_, message, traceback_, data, self.max_frame))

    def _error_frame(self, req: _Request, exc: BaseException) -> bytes:
        """The error response for an exception a handler raised; never raises.

        Describing the exception runs user code (``__str__``, a ``HandlerError``'s ``type``):
        if that fails, the call still gets an error response naming the exception's class,
        so it ends and frees its slot (an async handler's task would otherwise die silently).
        """
        try:
            return self._describe_error(req, exc)
        except Exception as failure:
            message = (
                f"{type(exc).__name__} raised by the handler could not be described "
                f"({type(failure).__name__} while formatting it)"
            )
            return self._error_frame_plain(req.id, type(exc).__name__, message)

    def _describe_error(self, req: _Request, exc: BaseException) -> bytes:
        import traceback  # on the first error, not at every worker's start

        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PKG_DIR):
            tb = tb.tb_next  # drop the runtime's own frames
        if tb is None:
            tb = exc.__traceback__
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        if isinstance(exc, HandlerError):
            type_ = str(exc.type) if exc.type else type(exc).__name__
            data = exc.data
        else:
            type_ = type(exc).__name__
            data = None
        return self._error_frame_plain(req.id, type_, str(exc), text, data=data)


_MAX_ERROR_TYPE_BYTES = 256
# Room kept for the message and traceback when deciding whether error data still fits
# (at most a quarter of the frame limit).
_ERROR_TEXT_RESERVE = 1024
# Bytes a str header may grow by when its text grows (fixstr 1 byte .. str32 5 bytes), per string.
_STR_HEADER_SLACK = 8


def _cut_utf8(text: str, limit: int, *, keep_tail: bool = False) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes: cut on a character boundary, the cut marked.

    Keeps the head (or with ``keep_tail`` the tail) and says how many bytes were dropped.
    """
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    longest_mark = f" … [truncated {len(raw)} bytes] … "
    keep = limit - len(longest_mark.encode("utf-8"))
    if keep <= 0:
        return ""
    # errors="ignore" drops only the partial character at the cut: the source is valid UTF-8.
    if keep_tail:
        kept = raw[len(raw) - keep :].decode("utf-8", "ignore")
        dropped = len(raw) - len(kept.encode("utf-8"))
        return f"[truncated {dropped} bytes] … {kept}"
    kept = raw[:keep].decode("utf-8", "ignore")
    dropped = len(raw) - len(kept.encode("utf-8"))
    return f"{kept} … [truncated {dropped} bytes]"


def _pack_error(id_: int, type_: str, message: str, traceback_: str | None, data: Any) -> bytes:
    return protocol.pack(
        protocol.response_error_message(id_, type_, message, traceback=traceback_, data=data)
    )


def _fit_error(
    id_: int, type_: str, message: str, traceback_: str | None, data: Any, max_frame: int
) -> bytes:
    """Encodes an error response body of at most ``max_frame`` bytes.

    Everything is kept when it fits. Otherwise, by encoded bytes (never splitting a UTF-8
    character, each cut marked "[truncated N bytes]"): ``type`` is cut to 256 bytes;
    ``data`` is dropped (with a note in the message) when it cannot be encoded or leaves
    under 1 KiB (or a quarter of ``max_frame``) for the text; the head of ``message`` and
    the tail of ``traceback`` (where the exception is) share what is left, the message first.
    """
    type_, message = _safe_str(type_), _safe_str(message)
    traceback_ = None if traceback_ is None else _safe_str(traceback_)
    if data is not None:
        try:
            body = _pack_error(id_, type_, message, traceback_, data)
        except (TypeError, ValueError, OverflowError) as exc:
            message += f" (error data dropped: cannot encode error data of type {type(data).__name__}: {exc})"
            data = None
        else:
            if len(body) <= max_frame:
                return body
    if data is None:
        body = _pack_error(id_, type_, message, traceback_, None)
        if len(body) <= max_frame:
            return body
    type_ = _cut_utf8(type_, _MAX_ERROR_TYPE_BYTES)
    if data is not None:
        lean = len(_pack_error(id_, type_, "", None, data))
        if lean + min(_ERROR_TEXT_RESERVE, max_frame // 4) > max_frame:
            message += (
                f" (error data dropped: error data of type {type(data).__name__} encodes to {lean} bytes"
                f" with the error, more than the maximum frame size of {max_frame} less room for the message)"
            )
            data = None
    overhead = len(_pack_error(id_, type_, "", None if traceback_ is None else "", data))
    budget = max(0, max_frame - overhead - 2 * _STR_HEADER_SLACK)
    message_bytes = len(message.encode("utf-8"))
    traceback_bytes = 0 if traceback_ is None else len(traceback_.encode("utf-8"))
    if message_bytes + traceback_bytes > budget:
        # The message gets at least half of the budget, more when the traceback needs less.
        message_budget = min(message_bytes, max(budget // 2, budget - traceback_bytes))
        message = _cut_utf8(message, message_budget)
        if traceback_ is not None:
            traceback_ = _cut_utf8(traceback_, budget - len(message.encode("utf-8")), keep_tail=True)
    body = _pack_error(id_, type_, message, traceback_, data)
    if len(body) > max_frame:  # pragma: no cover - only for a max_frame too small for any error
        body = _pack_error(id_, _cut_utf8(type_, 32), _cut_utf8(message, max(0, max_frame - 96)), None, None)
    return body
