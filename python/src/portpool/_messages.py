"""The messages of the wire protocol: constants and builders (their types: :mod:`portpool._message_types`).

Re-exported by :mod:`portpool.protocol`, which is where to import them from.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time (see _message_types)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Final

    from portpool._message_types import (
        CancelMessage,
        ChunkMessage,
        ErrorInfo,
        GoodbyeMessage,
        HelloMessage,
        PingMessage,
        PongMessage,
        RequestMessage,
        ResponseErrorMessage,
        ResponseOkMessage,
        SessionCloseMessage,
        ShutdownMessage,
    )

PROTOCOL_MAJOR: Final = 1
PROTOCOL_MINOR: Final = 0
CAPABILITIES: Final[tuple[str, ...]] = ("stream", "cancel", "session")


# --------------------------------------------------------------------------- builders


def hello_message(
    *,
    runtime_version: str,
    pid: int,
    max_concurrency: int,
    methods: Sequence[str],
    capabilities: Sequence[str] = CAPABILITIES,
    runtime: str = "python",
    protocol_major: int = PROTOCOL_MAJOR,
    protocol_minor: int = PROTOCOL_MINOR,
) -> HelloMessage:
    """The worker's first message."""
    return {
        "type": "hello",
        "protocol_major": protocol_major,
        "protocol_minor": protocol_minor,
        "runtime": runtime,
        "runtime_version": runtime_version,
        "pid": pid,
        "max_concurrency": max_concurrency,
        "methods": list(methods),
        "capabilities": list(capabilities),
    }


def request_message(
    id: int,
    method: str,
    params: Any,
    *,
    session: str | None = None,
    deadline_ms: int | None = None,
    trace: str | None = None,
) -> RequestMessage:
    """A host -> worker call."""
    msg: RequestMessage = {"type": "request", "id": id, "method": method, "params": params}
    if session is not None:
        msg["session"] = session
    if deadline_ms is not None:
        msg["deadline_ms"] = deadline_ms
    if trace is not None:
        msg["trace"] = trace
    return msg


def response_ok_message(id: int, result: Any) -> ResponseOkMessage:
    """A successful response; ``result`` is always present (may be ``None``)."""
    return {"type": "response", "id": id, "result": result}


def response_error_message(
    id: int,
    type: str,
    message: str,
    *,
    traceback: str | None = None,
    data: Any = None,
) -> ResponseErrorMessage:
    """An error response; ``traceback`` and ``data`` are omitted when ``None``."""
    error: ErrorInfo = {"type": type, "message": message}
    if traceback is not None:
        error["traceback"] = traceback
    if data is not None:
        error["data"] = data
    return {"type": "response", "id": id, "error": error}


def chunk_message(id: int, data: Any) -> ChunkMessage:
    """One streamed item of request ``id``."""
    return {"type": "chunk", "id": id, "data": data}


def cancel_message(id: int) -> CancelMessage:
    return {"type": "cancel", "id": id}


def ping_message(id: int) -> PingMessage:
    return {"type": "ping", "id": id}


def pong_message(id: int) -> PongMessage:
    """The answer to ``ping`` with the same id."""
    return {"type": "pong", "id": id}


def shutdown_message() -> ShutdownMessage:
    return {"type": "shutdown"}


def session_close_message(session: str) -> SessionCloseMessage:
    return {"type": "session_close", "session": session}


def goodbye_message(reason: str) -> GoodbyeMessage:
    """The listener's last words on a connection: why the worker is going away."""
    return {"type": "goodbye", "reason": reason}
