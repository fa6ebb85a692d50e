"""What the runtime's threads share: requests and their states, per-method facts, stop
reasons, and the shutdown timings.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from portpool.app import Context, Handler, HandlerKind

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    import asyncio
    from typing import Any

# Streaming handlers wait while more than this many bytes are queued for output.
_STREAM_BACKPRESSURE_BYTES = 8 * 1024 * 1024
# After stdin EOF / shutdown / a protocol error, the process exits no later than this
# many seconds past the grace period even if the event loop is blocked by a handler.
_WATCHDOG_SLACK = 1.0
_CANCEL_SETTLE = 1.0  # after the grace period: how long cancelled handlers get to stop
_FLUSH_TIMEOUT = 2.0  # how long the final flush of queued frames may take


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


_QUEUED, _RUNNING, _DONE = _State.QUEUED, _State.RUNNING, _State.DONE
_NONE_STARTING: list[_Request] = []  # what _finish starts when nothing is queued (never modified)

_ASYNC_KINDS: frozenset[HandlerKind] = frozenset((HandlerKind.ASYNC, HandlerKind.ASYNC_GEN))
# Results of these types are neither generators nor awaitables (skips two isinstance-heavy checks).
_PLAIN_TYPES: frozenset[type] = frozenset((type(None), bool, int, float, str, bytes, list, tuple, dict))


class _Method:
    """What the runtime keeps per handler: how it runs, and whether its last sync run was long."""

    __slots__ = ("handler", "is_async", "is_gen", "call", "slow")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.is_async = handler.kind in _ASYNC_KINDS
        self.is_gen = handler.kind is HandlerKind.ASYNC_GEN
        # The function itself when it takes just the params (saves Handler.call's dispatch).
        self.call: Callable[[Any], Any] | None = (
            handler.func if handler.takes_params and not handler.takes_ctx else None
        )
        # The last run of this sync handler took at least _INLINE_TAKEOVER: its next requests go
        # straight to a thread of their own instead of running on the reading thread.
        self.slow = False


class _Request:
    """One request from the time it is read until its final response is queued."""

    __slots__ = (
        "id",
        "method",
        "info",
        "handler",
        "params",
        "ctx",
        "cancelled",
        "is_async",
        "state",
        "task",
        "started",
        "responded",
    )

    def __init__(self, id: int, method: str, info: _Method, params: Any, ctx: Context | None) -> None:
        self.id = id
        self.method = method
        self.info = info
        self.handler = info.handler
        self.params = params
        self.ctx = ctx  # only for handlers that take one
        self.cancelled = False  # the host cancelled it, or the worker is shutting down
        self.is_async = info.is_async
        self.state = _QUEUED
        self.task: asyncio.Task[None] | None = None  # async handlers, once started on the loop
        self.started = False  # async handlers: the task began running
        self.responded = False  # the final response was queued (guarded by the output lock)

    def cancel(self) -> None:
        """Flags the request cancelled (``ctx.cancelled`` too); any thread."""
        self.cancelled = True
        if self.ctx is not None:
            self.ctx.cancelled.set()

    def is_cancelled(self) -> bool:
        return self.cancelled or (self.ctx is not None and self.ctx.cancelled.is_set())


class _Stop(enum.Enum):
    EOF = "end of input"
    SHUTDOWN = "shutdown message"
    PROTOCOL_ERROR = "protocol error"
    OUTPUT_CLOSED = "output closed"
