"""The worker runtime proper: :class:`Runtime` serves one :class:`App` over a pair of fds.

The modules, by concern (all private; :mod:`portpool._cli` is ``python -m portpool``)::

    _cli       entry points: redirect stdio, load the app, run the loop, exit
    _stdio     the protocol moved off fds 0 and 1; stderr diagnostics; settings from the env
    _loader    finding the App that APP names
    _runtime   this module: the request table and slots, starting and finishing requests
    _leads     reading the input: the lead, the loop's turn at it, the watcher   (mixin)
    _dispatch  what each message read does: requests, ping, cancel, session_close (mixin)
    _frames    encoding responses; error responses that always fit               (mixin)
    _threads   the handler threads and their jobs
    _state     the records the threads share: _Request, _Method, stop reasons
    _output    the protocol output and its flusher thread
    _exit      exit codes, watchdog timers, the process-group kill, the exit itself

Threads
-------

::

                 in_fd (frames from the host)
                   |
                   v  one read of up to 256 KiB, split into frames, each acted on at once
      +--------------- the lead: one holder at a time ---------------+
      | a portpool-handler_N thread       or    the main thread       |
      |   _lead: read, _process,                  (asyncio loop)      |
      |   run the sync requests of the            _loop_read: read,   |
      |   read itself (_run_inline)               start async tasks   |
      +------------^--------------------------------------^----------+
                   | takes the lead away after ~1 ms      | takes it back when input
                   | of one inline handler                | waits and the loop is blocked
              portpool-watcher (ticks every 2 ms while armed, else sleeps)

      portpool-handler_M   sync handlers of their own (slow ones, the rest of a stolen batch)
      main thread          the asyncio loop: async handlers as tasks; shutdown (grace, cancel)
      portpool-writer      only after a short write: waits until the host reads, writes the rest
      watchdog timers      on end of input, a protocol error, a broken output, atexit: os._exit

    every thread with a frame to send --(_Output: whole frames, one writev, under its lock)--> out_fd

* **the lead** (:class:`~portpool._leads._Leads`): one thread at a time reads the protocol
  input and acts on each message at once (:class:`~portpool._dispatch._Dispatch`): it
  answers ``ping``, applies ``cancel`` and ``session_close``, and records each ``request``,
  which takes one of ``max_concurrency`` slots or waits in arrival order. The sync requests
  of one read run on the thread that read them, one after the other, with no thread woken
  (:meth:`~portpool._leads._Leads._run_inline`; each response goes out as its call ends,
  so the host can send the next request while the rest of the batch runs). A read that
  starts only async requests passes the lead to the event loop, which then reads the
  input itself (``add_reader``, :meth:`~portpool._leads._Leads._loop_read`) until a sync
  request comes, which it hands back to a handler thread with the lead.
  With ``PORTPOOL_SPIN_US`` set, a handler thread holding the lead polls the input for
  that long before each blocking read (:meth:`~portpool._leads._Leads._read_spinning`).
* **handler threads** (``portpool-handler_N``, :class:`~portpool._threads._Workers`): made
  on demand, reused, at most ``max_concurrency + 1``; each job is either the lead or one
  sync request to run to its end (a handler whose last run was long gets a thread of its
  own at once).
* **the watcher** (``portpool-watcher``, :meth:`~portpool._leads._Leads._watch`): while a
  lead holder runs a handler, nobody reads; once one has run for ``_INLINE_TAKEOVER``
  (1 ms) the watcher gives the lead to another handler thread and the rest of the batch to
  threads of their own, so pings, cancels and further requests are still read within a few
  milliseconds. While the loop holds the lead with requests in flight, it checks that the
  loop still reads: input waiting unread for two ticks means a handler blocks the loop,
  and a handler thread takes the lead back.
* **the main thread** runs the asyncio event loop (:meth:`Runtime.run`): async handlers
  run there as tasks (eagerly on Python 3.12+) and send their own responses; it waits for
  a stop, then drains (grace period, then cancelling stragglers). An app with no async
  handlers gets no loop (:meth:`Runtime.run_without_loop`): the main thread waits and
  drains on ``threading.Event`` waits, the lead never goes to a loop, and :mod:`asyncio`
  is never imported (it is most of a worker's start-up CPU); an awaitable a sync handler
  returns then runs on ``portpool-loop``, a loop thread started on first use.
* **output** (:class:`~portpool._output._Output`) has no writer thread in the common case:
  whichever thread has a frame to send writes it, with the frames queued meanwhile, so
  frames never interleave. When the pipe is full, ``portpool-writer`` takes over until the
  host reads again, so neither the lead holder nor the loop ever blocks on output.

Locks: ``Runtime._lock`` guards the request table, the queue and the running count (never
held while running handler code or writing); ``_watch_lock`` (with ``_watch_cond``) the
lead's state (inline runs, the loop's turn, steals); ``_Output.lock`` the output queue and
each request's ``responded`` flag (one final response per request, never anything after
it); ``_Workers._lock`` the thread counts.

The path of one request
-----------------------

A sync ``request`` arriving while the worker is idle (the common case)::

    handler thread holding the lead            (no other thread runs)
      _lead -> _read_into                      os.readv into the reused 256 KiB buffer
            -> _process                        FrameReader.feed; msgpack.unpackb (a plain request
                                               is the message as decoded, else protocol.unpack)
            -> _on_request                     a _Request in the table; a free slot: "starting"
                                               (_lead: one sync request, not slow, runs here without
                                               _start_batch; async ones are posted to the loop)
            -> _run_inline -> _run_sync        the watcher armed meanwhile; the handler, and its
                                               response encoded on the thread's Packer (_call_sync
                                               and _ok_frame only for the rest: ctx, generators,
                                               awaitables, errors, cancels)
                 -> _finish                    slot freed, request out of the table, queued
                                               requests started; _Output.send_final: one write
                                               (_emit when output is held, see there)
      _lead -> _read_into                      blocks until the next frame

Python-level calls per request on this path: _read_into, _process, FrameReader.feed,
_on_request, _Request.__init__, _run_inline, _run_sync, the handler, _finish,
_Output.send_final (ten; the hot ones keep a docstring saying what they fold in).

An async request takes the same path up to :meth:`~portpool._leads._Leads._start_batch`,
which posts it to the loop (:meth:`Runtime._start_async`: a task per request) and, when
the read started only async requests, hands the loop the lead; the task's
:meth:`Runtime._run_async` then encodes and sends the response and calls :meth:`Runtime._finish`.
"""

from __future__ import annotations

import collections
import collections.abc
import os
import select
import sys
import threading
import time
import types
from collections.abc import Callable

from portpool import protocol
from portpool._dispatch import _Dispatch
from portpool._exit import EXIT_APP_ERROR, EXIT_OK, EXIT_PROTOCOL_ERROR, _watchdog
from portpool._frames import _FRAME_HEADER, _U32_MAX, _EncodeFailure
from portpool._leads import _INLINE_TAKEOVER, _Leads
from portpool._output import _can_be_nonblocking, _Output
from portpool._state import (
    _ASYNC_KINDS,
    _CANCEL_SETTLE,
    _DONE,
    _FLUSH_TIMEOUT,
    _NONE_STARTING,
    _PLAIN_TYPES,
    _RUNNING,
    _STREAM_BACKPRESSURE_BYTES,
    _WATCHDOG_SLACK,
    _Method,
    _Request,
    _Stop,
)
from portpool._stdio import _log
from portpool._threads import _LEAD, _Workers
from portpool.app import App
from portpool.protocol import _PACKER_KEEP, _new_packer, _packers

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    import asyncio
    from typing import Any

DEFAULT_SHUTDOWN_GRACE = 5.0

_FRAME_HEADER_PACK = _FRAME_HEADER.pack

# Tasks of async handlers start eagerly (their first step runs at once) where asyncio can.
_EAGER = sys.version_info >= (3, 12)


class Runtime(_Leads, _Dispatch):
    """Serves one :class:`App` over a pair of fds until shutdown, end of input, or a protocol error."""

    def __init__(
        self,
        app: App,
        in_fd: int,
        out_fd: int,
        *,
        max_frame: int = protocol.DEFAULT_MAX_FRAME,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        spin: float = 0.0,
    ) -> None:
        """``spin``: seconds a handler thread polls the input before a blocking read (0: never)."""
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
        self._init_leads(max_frame, spin)
        self._loop: asyncio.AbstractEventLoop | None = None  # None: run_without_loop (or not started)
        self._loop_thread: int | None = None
        # Set on a stop, and (draining) when the last request finishes: asyncio events on the
        # loop, threading events without one (see _notify).
        self._stop_event: asyncio.Event | threading.Event | None = None
        self._idle_event: asyncio.Event | threading.Event | None = None
        self._aux_loop: asyncio.AbstractEventLoop | None = None  # see _loop_for_awaitables
        self._without_loop = False  # run_without_loop: async handlers cannot run (see _on_request)
        self._aux_lock = threading.Lock()
        self._hold_output = False  # loop thread only: see _start_async
        self._held_frames = False  # the loop queued frames unclaimed, for _release_output to kick

    # ------------------------------------------------------------------ main

    @property
    def needs_loop(self) -> bool:
        """Whether the app has ``async def`` handlers (or async generators): they run on an event
        loop, so the main thread runs one (:meth:`run`); otherwise :meth:`run_without_loop`."""
        app = self.app
        return any(
            (h := app.get_handler(name)) is not None and h.kind in _ASYNC_KINDS for name in app.methods
        )

    async def run(self) -> int:
        """Runs until stopped, on the running event loop; returns the process exit code."""
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop_event = stop = asyncio.Event()
        self._idle_event = asyncio.Event()
        self._begin()
        await stop.wait()
        code = self._stopped_early()
        if code is not None:
            return code
        await self._drain()
        return EXIT_OK

    def run_without_loop(self) -> int:
        """:meth:`run` for an app without async handlers (``not needs_loop``): the calling thread
        (the main thread) waits for the stop and drains without an event loop, so a worker that
        needs none never imports :mod:`asyncio` (tens of milliseconds of CPU at every start).

        The same threads, states and steps as :meth:`run`: only the waits are plain
        :class:`threading.Event` waits. A sync handler that returns an awaitable has it run on
        a loop thread started then (see :meth:`_loop_for_awaitables`).
        """
        self._without_loop = True
        self._stop_event = stop = threading.Event()
        self._idle_event = threading.Event()
        self._begin()
        stop.wait()
        code = self._stopped_early()
        if code is not None:
            return code
        self._drain_without_loop()
        return EXIT_OK

    def _begin(self) -> None:
        """Main thread, before waiting for the stop: says hello and starts reading."""
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

    def _stopped_early(self) -> int | None:
        """After the stop: the exit code when there is nothing to drain (an error), else None."""
        reason = self._stop_reason
        if reason is _Stop.PROTOCOL_ERROR:
            return EXIT_PROTOCOL_ERROR
        if reason is _Stop.OUTPUT_CLOSED:
            self._abandon_all("worker output closed")
            return EXIT_APP_ERROR
        return None

    async def _wait_idle(self, timeout: float) -> None:
        import asyncio

        idle = self._idle_event
        assert isinstance(idle, asyncio.Event)
        try:
            await asyncio.wait_for(idle.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _drain(self) -> None:
        """Lets in-flight requests finish within the grace period, then cancels the rest."""
        if self._drain_begin():
            await self._wait_idle(self.shutdown_grace)
        if self._drain_cancel():
            await self._wait_idle(_CANCEL_SETTLE)
            self._abandon_all("the worker is shutting down")

    def _drain_without_loop(self) -> None:
        """:meth:`_drain` without an event loop (see :meth:`run_without_loop`)."""
        idle = self._idle_event
        assert isinstance(idle, threading.Event)
        if self._drain_begin():
            idle.wait(self.shutdown_grace)
        if self._drain_cancel():
            idle.wait(_CANCEL_SETTLE)
            self._abandon_all("the worker is shutting down")

    def _drain_begin(self) -> bool:
        """Draining from now on; whether requests are in flight."""
        with self._lock:
            self._draining = True  # from now on, the last request to finish sets _idle_event
            return bool(self._requests)

    def _drain_cancel(self) -> bool:
        """After the grace period: cancels what is still in flight; False when nothing was."""
        with self._lock:
            if not self._requests:
                return False
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
        return True

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
            self._notify(self._stop_event)

    def _notify(self, event: asyncio.Event | threading.Event) -> None:
        """Any thread: sets ``event`` (on the loop, for an asyncio one)."""
        if self._loop is None:
            event.set()  # a threading.Event (run_without_loop)
        else:
            self._post(event.set)

    def _post(self, callback: Callable[..., None], *args: Any) -> bool:
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(callback, *args)
            return True
        except RuntimeError:  # loop already closed
            return False

    def _output_failed(self, exc: OSError) -> None:
        """The thread whose write failed: the host stopped reading our output."""
        _log(f"writing to the host failed ({exc}); exiting")
        _watchdog(_WATCHDOG_SLACK, EXIT_APP_ERROR)
        self._request_stop(_Stop.OUTPUT_CLOSED)

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
                    self._notify(self._idle_event)
        if self._hold_output:
            self._emit(req, frame, final=True)  # it may be held back
        else:
            self._out.send_final(req, frame)  # what _emit does then, in one call
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
        of tasks (see :meth:`_start_async`).
        """
        out = self._out
        held = self._hold_output and threading.get_ident() == self._loop_thread
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
        if held:
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
        """Pool thread or lead holder: runs a sync handler or sync generator, then sends its response.

        The common case is folded in here, on purpose, since it runs once per sync call: a
        handler of the params alone (``info.call``) returning a plain value, not cancelled,
        is called and its response encoded right here (what :meth:`_call_sync` and
        :meth:`~portpool._frames._Frames._ok_frame` do, without the two calls); anything
        else goes through :meth:`_call_sync`.
        """
        call = req.info.call
        if call is None or req.cancelled:
            try:
                frame = self._call_sync(req)
            except BaseException as exc:  # pragma: no cover - _call_sync catches everything
                frame = self._error_frame(req, exc)
            self._finish(req, frame)
            return
        # As in _call_sync; req.ctx is None here (info.call is set only for handlers without a
        # Context), so req.cancelled is all req.is_cancelled() would look at.
        encoded: bytes | None = None
        try:
            result = call(req.params)
            if type(result) in _PLAIN_TYPES and not req.cancelled:
                try:  # _ok_frame's usual case, on this thread's Packer (see protocol.pack)
                    try:
                        packer = _packers.packer
                    except AttributeError:
                        packer = _packers.packer = _new_packer()
                    body = packer.pack({"type": "response", "id": req.id, "result": result})
                    size = len(body)
                    if size > _PACKER_KEEP:
                        del _packers.packer
                    if size <= self._frame_limit:
                        encoded = _FRAME_HEADER_PACK(size) + body
                except (TypeError, ValueError, OverflowError):
                    pass
                if encoded is None:
                    encoded = self._ok_frame(req, result)  # again, to say why it failed
        except _EncodeFailure as exc:
            encoded = self._error_frame_plain(req.id, "EncodeError", str(exc))
        except BaseException as exc:
            encoded = self._cancelled_frame(req) if req.cancelled else self._error_frame(req, exc)
        else:
            if encoded is None:  # not a plain value, or cancelled meanwhile
                encoded = self._sync_result(req, result)
        self._finish(req, encoded)

    def _call_sync(self, req: _Request) -> bytes:
        """Pool thread: runs a sync handler or sync generator; returns the encoded response frame."""
        if req.cancelled:  # cancelled while it waited in a batch (see _run_inline)
            return self._cancelled_frame(req)
        try:
            info = req.info
            result = info.call(req.params) if info.call is not None else req.handler.call(req.params, req.ctx)
        except BaseException as exc:
            if req.is_cancelled():
                return self._cancelled_frame(req)
            return self._error_frame(req, exc)
        return self._sync_result(req, result)

    def _sync_result(self, req: _Request, result: Any) -> bytes:
        """The response frame for what a sync handler returned: streams a generator's items, waits
        for an awaitable; an exception meanwhile is the handler's error."""
        try:
            if type(result) in _PLAIN_TYPES:
                pass
            elif isinstance(result, types.GeneratorType):
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
            elif isinstance(result, collections.abc.Awaitable):  # e.g. a sync wrapper returning a coroutine
                import asyncio

                loop = self._loop or self._loop_for_awaitables()
                result = asyncio.run_coroutine_threadsafe(_await(result), loop).result()
            if req.cancelled or (req.ctx is not None and req.is_cancelled()):
                return self._cancelled_frame(req)
            return self._ok_frame(req, result)
        except _EncodeFailure as exc:
            return self._error_frame_plain(req.id, "EncodeError", str(exc))
        except BaseException as exc:
            if req.is_cancelled():
                return self._cancelled_frame(req)
            return self._error_frame(req, exc)

    def _loop_for_awaitables(self) -> asyncio.AbstractEventLoop:
        """Any thread, without a main loop (:meth:`run_without_loop`): a loop on a thread of its
        own (``portpool-loop``, started on first use) for awaitables returned by sync handlers."""
        with self._aux_lock:
            if self._aux_loop is None:
                import asyncio

                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="portpool-loop", daemon=True).start()
                self._aux_loop = loop
            return self._aux_loop

    async def _run_async(self, req: _Request) -> None:
        """Loop task: runs an async handler or async generator, then sends its response."""
        import asyncio

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


if sys.version_info >= (3, 12):

    def _eager_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[None]:
        """A task whose first step runs now, in the caller (Python 3.12+)."""
        import asyncio

        return asyncio.Task(coro, loop=loop, eager_start=True)

else:

    def _eager_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[None]:
        return loop.create_task(coro)


async def _await(awaitable: Any) -> Any:
    return await awaitable
