"""The worker process: stdio redirection, app loading, and serving requests.

Threads, and the path of a request:

* one thread at a time holds the lead: it reads frames from the protocol input fd (large
  reads, several frames at a time), decodes them and acts on each at once: it answers
  ``ping``, applies ``cancel`` and ``session_close``, and starts each ``request`` that gets
  a free slot (``max_concurrency`` slots; the rest wait in arrival order);
* sync handlers and sync generators run on a pool of handler threads, which encode and
  send their own responses. Reading is a role the threads pass around (see
  :class:`_Workers`): the sync requests of one read run on the thread that read them, one
  after the other, without waking any other thread (the sequential case: one context
  switch per call), their responses written together. A watcher thread hands reading and
  the rest of the batch to other threads once a handler has run for a millisecond or so,
  so pings, cancels and further requests are still read within a few milliseconds (see
  :meth:`Runtime._watch`); a handler whose last run was that long gets a thread of its own;
* the main thread runs one asyncio event loop: ``async def`` handlers run there as tasks
  and send their responses from the loop. While only async requests come, the loop holds
  the lead and reads the input itself (see :meth:`Runtime._loop_read`); a sync request
  hands it back to a thread, and the watcher takes it back if input waits while a handler
  blocks the loop. The loop also drives shutdown (grace period, cancelling stragglers);
* output has no writer thread of its own: whichever thread has a frame to send writes it,
  together with frames queued meanwhile, under one lock, so frames never interleave. When
  the pipe is full, a flusher thread takes over until the host reads again (see
  :class:`_Output`), so neither the reader nor the loop ever blocks on output.

Request state (table, queue, running count) is guarded by one lock, never held while
running handler code or writing.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import enum
import importlib
import importlib.util
import inspect
import io
import itertools
import os
import queue
import select
import signal
import stat
import struct
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
_READ_SIZE = 256 * 1024  # bytes per read of the protocol input
# A sync request read while nothing else runs and no more input waits runs on the reading
# thread; if it is still running this long, another thread takes over reading...
_INLINE_TAKEOVER = 0.001
# ...which the watcher thread checks this often while such requests run.
_WATCH_TICK = 0.002

_FRAME_HEADER = struct.Struct(">I")  # as protocol.frame writes it
_U32_MAX = 2**32 - 1
# Tasks of async handlers start eagerly (their first step runs at once) where asyncio can.
_EAGER = sys.version_info >= (3, 12)
ENV_UVLOOP = "PORTPOOL_UVLOOP"
_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# The parent that started this process (the host), before any reparenting: see _kill_own_group.
_PARENT_AT_START = os.getppid()
_GROUP_KILL_ROUNDS = 10


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


def _can_be_nonblocking(fd: int, in_fd: int) -> bool:
    """Whether ``fd`` is a pipe or socket of its own, so that making it non-blocking affects nothing else.

    Not a terminal or file (shared with the user's shell), not the same pipe as stderr or the
    protocol input (O_NONBLOCK belongs to the open file description, which those would share).
    """
    if not hasattr(select, "poll") or not hasattr(os, "writev"):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    if not (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
        return False
    for other in (in_fd, 2):
        try:
            ost = os.fstat(other)
        except OSError:
            continue
        if (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino):
            return False
    return True


_IOV_MAX = 512  # frames per writev call


class _Output:
    """The protocol output: whole frames, in the order they were queued, never interleaved.

    There is no writer thread in the common case: a thread that queues a frame while nobody
    is writing writes it itself, at once, together with any frames other threads queue in the
    meantime (one ``writev``). The fd is non-blocking where that is safe
    (:func:`_can_be_nonblocking`); when the pipe is full, the rest is handed to a flusher
    thread that waits for the host to read, so the reader, the event loop and handler
    threads never block on output. On other fds writes simply block.

    ``lock`` guards the queue; callers that must decide under it whether a frame may still
    go out (a request's final response) use :meth:`queue_locked` and :meth:`write_queued`.
    A thread that wants to batch several frames into one write without holding up anyone
    else's output (the event loop) queues them with :meth:`queue_unclaimed_locked` and calls
    :meth:`kick` when done: any thread that writes in between takes them along.
    """

    def __init__(self, fd: int, on_error: Callable[[OSError], None], *, nonblocking: bool) -> None:
        self._fd = fd
        self._on_error = on_error
        self.lock = threading.Lock()
        self._cond = threading.Condition(self.lock)
        self._frames: collections.deque[bytes | memoryview] = collections.deque()
        self._pending = 0  # bytes queued and not yet written
        self._busy = False  # some thread is writing; frames queued => busy, or a kick() will follow
        self._handoff = False  # the pipe is full: the flusher thread owns writing
        self._waiters = 0  # threads waiting on _cond for progress
        self._closed = False
        self.broken = False
        self._nonblocking = nonblocking
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._nonblocking:
            os.set_blocking(self._fd, False)
            self._thread = threading.Thread(target=self._flush_loop, name="portpool-writer", daemon=True)
            self._thread.start()

    @property
    def pending(self) -> int:
        """Bytes queued but not yet written."""
        return self._pending

    def send(self, frame: bytes) -> None:
        """Queues one whole frame and writes it unless another thread is writing already. Any thread."""
        with self.lock:
            claimed = self.queue_locked(frame)
        if claimed:
            self.write_queued(claimed)

    def queue_locked(self, frame: bytes) -> bytes | bool:
        """Queues ``frame`` (``lock`` held); what the caller must then pass to :meth:`write_queued`.

        False: nothing to do (another thread writes it, or the output is broken). Otherwise the
        caller became the writer: True if the frame was queued behind others, or ``frame``
        itself when nothing else was queued; it is then written straight away, not queued.
        """
        if self.broken:
            return False
        if self._busy:
            self._frames.append(frame)
            self._pending += len(frame)
            return False  # the thread writing now takes this frame too
        self._busy = True
        if self._frames:  # frames queued unclaimed (see queue_unclaimed_locked) go first
            self._frames.append(frame)
            self._pending += len(frame)
            return True
        return frame

    def queue_unclaimed_locked(self, frame: bytes) -> None:
        """Queues ``frame`` (``lock`` held) without becoming the writer; :meth:`kick` must follow.

        The thread writing now, or the next thread that queues a frame, writes it too, so
        frames queued this way never hold back frames of other threads.
        """
        if not self.broken:
            self._frames.append(frame)
            self._pending += len(frame)

    def kick(self) -> None:
        """Writes queued frames, if there are any and no thread is writing them already."""
        if not self._frames:
            return
        with self.lock:
            if self._busy or not self._frames or self.broken:
                return
            self._busy = True
        self.write_queued()

    def write_queued(self, first: bytes | bool = True) -> None:
        """Writes queued frames until none are left or the pipe is full (then the flusher takes over).

        ``first``: a frame :meth:`queue_locked` handed back to write before the queue.
        """
        fd = self._fd
        frames = self._frames
        if type(first) is bytes:
            try:
                written = os.write(fd, first)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self._fail(exc)
                return
            if written < len(first):
                with self.lock:
                    if self.broken:
                        return
                    frames.appendleft(memoryview(first)[written:] if written else first)
                    self._pending += len(first) - written
                    if self._nonblocking:
                        self._handoff = True  # _busy stays set: the flusher writes the rest
                        self._cond.notify_all()
                        return
        while True:
            with self.lock:
                if not frames or self.broken:
                    self._busy = False
                    if self._waiters:
                        self._cond.notify_all()
                    return
                batch = [frames[0]] if len(frames) == 1 else list(itertools.islice(frames, _IOV_MAX))
            size = sum(map(len, batch)) if len(batch) > 1 else len(batch[0])
            try:
                written = os.write(fd, batch[0]) if len(batch) == 1 else os.writev(fd, batch)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self._fail(exc)
                return
            with self.lock:
                self._consume(written)
                if self._waiters:
                    self._cond.notify_all()
                if written < size and self._nonblocking:
                    self._handoff = True  # _busy stays set: the flusher writes the rest
                    self._cond.notify_all()
                    return

    def _consume(self, written: int) -> None:
        """Drops ``written`` bytes from the head of the queue (``lock`` held)."""
        self._pending -= written
        frames = self._frames
        while written:
            head = frames[0]
            if written >= len(head):
                frames.popleft()
                written -= len(head)
            else:
                frames[0] = memoryview(head)[written:]
                written = 0

    def _flush_loop(self) -> None:
        """Flusher thread: finishes writing once the host reads again, when the pipe was full."""
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while True:
            with self.lock:
                while not self._handoff:
                    if self._closed:
                        return
                    self._cond.wait()
                self._handoff = False
            try:
                poller.poll()  # POLLERR/POLLHUP: the next write reports the error
            except OSError:
                pass
            self.write_queued()

    def _fail(self, exc: OSError) -> None:
        with self.lock:
            if self.broken:
                return
            self.broken = True
            self._frames.clear()
            self._pending = 0
            self._busy = self._handoff = False
            self._cond.notify_all()
        self._on_error(exc)

    def wait_below(self, limit: int, stop: Callable[[], bool] | None = None) -> None:
        """Blocks (a handler thread) while more than ``limit`` bytes are queued, until ``stop()``."""
        if self._pending <= limit:
            return
        with self.lock:
            self._waiters += 1
            try:
                while self._pending > limit and not self.broken and not (stop is not None and stop()):
                    self._cond.wait(0.1)
            finally:
                self._waiters -= 1

    def close(self, timeout: float) -> bool:
        """Waits until everything queued so far is written; returns False if that did not finish in time."""
        deadline = time.monotonic() + timeout
        with self.lock:
            self._waiters += 1
            try:
                while self._busy and not self.broken:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._waiters -= 1
            self._closed = True
            self._cond.notify_all()
        return True


# --------------------------------------------------------------------------- requests


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


class _Lead:
    """The job "read the protocol input" (see :class:`_Workers`), after running ``batch`` inline."""

    __slots__ = ("batch",)

    def __init__(self, batch: list[_Request] | None = None) -> None:
        self.batch = batch


_LEAD = _Lead()


class _Workers:
    """Threads that take turns reading the input and run sync handlers (leader/followers).

    One thread at a time holds the lead: it reads input and acts on each message. The sync
    requests a read starts run on that thread, one after the other, with no thread hop before
    the handler (:meth:`Runtime._run_inline`); the watcher passes the lead and the rest of
    the batch on to other threads only if a handler runs long. Requests of handlers that ran
    long last time go to threads of their own at once.

    Threads are made on demand and reused: an idle thread takes each job, otherwise a thread
    is added, up to ``max_concurrency + 1`` (the running sync requests plus the reader).
    """

    def __init__(
        self, max_jobs: int, run: Callable[[_Request], None], lead: Callable[[list[_Request] | None], None]
    ) -> None:
        self._max = max_jobs + 1
        self._run = run
        self._lead = lead
        self._jobs: queue.SimpleQueue[_Request | _Lead | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads done with their job, not yet claimed by a new one
        self._closed = False

    def submit(self, job: _Request | _Lead) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                spawn = 0
            elif self._threads < self._max:
                self._threads += 1
                spawn = self._threads
            else:  # a thread is just finishing the request whose slot this one took
                spawn = 0
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, name=f"portpool-handler_{spawn - 1}", daemon=True).start()

    def _work(self) -> None:
        jobs, run, lock = self._jobs, self._run, self._lock
        while True:
            job = jobs.get()
            if job is None or self._closed:
                return
            if isinstance(job, _Request):
                run(job)
            else:
                self._lead(job.batch)  # returns once it passed the lead on (or input ended)
            del job
            with lock:
                self._idle += 1

    def close(self) -> None:
        """Jobs not started yet never start; running ones are left alone."""
        self._closed = True
        with self._lock:
            count = self._threads
        for _ in range(count):
            self._jobs.put(None)


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
        self._frame_limit = min(max_frame, _U32_MAX)  # the largest body a frame may carry
        self.shutdown_grace = shutdown_grace
        self._max_concurrency = app.max_concurrency
        # _lock guards the request state below; never held while writing output or running handlers.
        self._lock = threading.Lock()
        self._requests: dict[int, _Request] = {}  # queued or running, by id
        self._queue: collections.deque[_Request] = collections.deque()
        self._running = 0
        self._start_more = True  # False once the grace period is over: queued requests never start
        self._stop_reason: _Stop | None = None
        self._draining = False  # the loop waits for _idle_event
        self._sessions: dict[str, dict[str, Any]] = {}  # the thread holding the lead only
        self._out = _Output(out_fd, self._output_failed, nonblocking=_can_be_nonblocking(out_fd, in_fd))
        self._workers = _Workers(app.max_concurrency, self._run_pooled, self._lead)
        self._methods: dict[str, _Method] = {}  # by name, made on first use (lead holder only)
        self._input = protocol.FrameReader(max_frame)  # used by the thread holding the lead
        # The input is read into this one buffer (see _read_into); lead holder only.
        self._read_buf: memoryview | None = None
        self._read_bufs: list[bytearray] = []
        if hasattr(os, "readv"):
            self._read_bufs = [bytearray(_READ_SIZE)]
            self._read_buf = memoryview(self._read_bufs[0])
        # Inline runs (see _run_inline / _watch), guarded by _watch_cond.
        self._in_poll: Any = None  # select.poll on in_fd (the watcher: is input waiting?)
        self._inline_pending: collections.deque[_Request] = collections.deque()  # batch not started yet
        self._batch_holder: int | None = None  # the thread whose batch's responses are held (see _emit)
        self._watch_lock = threading.Lock()
        self._watch_cond = threading.Condition(self._watch_lock)
        self._inline_since: float | None = None  # when the lead holder began running a handler itself
        self._inline_runs = 0
        self._loop_lead = False  # the event loop holds the lead (see _loop_read)
        self._loop_in_read = False  # ...and is acting on what it read (the watcher must wait)
        self._loop_reads = 0  # reads by the loop so far (the watcher sees whether it still reads)
        self._steals = 0  # how often the watcher passed the lead on while an inline run went on
        self._watcher_asleep = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stop_event: asyncio.Event | None = None
        self._idle_event: asyncio.Event | None = None
        self._hold_output = False  # loop thread only: see _start_async
        self._held_frames = False  # the loop queued frames unclaimed, for _release_output to kick

    # ------------------------------------------------------------------ main

    async def run(self) -> int:
        """Runs until stopped; returns the process exit code."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop_event = asyncio.Event()
        self._idle_event = asyncio.Event()
        self._out.start()
        hello = protocol.hello_message(
            runtime_version=sys.version.split()[0],  # as platform.python_version() (not imported: cold start)
            pid=os.getpid(),
            max_concurrency=self.app.max_concurrency,
            methods=self.app.methods,
        )
        self._out.send(protocol.encode(hello))
        if hasattr(select, "poll"):  # elsewhere the loop never holds the lead
            self._in_poll = select.poll()
            self._in_poll.register(self.in_fd, select.POLLIN)
        threading.Thread(target=self._watch, name="portpool-watcher", daemon=True).start()
        self._workers.submit(_LEAD)  # a worker thread starts reading input
        await self._stop_event.wait()
        reason = self._stop_reason
        if reason is _Stop.PROTOCOL_ERROR:
            return EXIT_PROTOCOL_ERROR
        if reason is _Stop.OUTPUT_CLOSED:
            self._abandon_all("worker output closed")
            return EXIT_APP_ERROR
        await self._drain()
        return EXIT_OK

    async def _wait_idle(self, timeout: float) -> None:
        assert self._idle_event is not None
        try:
            await asyncio.wait_for(self._idle_event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _drain(self) -> None:
        """Lets in-flight requests finish within the grace period, then cancels the rest."""
        with self._lock:
            self._draining = True  # from now on, the last request to finish sets _idle_event
            busy = bool(self._requests)
        if busy:
            await self._wait_idle(self.shutdown_grace)
        with self._lock:
            if not self._requests:
                return
            left = len(self._requests)
            self._start_more = False
            queued = list(self._queue)
            self._queue.clear()
            running = [req for req in self._requests.values() if req.state is _RUNNING]
        _log(f"{left} request(s) still in flight after {self.shutdown_grace:g}s; cancelling")
        for req in queued:
            self._finish(req, self._cancelled_frame(req, "the worker is shutting down"))
        for req in running:
            req.cancel()
            if req.is_async:
                self._cancel_task(req)
        await self._wait_idle(_CANCEL_SETTLE)
        self._abandon_all("the worker is shutting down")

    def _abandon_all(self, why: str) -> None:
        """Answers every request still in flight with a Cancelled error (their handlers may still run)."""
        with self._lock:
            self._start_more = False
            self._queue.clear()
            left = list(self._requests.values())
        for req in left:
            req.cancel()
            self._finish(req, self._cancelled_frame(req, why))

    def close(self) -> bool:
        """Flushes queued frames (bounded) and releases the handler threads without waiting for them."""
        self._workers.close()
        self._held_frames = False  # the loop may have stopped before _release_output ran
        self._out.kick()
        return self._out.close(_FLUSH_TIMEOUT)

    @property
    def stopped_on_eof(self) -> bool:
        """The runtime stops because its input ended (not after a ``shutdown`` message or an error)."""
        return self._stop_reason is _Stop.EOF

    def _request_stop(self, reason: _Stop) -> None:
        """Any thread: stop taking requests; the loop then drains (or not, per ``reason``) and exits."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
        if self._stop_event is not None:
            self._post(self._stop_event.set)

    def _post(self, callback: Callable[..., None], *args: Any) -> bool:
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(callback, *args)
            return True
        except RuntimeError:  # loop already closed
            return False

    # ------------------------------------------------------------------ input (reader thread)

    def _lead(self, batch: list[_Request] | None = None) -> None:
        """Worker thread holding the lead: reads input and acts on each message at once.

        Sync requests a read starts run right here, one after the other (see
        :meth:`_run_inline`), while the watcher guards against long ones; ``batch``: sync
        requests the loop read, to run first. When a read starts only async requests, the
        lead goes to the event loop (see :meth:`_loop_read`). Returns once the lead went to
        another thread or the loop, or input ended (end of input, error, protocol violation).
        """
        process = self._process
        read_into = self._read_into
        starting: list[_Request] = []
        if batch and not self._run_inline(batch):
            return
        while True:
            if not process(read_into(), starting):
                return
            if starting:
                mine = self._start_batch(starting)
                if mine:
                    starting = []
                    if not self._run_inline(mine):
                        return  # the watcher passed the lead on while they ran
                    continue
                only_async = all(req.is_async for req in starting)
                starting = []
                if only_async and self._in_poll is not None:
                    with self._watch_lock:
                        self._loop_lead = True  # from now on; the watcher may take it back
                        if self._watcher_asleep:
                            self._watch_cond.notify()  # to guard the loop while the requests run
                    self._post(self._loop_take_lead)
                    return

    def _process(self, data: memoryview | bytes, starting: list[_Request]) -> bool:
        """Lead holder: acts on the messages of one read; requests that take a slot go to ``starting``.

        Returns False when reading must stop: end of input (empty ``data``), or a protocol violation.
        """
        reader = self._input
        try:
            if not data:
                reader.eof()
                self._request_stop(_Stop.EOF)
                self._watchdog(
                    self.shutdown_grace + _CANCEL_SETTLE + _FLUSH_TIMEOUT + _WATCHDOG_SLACK,
                    EXIT_OK,
                    kill_group=self.stopped_on_eof,
                )
                return False
            received = time.monotonic()
            unpack = protocol.unpack
            for body in reader.feed(data):
                try:
                    msg = unpack(body)
                except protocol.InvalidParams as exc:  # fails only this call
                    ok = self._on_invalid_params(exc)
                else:
                    if msg["type"] == "request":
                        ok = self._on_request(msg, received, starting)
                    else:
                        ok = self._on_message(msg, received, starting)
                if not ok:
                    self._watchdog(_WATCHDOG_SLACK, EXIT_PROTOCOL_ERROR)
                    self._request_stop(_Stop.PROTOCOL_ERROR)
                    return False
            return True
        except protocol.ProtocolError as exc:
            _log(f"protocol violation from the host: {type(exc).__name__}: {exc}; exiting with code 2")
        except BaseException as exc:  # pragma: no cover - a bug in the reader itself
            _log(f"reader failed: {exc!r}; exiting with code 2")
        self._watchdog(_WATCHDOG_SLACK, EXIT_PROTOCOL_ERROR)
        self._request_stop(_Stop.PROTOCOL_ERROR)
        return False

    def _loop_take_lead(self) -> None:
        """Loop thread: starts reading input itself, unless the watcher took the lead back meanwhile."""
        with self._watch_lock:
            if not self._loop_lead:
                return
        assert self._loop is not None
        self._loop.add_reader(self.in_fd, self._loop_read)

    def _loop_read(self) -> None:
        """Loop thread holding the lead: one read, acted on like :meth:`_lead` does.

        While only async requests come, the loop reads them itself: no other thread wakes up
        per call. A read that starts sync requests hands the lead (and those requests) back to
        a worker thread; so does the watcher, if input waits while the loop is blocked.
        """
        loop = self._loop
        assert loop is not None
        lock = self._watch_lock
        with lock:
            lead = self._loop_lead
            self._loop_reads += 1
            if lead:
                self._loop_in_read = True  # the watcher leaves the lead alone until it is acted on
        if not lead:  # the watcher took the lead back
            loop.remove_reader(self.in_fd)
            return
        starting: list[_Request] = []
        try:
            more = self._process(self._read_into(), starting)
        finally:
            with lock:
                self._loop_in_read = False
        if not more:
            self._loop_give_lead(None)
            return
        if not starting:
            return
        if not all(req.is_async for req in starting):
            sync: list[_Request] = []
            async_reqs: list[_Request] = []
            for req in starting:
                (async_reqs if req.is_async else sync).append(req)
            self._loop_give_lead(sync)
            if not async_reqs:
                return
            starting = async_reqs
        self._inline_runs += 1  # activity: the watcher keeps ticking
        if self._watcher_asleep:
            with self._watch_lock:
                self._watch_cond.notify()
        self._start_async(starting)

    def _loop_give_lead(self, batch: list[_Request] | None) -> None:
        """Loop thread: stops reading; a worker thread takes the lead (after running ``batch``)."""
        assert self._loop is not None
        with self._watch_lock:
            lead = self._loop_lead
            self._loop_lead = False
        self._loop.remove_reader(self.in_fd)
        _set_blocking(self.in_fd)  # uvloop's add_reader made it non-blocking
        if batch is None:
            return
        if lead:
            self._workers.submit(_Lead(batch))
        else:  # the watcher took the lead back meanwhile: a thread reads already
            for req in batch:
                self._workers.submit(req)

    def _read_into(self) -> memoryview | bytes:
        """Lead holder: one read of the protocol input into the reused read buffer (empty at the end).

        A fresh ``os.read(fd, 256 KiB)`` allocates its result with ``mmap`` (glibc serves
        allocations that large that way), then shrinks and unmaps it: three system calls, a
        page fault and a TLB shootdown across the process's threads per read. Reading into one
        buffer allocated once avoids all of that. The returned view is valid until the next
        read; :meth:`protocol.FrameReader.feed` copies what it keeps, and only the thread
        holding the lead reads, so one buffer serves every lead holder in turn.
        """
        try:
            while True:
                try:
                    if self._read_buf is None:
                        return os.read(self.in_fd, _READ_SIZE)
                    return self._read_buf[: os.readv(self.in_fd, self._read_bufs)]
                except BlockingIOError:  # uvloop made the fd non-blocking while the loop read it
                    select.select([self.in_fd], [], [])
        except OSError as exc:
            _log(f"reading the protocol input failed ({exc}); treating it as end of input")
            return b""

    def _run_inline(self, reqs: list[_Request]) -> bool:
        """Runs the sync requests one read started, in order, on the thread holding the lead.

        Reading stops meanwhile, so no other thread is woken at all: one context switch per
        call when calls come one at a time, and a batch of short calls (many in flight) runs
        back to back with its responses written together, in one write, at the end. The
        watcher (:meth:`_watch`) guards against long handlers: once one has run for
        ``_INLINE_TAKEOVER`` seconds, it passes the lead to another thread and hands the
        requests of the batch not started yet to threads of their own.

        Returns True if this thread still holds the lead afterwards, False if the watcher
        passed it on meanwhile.
        """
        lock = self._watch_lock  # the lock under _watch_cond (cheaper than the Condition's methods)
        pending = self._inline_pending
        monotonic = time.monotonic
        run = self._run_sync
        hold = len(reqs) > 1
        if hold:  # final responses are queued unclaimed until the batch ends (see _emit)
            self._batch_holder = threading.get_ident()
        with lock:
            pending.extend(reqs)
            steals = self._steals
        try:
            while True:
                with lock:
                    if self._steals != steals:  # the watcher passed the lead on
                        return False
                    if not pending:
                        self._inline_since = None
                        return True
                    req = pending.popleft()
                    self._inline_since = since = monotonic()
                    self._inline_runs += 1
                    if self._watcher_asleep:
                        self._watch_cond.notify()
                run(req)
                req.info.slow = monotonic() - since >= _INLINE_TAKEOVER
        finally:
            if hold:
                self._batch_holder = None
                self._out.kick()

    def _watch_armed(self) -> bool:
        """Whether input may go unread: the lead holder runs a handler, or the loop leads with work."""
        return self._inline_since is not None or (self._loop_lead and bool(self._requests))

    def _watch(self) -> None:
        """Watcher thread: takes the lead away from a lead holder that stopped reading for long.

        While the lead holder runs handlers itself, nobody reads input; this thread checks
        every ``_WATCH_TICK`` seconds and, once a handler has run for ``_INLINE_TAKEOVER``
        seconds, hands reading to another thread and the rest of the batch to threads of their
        own, so pings, cancels and further requests are read within about ``_WATCH_TICK +
        _INLINE_TAKEOVER`` of arriving. When the event loop holds the lead and input has been
        waiting for two ticks without the loop reading it (a handler blocks the loop), a
        worker thread takes the lead back. It sleeps without a time-out after a tick that saw
        nothing to guard, until the next inline run or async request wakes it.
        """
        cond = self._watch_cond
        pending = self._inline_pending
        poller = self._in_poll
        seen = -1
        loop_reads = -1
        waiting = False  # the loop held the lead and input waited unread at the last tick
        while True:
            with cond:
                if not self._watch_armed() and self._inline_runs == seen:
                    self._watcher_asleep = True
                    cond.wait_for(self._watch_armed)
                    self._watcher_asleep = False
                seen = self._inline_runs
                cond.wait(_WATCH_TICK)
                since = self._inline_since
                steal = since is not None and time.monotonic() - since >= _INLINE_TAKEOVER
                if steal:
                    self._inline_since = None
                    self._steals += 1
                    rest = list(pending)
                    pending.clear()
                reclaim = False
                if self._loop_lead and poller is not None and not self._loop_in_read:
                    unread = self._loop_reads == loop_reads and _readable(poller)
                    reclaim = unread and waiting
                    waiting = unread and not reclaim
                    loop_reads = self._loop_reads
                    if reclaim:
                        self._loop_lead = False  # the loop's next _loop_read stops reading
                else:
                    waiting = False
            if reclaim:
                _log("the event loop is blocked and input is waiting; a thread takes over reading")
                self._workers.submit(_LEAD)
            if steal:
                self._workers.submit(_LEAD)
                for req in rest:
                    self._workers.submit(req)
                self._out.kick()  # responses the batch finished so far

    def _start_batch(self, starting: list[_Request]) -> list[_Request]:
        """Starts requests that took slots: async ones on the loop (one hop for all), sync ones of
        handlers that ran long last time on threads of their own. Returns the other sync ones,
        for the caller to run itself."""
        mine: list[_Request] = []
        async_reqs: list[_Request] = []
        for req in starting:
            if req.is_async:
                async_reqs.append(req)
            elif req.info.slow:
                self._workers.submit(req)
            else:
                mine.append(req)
        if async_reqs:
            self._post(self._start_async, async_reqs)
        return mine

    @staticmethod
    def _watchdog(seconds: float, code: int, *, kill_group: bool = False) -> None:
        """Guarantees the process exits even if the event loop is blocked by a misbehaving handler."""

        def fire() -> None:
            _log(f"event loop did not stop within {seconds:g}s; forcing exit {code}")
            if kill_group:
                _kill_own_group()
            os._exit(code)

        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.start()

    def _output_failed(self, exc: OSError) -> None:
        """The thread whose write failed: the host stopped reading our output."""
        _log(f"writing to the host failed ({exc}); exiting")
        self._watchdog(_WATCHDOG_SLACK, EXIT_APP_ERROR)
        self._request_stop(_Stop.OUTPUT_CLOSED)

    def _on_message(self, msg: protocol.Message, received: float, starting: list[_Request]) -> bool:
        """Acts on one message; requests that take a slot go to ``starting``.

        Returns False after a protocol violation (reading must stop).
        """
        kind = msg["type"]
        if kind == "request":
            return self._on_request(msg, received, starting)
        if kind == "ping":
            self._out.send(protocol.encode(protocol.pong_message(msg["id"])))
        elif kind == "cancel":
            self._on_cancel(msg["id"])
        elif kind == "session_close":
            self._sessions.pop(msg["session"], None)
        elif kind == "shutdown":
            self._request_stop(_Stop.SHUTDOWN)
        else:
            _log(
                f"protocol violation from the host: {kind!r} is a worker -> host message; exiting with code 2"
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

    def _on_request(self, msg: protocol.Message, received: float, starting: list[_Request]) -> bool:
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
                info = self._methods[method] = _Method(handler_)
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

    def _cancel_task(self, req: _Request) -> None:
        """Loop thread: cancels a running async handler (one not started yet sees it is cancelled)."""
        task = req.task
        if task is not None and req.started and not task.done():
            task.cancel()

    # ------------------------------------------------------------------ execution

    def _start(self, req: _Request) -> None:
        """Runs a request that just took a slot: sync ones on a worker thread, async ones on the loop."""
        if req.is_async:
            self._post(self._start_async, [req])
        else:
            self._workers.submit(req)

    def _start_async(self, reqs: list[_Request]) -> None:
        """Loop thread: starts async requests as tasks.

        On Python 3.12+ each task's first step runs right here (an eager start: a handler that
        does not wait for anything is done without another turn of the loop); elsewhere the
        first steps run in the loop's next iteration.
        """
        loop = self._loop
        assert loop is not None
        many = len(reqs) > 1
        if many:
            # Hold the output of the tasks' first steps and write it all at once (one writev)
            # right after them. Held frames are queued without claiming the writer role, so a
            # task that blocks the loop holds back no other thread's output (pongs, sync
            # replies), and those threads write held frames too.
            self._hold_output = True
        for req in reqs:
            coro = self._run_async(req)
            req.task = _eager_task(loop, coro) if _EAGER else loop.create_task(coro)
        if many:
            if _EAGER:
                self._release_output()
            else:
                loop.call_soon(self._release_output)  # after the first steps, in the next iteration

    def _release_output(self) -> None:
        """Loop thread: writes what the loop queued while holding output."""
        self._hold_output = False
        if self._held_frames:
            self._held_frames = False
            self._out.kick()

    def _finish(self, req: _Request, frame: bytes) -> None:
        """Any thread: frees the request's slot, sends its one response, and starts queued requests.

        The request leaves the table before its response goes out, so the host may reuse the
        id as soon as it sees the response.
        """
        with self._lock:
            if req.state is _DONE:
                starting: list[_Request] = []
            else:
                if req.state is _RUNNING:
                    self._running -= 1
                req.state = _DONE
                del self._requests[req.id]
                starting = self._take_startable() if self._queue else _NONE_STARTING
                if self._draining and not self._requests:
                    assert self._idle_event is not None
                    self._post(self._idle_event.set)
        self._emit(req, frame, final=True)
        for next_req in starting:
            self._start(next_req)

    def _take_startable(self) -> list[_Request]:
        """Pops queued requests, in arrival order, while slots are free (``_lock`` held)."""
        starting: list[_Request] = []
        queue_ = self._queue
        while self._start_more and queue_ and self._running < self._max_concurrency:
            req = queue_.popleft()
            req.state = _RUNNING
            self._running += 1
            starting.append(req)
        return starting

    def _emit(self, req: _Request, frame: bytes, *, final: bool) -> bool:
        """Sends a chunk or the final response of ``req``; nothing goes out after the final one.

        Held back (queued unclaimed, written with what follows) while the loop starts a batch
        of tasks (see :meth:`_start_async`), and the final responses of a batch of sync
        requests run by the lead holder (see :meth:`_run_inline`).
        """
        out = self._out
        held = loop_held = False
        if self._hold_output or self._batch_holder is not None:
            me = threading.get_ident()
            loop_held = self._hold_output and me == self._loop_thread
            held = loop_held or (final and me == self._batch_holder)
        claimed: bytes | bool = False
        with out.lock:
            if req.responded:
                return False
            if final:
                req.responded = True
            if held:  # written later by the holder, unless another thread writes first
                out.queue_unclaimed_locked(frame)
            else:
                claimed = out.queue_locked(frame)
        if loop_held:
            self._held_frames = True  # for _release_output to kick
        elif claimed:
            out.write_queued(claimed)
        return True

    def _run_pooled(self, req: _Request) -> None:
        """Pool thread: runs a sync request handed to it (not by the lead holder itself)."""
        since = time.monotonic()
        self._run_sync(req)
        req.info.slow = time.monotonic() - since >= _INLINE_TAKEOVER

    def _run_sync(self, req: _Request) -> None:
        """Pool thread: runs a sync handler or sync generator, then sends its response."""
        try:
            frame = self._call_sync(req)
        except BaseException as exc:  # pragma: no cover - _call_sync catches everything
            frame = self._error_frame(req, exc)
        self._finish(req, frame)

    def _call_sync(self, req: _Request) -> bytes:
        """Pool thread: runs a sync handler or sync generator; returns the encoded response frame."""
        if req.cancelled:  # cancelled while it waited in a batch (see _run_inline)
            return self._cancelled_frame(req)
        try:
            info = req.info
            result = info.call(req.params) if info.call is not None else req.handler.call(req.params, req.ctx)
            if type(result) in _PLAIN_TYPES:
                pass
            elif inspect.isgenerator(result):
                try:
                    for item in result:
                        if req.is_cancelled():
                            break
                        if not self._emit(req, self._chunk_frame(req, item), final=False):
                            break
                        self._out.wait_below(_STREAM_BACKPRESSURE_BYTES, req.is_cancelled)
                finally:
                    result.close()
                result = None
            elif inspect.isawaitable(result):  # e.g. a sync wrapper returning a coroutine
                assert self._loop is not None
                result = asyncio.run_coroutine_threadsafe(_await(result), self._loop).result()
            if req.cancelled or (req.ctx is not None and req.is_cancelled()):
                return self._cancelled_frame(req)
            return self._ok_frame(req, result)
        except _EncodeFailure as exc:
            return self._error_frame_plain(req.id, "EncodeError", str(exc))
        except BaseException as exc:
            if req.is_cancelled():
                return self._cancelled_frame(req)
            return self._error_frame(req, exc)

    async def _run_async(self, req: _Request) -> None:
        """Loop task: runs an async handler or async generator, then sends its response."""
        req.started = True
        try:
            if req.is_cancelled():  # cancelled between taking its slot and starting
                frame = self._cancelled_frame(req)
            elif req.info.is_gen:
                agen = req.handler.call(req.params, req.ctx)
                try:
                    async for item in agen:
                        if not self._emit(req, self._chunk_frame(req, item), final=False):
                            break
                        while self._out.pending > _STREAM_BACKPRESSURE_BYTES and not self._out.broken:
                            await asyncio.sleep(0.005)
                finally:
                    await agen.aclose()
                frame = self._ok_frame(req, None)
            else:
                result = await req.handler.call(req.params, req.ctx)
                frame = self._ok_frame(req, result)
            if req.is_cancelled():
                frame = self._cancelled_frame(req)
        except asyncio.CancelledError:
            frame = self._cancelled_frame(req)
        except _EncodeFailure as exc:
            frame = self._error_frame_plain(req.id, "EncodeError", str(exc))
        except BaseException as exc:  # SystemExit/KeyboardInterrupt in a handler are errors too
            frame = self._cancelled_frame(req) if req.is_cancelled() else self._error_frame(req, exc)
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
    under 1 KiB (or a quarter of ``max_frame``) for the text; the head of ``message`` and the tail of ``traceback`` (where
    the exception is) share what is left, the message first.
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


def _set_blocking(fd: int) -> None:
    try:
        if not os.get_blocking(fd):
            os.set_blocking(fd, True)
    except OSError:
        pass


def _readable(poller: Any) -> bool:
    """Whether input is waiting on the fd ``poller`` watches (or it reports an error: so will a read)."""
    try:
        return bool(poller.poll(0))
    except OSError:
        return False


if sys.version_info >= (3, 12):

    def _eager_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[None]:
        """A task whose first step runs now, in the caller (Python 3.12+)."""
        return asyncio.Task(coro, loop=loop, eager_start=True)

else:

    def _eager_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[None]:
        return loop.create_task(coro)


async def _await(awaitable: Any) -> Any:
    return await awaitable


# --------------------------------------------------------------------------- process group


def _group_members(pgid: int) -> list[tuple[int, int]] | None:
    """``(pid, ppid)`` of the live (not zombie) processes in group ``pgid``; None without ``/proc``."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    members: list[tuple[int, int]] = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat_line = f.read()
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            fields = stat_line[stat_line.rindex(b")") + 2 :].split()
            state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or unreadable
        if pgrp == pgid and state not in (b"Z", b"X"):
            members.append((int(name), ppid))
    return members


def _kill_own_group() -> int:
    """SIGKILLs what is left of this process's group: children and grandchildren handlers started.

    Only when this process leads its group (as every worker portpool launches does); a
    group it does not lead is never touched. Spared: this process, and processes whose
    parent is the one that started this process (siblings, e.g. the rest of a shell
    pipeline; a live host that adopted orphans kills the group itself). Linux (``/proc``)
    only; elsewhere a no-op. Returns how many processes were signalled.
    """
    pid = os.getpid()
    try:
        if os.getpgid(0) != pid:
            return 0
    except OSError:
        return 0
    killed = 0
    for _ in range(_GROUP_KILL_ROUNDS):  # again, for processes forked while we looked
        members = _group_members(pid)
        if members is None:
            return killed
        targets = [m for m, ppid in members if m != pid and ppid != _PARENT_AT_START]
        if not targets:
            break
        for target in targets:
            if _kill_member(target, pid):
                killed += 1
        time.sleep(0.005)
    return killed


def _live_pgrp(pid: int) -> int | None:
    """The process group of ``pid`` now, or None if it is gone, a zombie or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
        fields = stat_line[stat_line.rindex(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[2])
    except (OSError, ValueError, IndexError):
        return None


def _kill_member(target: int, pgid: int) -> bool:
    """SIGKILLs ``target`` if it is still a live member of group ``pgid``; True if signalled.

    A member listed a moment ago may have exited and been reaped since, and its pid given to
    an unrelated process. So the membership is checked again after opening a pidfd, which
    names one process whatever happens to its pid, and the signal goes through the pidfd:
    check and signal concern the same process. Without pidfds (Linux < 5.3, Python < 3.9)
    the check is repeated just before ``kill``, which narrows the window.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    send_signal = getattr(signal, "pidfd_send_signal", None)
    if pidfd_open is None or send_signal is None:
        if _live_pgrp(target) != pgid:
            return False
        try:
            os.kill(target, signal.SIGKILL)
            return True
        except OSError:
            return False
    try:
        pidfd = pidfd_open(target)
    except OSError:
        return False  # gone
    try:
        if _live_pgrp(target) != pgid:
            return False
        send_signal(pidfd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


# --------------------------------------------------------------------------- entry points


def _run_exitfuncs() -> None:
    run: Callable[[], None] | None = getattr(atexit, "_run_exitfuncs", None)
    if run is not None:
        try:
            run()
        except BaseException:
            pass


def _exit(code: int, *, run_atexit: bool = False, kill_group: bool = False) -> NoReturn:
    """Leaves the process without waiting for stray threads (a stuck handler must not block exit).

    ``kill_group``: last of all, kill what is left of the process group (see :func:`_kill_own_group`).
    """
    if run_atexit:
        Runtime._watchdog(_ATEXIT_TIMEOUT, code, kill_group=kill_group)
        _run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if kill_group:
        _kill_own_group()
    os._exit(code)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop with ``PORTPOOL_UVLOOP=1`` (when uvloop is installed), else asyncio's.

    Opt-in: measured here, uvloop saved no CPU per async call and woke the watcher thread
    about once per call (4 context switches per call instead of 1).
    """
    if os.environ.get(ENV_UVLOOP, "").strip() == "1":
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            pass
        else:
            new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return new_loop()
    return asyncio.new_event_loop()


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
    loop = _new_event_loop()
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
    # On end of input the host is gone or done with us: nothing this worker started may outlive it.
    _exit(code, run_atexit=code == EXIT_OK, kill_group=code == EXIT_OK and runtime.stopped_on_eof)


USAGE = """\
usage: python -m portpool APP

Serves a portpool App over stdin/stdout (4-byte length-prefixed MessagePack frames).
APP is a path to a .py file (its module-level App instance is used, e.g. `app`),
a module name, or module:attr / file.py:attr naming the App.

Environment: PORTPOOL_MAX_FRAME (bytes, default 67108864),
PORTPOOL_SHUTDOWN_GRACE (seconds, default 5), PORTPOOL_UVLOOP=1 (uvloop's
event loop, if installed).
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
