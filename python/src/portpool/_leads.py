"""Reading the input: the lead, passed between handler threads, the event loop and the watcher."""

from __future__ import annotations

import collections
import os
import select
import threading
import time
from collections.abc import Callable

import msgpack

from portpool import protocol
from portpool._exit import EXIT_OK, EXIT_PROTOCOL_ERROR, _watchdog
from portpool._state import _CANCEL_SETTLE, _FLUSH_TIMEOUT, _WATCHDOG_SLACK, _Request, _Stop
from portpool._stdio import _log, _readable, _set_blocking
from portpool._threads import _LEAD, _Lead, _Workers

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    import asyncio
    from typing import Any

    from portpool._output import _Output

_READ_SIZE = 256 * 1024  # bytes per read of the protocol input
# A sync request read while nothing else runs and no more input waits runs on the reading
# thread; if it is still running this long, another thread takes over reading...
_INLINE_TAKEOVER = 0.001
# ...which the watcher thread checks this often while such requests run.
_WATCH_TICK = 0.002


class _Leads:
    """The reading half of :class:`~portpool._runtime.Runtime` (a mixin): see its docstring."""

    # Provided by Runtime:
    in_fd: int
    shutdown_grace: float
    _requests: dict[int, _Request]
    _out: _Output
    _workers: _Workers
    _loop: asyncio.AbstractEventLoop | None

    if TYPE_CHECKING:

        @property
        def stopped_on_eof(self) -> bool: ...
        def _request_stop(self, reason: _Stop) -> None: ...
        def _post(self, callback: Callable[..., None], *args: Any) -> bool: ...
        def _start_async(self, reqs: list[_Request]) -> None: ...
        def _run_sync(self, req: _Request) -> None: ...
        def _on_request(
            self, msg: protocol.RequestMessage, received: float, starting: list[_Request]
        ) -> bool: ...
        def _on_message(self, msg: protocol.Message, received: float, starting: list[_Request]) -> bool: ...
        def _on_invalid_params(self, exc: protocol.InvalidParams) -> bool: ...

    def _init_leads(self, max_frame: int, spin: float) -> None:
        """The reading state (part of ``Runtime.__init__``); ``spin``: see :meth:`_read_spinning`."""
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
        self._watch_lock = threading.Lock()
        self._watch_cond = threading.Condition(self._watch_lock)
        self._inline_since: float | None = None  # when the lead holder began running a handler itself
        self._inline_runs = 0
        self._loop_lead = False  # the event loop holds the lead (see _loop_read)
        self._loop_in_read = False  # ...and is acting on what it read (the watcher must wait)
        self._loop_reads = 0  # reads by the loop so far (the watcher sees whether it still reads)
        self._loop_grants = 0  # how often a thread passed the lead to the loop
        self._loop_reader_grant = 0  # ...as of the loop registering its reader (see _loop_read)
        self._steals = 0  # how often the watcher passed the lead on while an inline run went on
        self._watcher_asleep = False
        # Low-latency mode: a poll object of the lead holders' own (the watcher polls _in_poll,
        # and one poll object cannot be polled from two threads at once).
        self._spin = spin
        self._spin_poll: Any = None
        if spin > 0 and hasattr(select, "poll"):
            try:
                self._spin_poll = select.poll()
                self._spin_poll.register(self.in_fd, select.POLLIN)
            except (OSError, ValueError):  # not an fd poll accepts: no spinning
                self._spin_poll = None

    def _lead(self, batch: list[_Request] | None = None) -> None:
        """Worker thread holding the lead: reads input and acts on each message at once.

        Sync requests a read starts run right here, one after the other (see
        :meth:`_run_inline`), while the watcher guards against long ones; ``batch``: sync
        requests the loop read, to run first. When a read starts only async requests, the
        lead goes to the event loop (see :meth:`_loop_read`). Returns once the lead went to
        another thread or the loop, or input ended (end of input, error, protocol violation).
        """
        process = self._process
        read_into = self._read_into if self._spin_poll is None else self._read_spinning
        starting: list[_Request] = []
        if batch and not self._run_inline(batch):
            return
        while True:
            if not process(read_into(), starting):
                return
            if starting:
                if len(starting) == 1 and not starting[0].is_async and not starting[0].info.slow:
                    mine = starting  # what _start_batch returns for one sync request, without the call
                else:
                    mine = self._start_batch(starting)
                if mine:
                    starting = []
                    if not self._run_inline(mine):
                        return  # the watcher passed the lead on while they ran
                    continue
                only_async = all(req.is_async for req in starting)
                starting = []
                if only_async and self._in_poll is not None:
                    self._grant_loop_lead()
                    return

    def _grant_loop_lead(self) -> None:
        """Lead holder: passes the lead to the event loop (which then reads, see :meth:`_loop_read`)."""
        with self._watch_lock:
            self._loop_lead = True  # from now on; the watcher may take it back
            self._loop_grants += 1
            if self._watcher_asleep:
                self._watch_cond.notify()  # to guard the loop while the requests run
        self._post(self._loop_take_lead)

    def _process(self, data: memoryview | bytes, starting: list[_Request]) -> bool:
        """Lead holder: acts on the messages of one read; requests that take a slot go to ``starting``.

        Returns False when reading must stop: end of input (empty ``data``), or a protocol violation.
        Decoding a plain request is folded in (it runs once per call): see the comment in the loop.
        """
        reader = self._input
        try:
            if not data:
                reader.eof()
                self._request_stop(_Stop.EOF)
                _watchdog(
                    self.shutdown_grace + _CANCEL_SETTLE + _FLUSH_TIMEOUT + _WATCHDOG_SLACK,
                    EXIT_OK,
                    kill_group=self.stopped_on_eof,
                )
                return False
            received = time.monotonic()
            unpack = protocol.unpack
            unpackb = msgpack.unpackb
            u64_max = protocol._U64_MAX
            for body in reader.feed(data):
                try:
                    # protocol.unpack's fast path, folded in (once per request): a plain request,
                    # exactly type, id, method and params, is the message as decoded; anything
                    # else (or a body that does not decode) goes through protocol.unpack.
                    raw: Any
                    try:
                        raw = unpackb(body, raw=False, strict_map_key=False)
                    except Exception:
                        raw = None
                    if (
                        type(raw) is dict
                        and len(raw) == 4
                        and raw.get("type") == "request"
                        and type(raw.get("id")) is int
                        and 0 <= raw["id"] <= u64_max
                        and type(raw.get("method")) is str
                        and "params" in raw
                    ):
                        msg: protocol.Message = raw  # type: ignore[assignment]  # checked above
                    else:
                        msg = unpack(body)
                except protocol.InvalidParams as exc:  # fails only this call
                    ok = self._on_invalid_params(exc)
                else:
                    if msg["type"] == "request":
                        ok = self._on_request(msg, received, starting)
                    else:
                        ok = self._on_message(msg, received, starting)
                if not ok:
                    _watchdog(_WATCHDOG_SLACK, EXIT_PROTOCOL_ERROR)
                    self._request_stop(_Stop.PROTOCOL_ERROR)
                    return False
            return True
        except protocol.ProtocolError as exc:
            _log(f"protocol violation from the host: {type(exc).__name__}: {exc}; exiting with code 2")
        except BaseException as exc:  # pragma: no cover - a bug in the reader itself
            _log(f"reader failed: {exc!r}; exiting with code 2")
        _watchdog(_WATCHDOG_SLACK, EXIT_PROTOCOL_ERROR)
        self._request_stop(_Stop.PROTOCOL_ERROR)
        return False

    def _loop_take_lead(self) -> None:
        """Loop thread: starts reading input itself, unless the watcher took the lead back meanwhile."""
        with self._watch_lock:
            if not self._loop_lead:
                return
            self._loop_reader_grant = self._loop_grants
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
                if self._loop_reader_grant != self._loop_grants:
                    # Readiness the loop saw under an earlier grant: since then the watcher took
                    # the lead back, a thread read that input and granted the lead again. Nothing
                    # may be waiting now (a read would block the loop); the _loop_take_lead of the
                    # new grant follows and registers the reader again.
                    return
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

    def _read_spinning(self) -> memoryview | bytes:
        """Handler thread holding the lead, low-latency mode: :meth:`_read_into` after a spin.

        With ``PORTPOOL_SPIN_US`` set (the host's ``WorkerCommand::spin``), the thread first
        polls the input without blocking, in a loop, for up to that long: a frame arriving
        meanwhile is read without the thread having slept, so no wake-up latency. It costs
        the CPU it spins for, on every read that does not find the next frame waiting.
        """
        poll = self._spin_poll.poll
        monotonic = time.monotonic
        deadline = monotonic() + self._spin
        try:
            while not poll(0) and monotonic() < deadline:
                pass
        except OSError:  # the read reports it
            pass
        return self._read_into()

    def _run_inline(self, reqs: list[_Request]) -> bool:
        """Runs the sync requests one read started, in order, on the thread holding the lead.

        Reading stops meanwhile, so no other thread is woken at all: one context switch per
        call when calls come one at a time, and a batch of short calls (many in flight) runs
        back to back. Each response is written as soon as its call ends, not held for the
        batch: the host turns it into its caller's next request while the rest of the batch
        runs, so the worker finds input waiting instead of sleeping between batches (on a
        2-core machine, 10-14% more calls per second than writing the batch's responses
        together at its end, with 8 and 64 callers). The watcher (:meth:`_watch`) guards
        against long handlers: once one has run for ``_INLINE_TAKEOVER`` seconds, it passes
        the lead to another thread and hands the requests of the batch not started yet to
        threads of their own.

        Returns True if this thread still holds the lead afterwards, False if the watcher
        passed it on meanwhile.
        """
        lock = self._watch_lock  # the lock under _watch_cond (cheaper than the Condition's methods)
        pending = self._inline_pending
        monotonic = time.monotonic
        run = self._run_sync
        steals = -1  # read in the first turn, with the batch queued, under one hold of the lock
        while True:
            with lock:
                if steals < 0:
                    # The batch is queued and its first request starts in one hold of the
                    # lock (a lock round trip less per call). Nothing changes for the
                    # watcher: it steals only while _inline_since is set, which it is not
                    # before this first turn.
                    pending.extend(reqs)
                    steals = self._steals
                elif self._steals != steals:  # the watcher passed the lead on
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
