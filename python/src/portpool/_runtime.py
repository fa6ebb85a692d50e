"""The worker process: stdio redirection, app loading, and the event loop serving requests.

Threads:

* the main thread runs one asyncio event loop: it owns all request state, runs
  ``async def`` handlers as tasks and answers ``ping`` at once;
* a reader thread reads frames from the protocol input fd, decodes them and
  hands each message to the loop (``call_soon_threadsafe``);
* a writer thread is the only one writing the protocol output fd; frames are
  queued whole, so they never interleave;
* a ``ThreadPoolExecutor`` (``max_workers = max_concurrency``) runs sync handlers
  and sync generators; those encode their own frames and queue them directly.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import enum
import importlib
import importlib.util
import inspect
import io
import os
import platform
import queue
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import Any, NoReturn

from portpool import protocol
from portpool.app import App, Context, Handler, HandlerError, HandlerKind

ENV_MAX_FRAME = "PORTPOOL_MAX_FRAME"
ENV_SHUTDOWN_GRACE = "PORTPOOL_SHUTDOWN_GRACE"
DEFAULT_SHUTDOWN_GRACE = 5.0

EXIT_OK = 0
EXIT_APP_ERROR = 1  # bad usage, app failed to import, output pipe broken
EXIT_PROTOCOL_ERROR = 2  # malformed input from the host

# Streaming handlers wait while more than this many bytes are queued for output.
_STREAM_BACKPRESSURE_BYTES = 8 * 1024 * 1024
# After stdin EOF / shutdown / a protocol error, the process exits no later than this
# many seconds past the grace period even if the event loop is blocked by a handler.
_WATCHDOG_SLACK = 1.0
_CANCEL_SETTLE = 1.0  # after the grace period: how long cancelled handlers get to stop
_FLUSH_TIMEOUT = 2.0  # how long the final flush of queued frames may take
_ATEXIT_TIMEOUT = 3.0  # how long the app's atexit callbacks may take on a clean exit
_MAX_GRACE = 24 * 3600.0

_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _log(text: str) -> None:
    """Writes one diagnostic line to stderr (never to the protocol fd)."""
    try:
        sys.stderr.write(f"portpool[{os.getpid()}]: {text}\n")
        sys.stderr.flush()
    except Exception:  # stderr gone: nothing sensible left to do
        pass


def _safe_str(text: str) -> str:
    """Makes ``text`` encodable as UTF-8 (lone surrogates become escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        _log(f"ignoring {name}={raw!r}: not an integer")
        return default
    if value < 0:
        _log(f"ignoring {name}={raw!r}: negative")
        return default
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        _log(f"ignoring {name}={raw!r}: not a number")
        return default
    if not value >= 0:
        _log(f"ignoring {name}={raw!r}: negative")
        return default
    return min(value, _MAX_GRACE)


# --------------------------------------------------------------------------- process setup


def redirect_stdio() -> tuple[int, int]:
    """Moves the protocol off fds 0 and 1; returns ``(in_fd, out_fd)``.

    fd 1 then points at stderr (so ``print()``, C code and child processes
    writing to stdout cannot corrupt frames) and fd 0 at ``/dev/null`` (so
    nothing else can consume protocol input). ``sys.stdout`` is rebuilt on the
    new fd 1, line-buffered.
    """
    for stream in (sys.stdout, sys.__stdout__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    out_fd = os.dup(1)  # dup'ed fds are non-inheritable: child processes do not get them
    os.dup2(2, 1)
    in_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
    finally:
        os.close(devnull)
    os.set_blocking(in_fd, True)
    os.set_blocking(out_fd, True)
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )
    return in_fd, out_fd


class AppLoadError(Exception):
    """The APP argument does not name a usable :class:`App` (the message says why)."""


def _import_file(path: str) -> types.ModuleType:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise AppLoadError(f"no such file: {path}")
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # so the app can import its sibling modules
    stem = os.path.splitext(os.path.basename(path))[0]
    name = stem if stem.isidentifier() and stem not in sys.modules else "__portpool_app__"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _find_app(module: types.ModuleType) -> App:
    candidate = getattr(module, "app", None)
    if isinstance(candidate, App):
        return candidate
    found: dict[int, tuple[str, App]] = {}
    for attr, value in vars(module).items():
        if isinstance(value, App):
            found.setdefault(id(value), (attr, value))
    if len(found) == 1:
        return next(iter(found.values()))[1]
    if not found:
        raise AppLoadError(f"module {module.__name__!r} defines no portpool.App instance (e.g. app = App())")
    names = ", ".join(sorted(attr for attr, _ in found.values()))
    raise AppLoadError(
        f"module {module.__name__!r} defines several App instances ({names}); name one: APP:NAME"
    )


def load_app(spec: str) -> App:
    """Imports the app named by ``spec``: ``file.py``, ``module``, ``module:attr`` or ``file.py:attr``."""
    target, attr = spec, ""
    if ":" in spec:
        left, _, right = spec.rpartition(":")
        if right and all(part.isidentifier() for part in right.split(".")):
            target, attr = left, right
    if not target:
        raise AppLoadError(f"invalid APP {spec!r}: expected a .py file, a module, or module:attr")
    if target.endswith(".py") or os.sep in target or os.path.isfile(target):
        module = _import_file(target)
    else:
        module = importlib.import_module(target)
    if not attr:
        return _find_app(module)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"{target!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App):
        raise AppLoadError(f"{spec!r} is a {type(obj).__name__}, not a portpool.App")
    return obj


# --------------------------------------------------------------------------- output


class _Writer:
    """The single writer of the protocol output fd, on its own thread."""

    def __init__(self, fd: int, on_error: Callable[[OSError], None]) -> None:
        self._fd = fd
        self._on_error = on_error
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self.broken = False
        self._thread = threading.Thread(target=self._run, name="portpool-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        """Bytes queued but not yet written."""
        return self._pending

    def put(self, frame: bytes) -> None:
        """Queues one whole frame; never blocks. Safe from any thread."""
        if self.broken:
            return
        with self._cond:
            self._pending += len(frame)
        self._queue.put(frame)

    def wait_below(self, limit: int, stop: threading.Event | None = None) -> None:
        """Blocks (a worker thread) while more than ``limit`` bytes are queued."""
        with self._cond:
            while self._pending > limit and not self.broken and not (stop is not None and stop.is_set()):
                self._cond.wait(0.1)

    def close(self, timeout: float) -> bool:
        """Writes everything queued so far, then stops; returns False if that did not finish in time."""
        self._queue.put(None)
        if not self._thread.is_alive():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if not self.broken:
                try:
                    view = memoryview(frame)
                    while view:
                        written = os.write(self._fd, view)
                        view = view[written:]
                except OSError as exc:
                    self.broken = True
                    self._on_error(exc)
            with self._cond:
                self._pending -= len(frame)
                self._cond.notify_all()


# --------------------------------------------------------------------------- requests


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class _Request:
    __slots__ = ("id", "handler", "params", "ctx", "state", "task", "responded")

    def __init__(self, id: int, handler: Handler, params: Any, ctx: Context) -> None:
        self.id = id
        self.handler = handler
        self.params = params
        self.ctx = ctx
        self.state = _State.QUEUED
        self.task: asyncio.Task[None] | None = None
        self.responded = False


class _Stop(enum.Enum):
    EOF = "end of input"
    SHUTDOWN = "shutdown message"
    PROTOCOL_ERROR = "protocol error"
    OUTPUT_CLOSED = "output closed"


class _EncodeFailure(Exception):
    """A value a handler produced cannot be sent (not MessagePack-encodable or too large)."""


class Runtime:
    """Serves one :class:`App` over a pair of fds until shutdown, end of input, or a protocol error."""

    def __init__(
        self,
        app: App,
        in_fd: int,
        out_fd: int,
        *,
        max_frame: int = protocol.DEFAULT_MAX_FRAME,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    ) -> None:
        self.app = app
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.max_frame = max_frame
        self.shutdown_grace = shutdown_grace
        self._requests: dict[int, _Request] = {}  # queued or running, by id
        self._queue: collections.deque[_Request] = collections.deque()
        self._running = 0
        self._sessions: dict[str, dict[str, Any]] = {}
        self._emit_lock = threading.Lock()
        self._stop_reason: _Stop | None = None
        self._start_more = True  # False once the grace period is over: queued requests never start
        self._writer = _Writer(out_fd, self._output_failed)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=app.max_concurrency, thread_name_prefix="portpool-handler"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._idle_event: asyncio.Event | None = None

    # ------------------------------------------------------------------ main

    async def run(self) -> int:
        """Runs until stopped; returns the process exit code."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._idle_event = asyncio.Event()
        self._writer.start()
        hello = protocol.hello_message(
            runtime_version=platform.python_version(),
            pid=os.getpid(),
            max_concurrency=self.app.max_concurrency,
            methods=self.app.methods,
        )
        self._writer.put(protocol.encode(hello))
        threading.Thread(target=self._read_loop, name="portpool-reader", daemon=True).start()
        await self._stop_event.wait()
        reason = self._stop_reason
        if reason is _Stop.PROTOCOL_ERROR:
            return EXIT_PROTOCOL_ERROR
        if reason is _Stop.OUTPUT_CLOSED:
            self._abandon_all("worker output closed")
            return EXIT_APP_ERROR
        await self._drain()
        return EXIT_OK

    async def _drain(self) -> None:
        """Lets in-flight requests finish within the grace period, then cancels the rest."""
        assert self._idle_event is not None
        if self._requests:
            try:
                await asyncio.wait_for(self._idle_event.wait(), self.shutdown_grace)
            except asyncio.TimeoutError:
                pass
        if not self._requests:
            return
        _log(f"{len(self._requests)} request(s) still in flight after {self.shutdown_grace:g}s; cancelling")
        self._start_more = False
        while self._queue:
            req = self._queue.popleft()
            self._finish(req, self._cancelled_frame(req, "the worker is shutting down"))
        for req in list(self._requests.values()):
            self._cancel_running(req)
        try:
            await asyncio.wait_for(self._idle_event.wait(), _CANCEL_SETTLE)
        except asyncio.TimeoutError:
            pass
        self._abandon_all("the worker is shutting down")

    def _abandon_all(self, why: str) -> None:
        """Answers every request still in flight with a Cancelled error (their handlers may still run)."""
        self._start_more = False
        for req in list(self._requests.values()):
            req.ctx.cancelled.set()
            self._finish(req, self._cancelled_frame(req, why))
        self._queue.clear()

    def close(self) -> bool:
        """Flushes queued frames (bounded) and releases the thread pool without waiting for it."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        return self._writer.close(_FLUSH_TIMEOUT)

    def _stop(self, reason: _Stop) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        assert self._stop_event is not None
        self._stop_event.set()

    # ------------------------------------------------------------------ input

    def _post(self, callback: Callable[..., None], *args: Any) -> bool:
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(callback, *args)
            return True
        except RuntimeError:  # loop already closed
            return False

    def _read_loop(self) -> None:
        """Reader thread: frames from ``in_fd`` to the loop."""
        reader = protocol.FrameReader(self.max_frame)
        try:
            while True:
                try:
                    data = os.read(self.in_fd, 256 * 1024)
                except OSError as exc:
                    _log(f"reading the protocol input failed ({exc}); treating it as end of input")
                    data = b""
                if not data:
                    reader.eof()
                    self._watchdog(self.shutdown_grace + _CANCEL_SETTLE + _FLUSH_TIMEOUT + _WATCHDOG_SLACK, 0)
                    self._post(self._on_eof)
                    return
                for body in reader.feed(data):
                    message = protocol.unpack(body)
                    self._post(self._on_message, message, time.monotonic())
        except protocol.ProtocolError as exc:
            _log(f"protocol violation from the host: {type(exc).__name__}: {exc}; exiting with code 2")
            self._watchdog(_WATCHDOG_SLACK, EXIT_PROTOCOL_ERROR)
            self._post(self._on_protocol_error)
        except BaseException as exc:  # pragma: no cover - a bug in the reader itself
            _log(f"reader thread failed: {exc!r}; exiting with code 2")
            self._watchdog(_WATCHDOG_SLACK, EXIT_PROTOCOL_ERROR)
            self._post(self._on_protocol_error)

    @staticmethod
    def _watchdog(seconds: float, code: int) -> None:
        """Guarantees the process exits even if the event loop is blocked by a misbehaving handler."""

        def fire() -> None:
            _log(f"event loop did not stop within {seconds:g}s; forcing exit {code}")
            os._exit(code)

        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.start()

    def _output_failed(self, exc: OSError) -> None:
        """Writer thread: the host stopped reading our output."""
        _log(f"writing to the host failed ({exc}); exiting")
        self._watchdog(_WATCHDOG_SLACK, EXIT_APP_ERROR)
        self._post(self._stop, _Stop.OUTPUT_CLOSED)

    def _on_eof(self) -> None:
        self._stop(_Stop.EOF)

    def _on_protocol_error(self) -> None:
        self._stop(_Stop.PROTOCOL_ERROR)

    def _on_message(self, msg: protocol.Message, received: float) -> None:
        kind = msg["type"]
        if kind == "request":
            self._on_request(msg, received)
        elif kind == "cancel":
            self._on_cancel(msg["id"])
        elif kind == "ping":
            self._writer.put(protocol.encode(protocol.pong_message(msg["id"])))
        elif kind == "session_close":
            self._sessions.pop(msg["session"], None)
        elif kind == "shutdown":
            self._stop(_Stop.SHUTDOWN)
        else:
            _log(
                f"protocol violation from the host: {kind!r} is a worker -> host message; exiting with code 2"
            )
            self._stop(_Stop.PROTOCOL_ERROR)

    def _on_request(self, msg: protocol.Message, received: float) -> None:
        id_: int = msg["id"]
        method: str = msg["method"]
        if id_ in self._requests:
            _log(f"protocol violation from the host: request id {id_} is already in flight; exiting (code 2)")
            self._stop(_Stop.PROTOCOL_ERROR)
            return
        if self._stop_reason is not None:
            self._writer.put(
                self._error_frame_plain(
                    id_, "ShuttingDown", "the worker is shutting down and takes no new requests"
                )
            )
            return
        handler = self.app.get_handler(method)
        if handler is None:
            known = ", ".join(self.app.methods) or "(none)"
            self._writer.put(
                self._error_frame_plain(
                    id_, "MethodNotFound", f"unknown method {method!r}; this worker serves: {known}"
                )
            )
            return
        session_id: str | None = msg.get("session")
        session = None if session_id is None else self._sessions.setdefault(session_id, {})
        deadline_ms: int | None = msg.get("deadline_ms")
        ctx = Context(
            id_,
            method,
            session_id=session_id,
            session=session,
            deadline=None if deadline_ms is None else received + deadline_ms / 1000.0,
            trace=msg.get("trace"),
        )
        req = _Request(id_, handler, msg["params"], ctx)
        self._requests[id_] = req
        if self._idle_event is not None:
            self._idle_event.clear()
        self._queue.append(req)
        self._pump()

    def _on_cancel(self, id_: int) -> None:
        req = self._requests.get(id_)
        if req is None:
            return  # finished already, or never known: cancel is advisory
        if req.state is _State.QUEUED:
            self._queue.remove(req)
            self._finish(req, self._cancelled_frame(req, "cancelled before it started"))
        else:
            self._cancel_running(req)

    @staticmethod
    def _cancel_running(req: _Request) -> None:
        req.ctx.cancelled.set()
        if req.task is not None and req.handler.kind in (HandlerKind.ASYNC, HandlerKind.ASYNC_GEN):
            req.task.cancel()

    # ------------------------------------------------------------------ execution

    def _pump(self) -> None:
        """Starts queued requests, in arrival order, while slots are free."""
        loop = self._loop
        assert loop is not None
        while self._start_more and self._queue and self._running < self.app.max_concurrency:
            req = self._queue.popleft()
            req.state = _State.RUNNING
            self._running += 1
            if req.handler.kind in (HandlerKind.ASYNC, HandlerKind.ASYNC_GEN):
                req.task = loop.create_task(self._run_async(req))
            else:
                future = loop.run_in_executor(self._executor, self._run_sync, req)
                req.task = loop.create_task(self._await_sync(req, future))

    def _finish(self, req: _Request, frame: bytes) -> None:
        """Loop thread: sends the request's one response and frees its slot."""
        self._emit(req, frame, final=True)
        if req.state is _State.DONE:
            return
        if req.state is _State.RUNNING:
            self._running -= 1
        req.state = _State.DONE
        self._requests.pop(req.id, None)
        self._pump()
        if not self._requests and self._idle_event is not None:
            self._idle_event.set()

    def _emit(self, req: _Request, frame: bytes, *, final: bool) -> bool:
        """Queues a chunk or the final response of ``req``; nothing goes out after the final one."""
        with self._emit_lock:
            if req.responded:
                return False
            if final:
                req.responded = True
            self._writer.put(frame)
            return True

    async def _await_sync(self, req: _Request, future: asyncio.Future[bytes]) -> None:
        try:
            frame = await future
        except BaseException as exc:  # pragma: no cover - _run_sync catches everything
            frame = self._error_frame(req, exc)
        self._finish(req, frame)

    def _run_sync(self, req: _Request) -> bytes:
        """Pool thread: runs a sync handler or sync generator; returns the encoded response frame."""
        ctx = req.ctx
        try:
            result = req.handler.call(req.params, ctx)
            if inspect.isgenerator(result):
                try:
                    for item in result:
                        if ctx.cancelled.is_set():
                            break
                        if not self._emit(req, self._chunk_frame(req, item), final=False):
                            break
                        self._writer.wait_below(_STREAM_BACKPRESSURE_BYTES, ctx.cancelled)
                finally:
                    result.close()
                result = None
            elif inspect.isawaitable(result):  # e.g. a sync wrapper returning a coroutine
                assert self._loop is not None
                result = asyncio.run_coroutine_threadsafe(_await(result), self._loop).result()
            if ctx.cancelled.is_set():
                return self._cancelled_frame(req)
            return self._ok_frame(req, result)
        except _EncodeFailure as exc:
            return self._error_frame_plain(req.id, "EncodeError", str(exc))
        except BaseException as exc:
            if ctx.cancelled.is_set():
                return self._cancelled_frame(req)
            return self._error_frame(req, exc)

    async def _run_async(self, req: _Request) -> None:
        """Loop task: runs an async handler or async generator, then sends its response."""
        ctx = req.ctx
        try:
            if req.handler.kind is HandlerKind.ASYNC_GEN:
                agen = req.handler.call(req.params, ctx)
                try:
                    async for item in agen:
                        if not self._emit(req, self._chunk_frame(req, item), final=False):
                            break
                        while self._writer.pending > _STREAM_BACKPRESSURE_BYTES and not self._writer.broken:
                            await asyncio.sleep(0.005)
                finally:
                    await agen.aclose()
                frame = self._ok_frame(req, None)
            else:
                result = await req.handler.call(req.params, ctx)
                frame = self._ok_frame(req, result)
            if ctx.cancelled.is_set():
                frame = self._cancelled_frame(req)
        except asyncio.CancelledError:
            frame = self._cancelled_frame(req)
        except _EncodeFailure as exc:
            frame = self._error_frame_plain(req.id, "EncodeError", str(exc))
        except BaseException as exc:  # SystemExit/KeyboardInterrupt in a handler are errors too
            frame = self._cancelled_frame(req) if ctx.cancelled.is_set() else self._error_frame(req, exc)
        self._finish(req, frame)

    # ------------------------------------------------------------------ encoding

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
        try:
            return self._checked(protocol.response_ok_message(req.id, result), "result", result)
        except _EncodeFailure as exc:
            return self._error_frame_plain(req.id, "EncodeError", str(exc))

    def _chunk_frame(self, req: _Request, item: Any) -> bytes:
        return self._checked(protocol.chunk_message(req.id, item), "stream item", item)

    def _cancelled_frame(self, req: _Request, why: str = "cancelled") -> bytes:
        return self._error_frame_plain(req.id, "Cancelled", f"request {req.id} ({req.ctx.method}): {why}")

    def _error_frame_plain(self, id_: int, type_: str, message: str, traceback_: str | None = None) -> bytes:
        msg = protocol.response_error_message(
            id_,
            _safe_str(type_),
            _safe_str(message),
            traceback=None if traceback_ is None else _safe_str(traceback_),
        )
        body = protocol.pack(msg)
        if len(body) > self.max_frame:  # an absurdly long message or traceback: keep the head
            keep = max(256, self.max_frame // 4)
            msg = protocol.response_error_message(id_, _safe_str(type_)[:256], _safe_str(message)[:keep])
            body = protocol.pack(msg)
        return protocol.frame(body)

    def _error_frame(self, req: _Request, exc: BaseException) -> bytes:
        """The error response for an exception a handler raised."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PKG_DIR):
            tb = tb.tb_next  # drop the runtime's own frames
        if tb is None:
            tb = exc.__traceback__
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        if isinstance(exc, HandlerError):
            type_ = exc.type or type(exc).__name__
            data = exc.data
        else:
            type_ = type(exc).__name__
            data = None
        message = str(exc)
        if data is not None:
            msg = protocol.response_error_message(
                req.id, _safe_str(type_), _safe_str(message), traceback=_safe_str(text), data=data
            )
            try:
                return self._checked(msg, "error data", data)
            except _EncodeFailure as enc:
                message = f"{message} (error data dropped: {enc})"
        return self._error_frame_plain(req.id, type_, message, text)


async def _await(awaitable: Any) -> Any:
    return await awaitable


# --------------------------------------------------------------------------- entry points


def _run_exitfuncs() -> None:
    run: Callable[[], None] | None = getattr(atexit, "_run_exitfuncs", None)
    if run is not None:
        try:
            run()
        except BaseException:
            pass


def _exit(code: int, *, run_atexit: bool = False) -> NoReturn:
    """Leaves the process without waiting for stray threads (a stuck handler must not block exit)."""
    if run_atexit:
        Runtime._watchdog(_ATEXIT_TIMEOUT, code)
        _run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def serve_app(app: App, fds: tuple[int, int] | None = None) -> NoReturn:
    """Serves ``app`` on ``fds`` (``(in_fd, out_fd)``; default: redirect stdio now) and exits the process."""
    in_fd, out_fd = redirect_stdio() if fds is None else fds
    runtime = Runtime(
        app,
        in_fd,
        out_fd,
        max_frame=_env_int(ENV_MAX_FRAME, protocol.DEFAULT_MAX_FRAME),
        shutdown_grace=_env_float(ENV_SHUTDOWN_GRACE, DEFAULT_SHUTDOWN_GRACE),
    )
    # Not asyncio.run(): its teardown waits for leftover tasks and executor threads, which a
    # misbehaving handler could make last forever. The process exits right after this instead.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(runtime.run())
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        _log("the runtime failed:\n" + traceback.format_exc())
        code = EXIT_APP_ERROR
    if not runtime.close():
        _log("could not flush all output to the host in time")
    _exit(code, run_atexit=code == EXIT_OK)


USAGE = """\
usage: python -m portpool APP

Serves a portpool App over stdin/stdout (4-byte length-prefixed MessagePack frames).
APP is a path to a .py file (its module-level App instance is used, e.g. `app`),
a module name, or module:attr / file.py:attr naming the App.

Environment: PORTPOOL_MAX_FRAME (bytes, default 67108864),
PORTPOOL_SHUTDOWN_GRACE (seconds, default 5).
"""


def main(argv: list[str] | None = None) -> NoReturn:
    """``python -m portpool APP``."""
    # SIGTERM must end the worker promptly, whatever disposition the parent left us.
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # First of all, before any app code runs: move the protocol off fds 0 and 1.
    fds = redirect_stdio()
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 1 and args[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        _exit(EXIT_OK)
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write(USAGE)
        _exit(EXIT_APP_ERROR)
    spec = args[0]
    try:
        app = load_app(spec)
    except AppLoadError as exc:
        _log(f"cannot load app {spec!r}: {exc}")
        _exit(EXIT_APP_ERROR)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            _exit(0)
        if isinstance(code, int):
            _log(f"app {spec!r} called sys.exit({code}) while importing")
            _exit(code)
        _log(f"app {spec!r} exited while importing: {code}")
        _exit(EXIT_APP_ERROR)
    except BaseException:
        sys.stderr.write(traceback.format_exc())
        _log(f"importing app {spec!r} failed (traceback above)")
        _exit(EXIT_APP_ERROR)
    serve_app(app, fds)
