"""The messages of the wire protocol, one :class:`TypedDict` per kind, and their builders.

Re-exported by :mod:`portpool.protocol`, which is where to import them from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal, TypedDict

PROTOCOL_MAJOR: Final = 1
PROTOCOL_MINOR: Final = 0
CAPABILITIES: Final[tuple[str, ...]] = ("stream", "cancel", "session")


# --------------------------------------------------------------------------- messages
# One TypedDict per message kind: plain dicts at run time, keys in wire order (the order
# the builders write them in, so :func:`pack` yields the canonical bytes).


class HelloMessage(TypedDict):
    """worker -> host, first: who the worker is and what it serves."""

    type: Literal["hello"]
    protocol_major: int
    protocol_minor: int
    runtime: str
    runtime_version: str
    pid: int
    max_concurrency: int
    methods: list[str]
    capabilities: list[str]


class _RequestRequired(TypedDict):
    type: Literal["request"]
    id: int
    method: str
    params: Any


class RequestMessage(_RequestRequired, total=False):
    """host -> worker: a call; ``session``, ``deadline_ms`` and ``trace`` only when set."""

    session: str
    deadline_ms: int
    trace: str


class ResponseOkMessage(TypedDict):
    """worker -> host: the successful end of request ``id``."""

    type: Literal["response"]
    id: int
    result: Any


class _ErrorRequired(TypedDict):
    type: str
    message: str


class ErrorInfo(_ErrorRequired, total=False):
    """The ``error`` of an error response; ``traceback`` and ``data`` only when set."""

    traceback: str
    data: Any


class ResponseErrorMessage(TypedDict):
    """worker -> host: the failed end of request ``id``."""

    type: Literal["response"]
    id: int
    error: ErrorInfo


class ChunkMessage(TypedDict):
    """worker -> host: one streamed item of request ``id``."""

    type: Literal["chunk"]
    id: int
    data: Any


class CancelMessage(TypedDict):
    """host -> worker: cancel request ``id`` (advisory)."""

    type: Literal["cancel"]
    id: int


class PingMessage(TypedDict):
    """host -> worker: answer with a pong of the same ``id``."""

    type: Literal["ping"]
    id: int


class PongMessage(TypedDict):
    """worker -> host: the answer to a ping."""

    type: Literal["pong"]
    id: int


class ShutdownMessage(TypedDict):
    """host -> worker: finish what runs, take nothing new, exit."""

    type: Literal["shutdown"]


class SessionCloseMessage(TypedDict):
    """host -> worker: forget the state of ``session``."""

    type: Literal["session_close"]
    session: str


class GoodbyeMessage(TypedDict):
    """listener -> host (``--listen`` only): the worker is going away (draining, or its runtime died).

    The stdio runtime never sends it. See ``docs/remote.md``.
    """

    type: Literal["goodbye"]
    reason: str


Message = (
    HelloMessage
    | RequestMessage
    | ResponseOkMessage
    | ResponseErrorMessage
    | ChunkMessage
    | CancelMessage
    | PingMessage
    | PongMessage
    | ShutdownMessage
    | SessionCloseMessage
    | GoodbyeMessage
)
"""Any message: narrow it by its ``type`` (``if msg["type"] == "request": ...``)."""

# --------------------------------------------------------------------------- handshake
# The ``--listen`` handshake (docs/remote.md): framed like messages, valid only before the
# hello, and not part of :data:`Message` (``unpack`` rejects them).


class AuthChallengeMessage(TypedDict):
    """listener -> host, first: the listener's random nonce."""

    type: Literal["auth_challenge"]
    version: int
    nonce: bytes


class AuthResponseMessage(TypedDict):
    """host -> listener: the host's nonce and its proof that it knows the secret."""

    type: Literal["auth_response"]
    nonce: bytes
    mac: bytes


class AuthOkMessage(TypedDict):
    """listener -> host: the host is in; ``mac`` proves the listener knows the secret too."""

    type: Literal["auth_ok"]
    mac: bytes


class AuthFailedMessage(TypedDict):
    """listener -> host, last: the handshake failed; the listener closes the connection."""

    type: Literal["auth_failed"]
    reason: str


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
