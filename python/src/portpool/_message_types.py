"""The messages of the wire protocol as types: one :class:`TypedDict` per kind, and their union.

Apart from :mod:`portpool._messages` so that a worker never imports :mod:`typing` at run time
(it costs a cold start more CPU than the runtime's own modules); :mod:`portpool.protocol`
re-exports them (resolved on first use), and that is where to import them from.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

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
