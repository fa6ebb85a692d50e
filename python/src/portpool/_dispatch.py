"""Acting on the host's messages: requests take a slot or queue, pings, cancels, session ends."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from portpool import protocol
from portpool._frames import _Frames
from portpool._output import _Output
from portpool._state import _QUEUED, _RUNNING, _Method, _Request, _Stop
from portpool._stdio import _log
from portpool.app import App, Context

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    from typing import Any


class _Dispatch(_Frames):
    """What :class:`~portpool._runtime.Runtime` does with each message the lead holder reads (a mixin).

    Called by the thread holding the lead only (see :mod:`portpool._leads`).
    """

    # Provided by Runtime:
    app: App
    _lock: threading.Lock
    _requests: dict[int, _Request]
    _queue: collections.deque[_Request]
    _running: int
    _max_concurrency: int
    _start_more: bool
    _stop_reason: _Stop | None
    _sessions: dict[str, dict[str, Any]]
    _methods: dict[str, _Method]
    _out: _Output
    _without_loop: bool

    if TYPE_CHECKING:

        def _request_stop(self, reason: _Stop) -> None: ...
        def _post(self, callback: Callable[..., None], *args: Any) -> bool: ...
        def _finish(self, req: _Request, frame: bytes) -> None: ...
        def _cancel_task(self, req: _Request) -> None: ...

    def _on_message(self, msg: protocol.Message, received: float, starting: list[_Request]) -> bool:
        """Acts on one message; requests that take a slot go to ``starting``.

        Returns False after a protocol violation (reading must stop).
        """
        if msg["type"] == "request":
            return self._on_request(msg, received, starting)
        if msg["type"] == "ping":
            self._out.send(protocol.encode(protocol.pong_message(msg["id"])))
        elif msg["type"] == "cancel":
            self._on_cancel(msg["id"])
        elif msg["type"] == "session_close":
            self._sessions.pop(msg["session"], None)
        elif msg["type"] == "shutdown":
            self._request_stop(_Stop.SHUTDOWN)
        else:
            _log(
                f"protocol violation from the host: {msg['type']!r} is a worker -> host message;"
                " exiting with code 2"
            )
            return False
        return True

    def _refuse(self, id_: int, method: str) -> bool | None:
        """Answers a request that cannot run (in-flight id, shutting down, unknown method).

        Returns None if the request may run, else what :meth:`_on_message` returns.
        """
        with self._lock:
            if id_ in self._requests:
                duplicate, stopping = True, False
            else:
                duplicate, stopping = False, self._stop_reason is not None
        if duplicate:
            _log(f"protocol violation from the host: request id {id_} is already in flight; exiting (code 2)")
            return False
        if stopping:
            self._out.send(
                self._error_frame_plain(
                    id_, "ShuttingDown", "the worker is shutting down and takes no new requests"
                )
            )
            return True
        if self.app.get_handler(method) is None:
            known = ", ".join(self.app.methods) or "(none)"
            self._out.send(
                self._error_frame_plain(
                    id_, "MethodNotFound", f"unknown method {method!r}; this worker serves: {known}"
                )
            )
            return True
        return None

    def _on_invalid_params(self, exc: protocol.InvalidParams) -> bool:
        """A request whose params cannot be decoded: an ``InvalidParams`` error for it alone."""
        refused = self._refuse(exc.id, exc.method)
        if refused is not None:
            return refused
        self._out.send(self._error_frame_plain(exc.id, "InvalidParams", str(exc)))
        return True

    def _on_request(self, msg: protocol.RequestMessage, received: float, starting: list[_Request]) -> bool:
        id_: int = msg["id"]
        method: str = msg["method"]
        info = self._methods.get(method)
        # Reading these without the lock is enough to see the usual case: only this thread adds
        # requests, and _refuse looks again under the lock.
        if info is None or id_ in self._requests or self._stop_reason is not None:
            refused = self._refuse(id_, method)
            if refused is not None:
                return refused
            if info is None:
                handler_ = self.app.get_handler(method)
                assert handler_ is not None  # _refuse answered unknown methods
                new_info = _Method(handler_)
                if new_info.is_async and self._without_loop:
                    self._out.send(
                        self._error_frame_plain(
                            id_,
                            "HandlerError",
                            f"async handler {method!r} was registered after this worker started"
                            " without an event loop (it had no async handler then)",
                        )
                    )
                    return True
                info = self._methods[method] = new_info
        handler = info.handler
        session_id: str | None = msg.get("session")
        session = None if session_id is None else self._sessions.setdefault(session_id, {})
        ctx: Context | None = None
        if handler.takes_ctx:  # a handler that cannot see its Context does not get one made
            deadline_ms: int | None = msg.get("deadline_ms")
            ctx = Context(
                id_,
                method,
                session_id=session_id,
                session=session,
                deadline=None if deadline_ms is None else received + deadline_ms / 1000.0,
                trace=msg.get("trace"),
            )
        req = _Request(id_, method, info, msg["params"], ctx)
        # Only this thread adds requests and sets EOF/shutdown stops, so the checks above still hold.
        with self._lock:
            self._requests[id_] = req
            start = self._start_more and not self._queue and self._running < self._max_concurrency
            if start:
                req.state = _RUNNING
                self._running += 1
            else:
                self._queue.append(req)
        if start:
            starting.append(req)
        return True

    def _on_cancel(self, id_: int) -> None:
        with self._lock:
            req = self._requests.get(id_)
            if req is None:
                return  # finished already, or never known: cancel is advisory
            queued = req.state is _QUEUED
            if queued:
                self._queue.remove(req)
        if queued:
            self._finish(req, self._cancelled_frame(req, "cancelled before it started"))
        else:
            req.cancel()
            if req.is_async:
                self._post(self._cancel_task, req)
