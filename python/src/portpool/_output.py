"""The protocol output (:class:`_Output`): whole frames, never interleaved, never blocking
the reader or the event loop.
"""

from __future__ import annotations

import collections
import itertools
import os
import select
import stat
import threading
import time
from collections.abc import Callable

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    from portpool._state import _Request


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
            if written < len(first) and not self._requeue_rest(first, written):
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

    def _requeue_rest(self, first: bytes, written: int) -> bool:
        """After a short write of ``first`` (not queued): queues what is left of it, first.

        Returns whether the caller goes on writing the queue; False when the output broke
        meanwhile or the flusher thread now owns writing (``_busy`` stays set).
        """
        with self.lock:
            if self.broken:
                return False
            self._frames.appendleft(memoryview(first)[written:] if written else first)
            self._pending += len(first) - written
            if self._nonblocking:
                self._handoff = True  # _busy stays set: the flusher writes the rest
                self._cond.notify_all()
                return False
        return True

    def send_final(self, req: _Request, frame: bytes) -> None:
        """Queues and writes the final response of ``req`` unless it has one already. Any thread.

        What :meth:`~portpool._runtime.Runtime._emit` does with a final response that is not
        held, with :meth:`queue_locked` and :meth:`write_queued` folded in: it runs once per
        call. ``req.responded`` is guarded by ``lock``, so a request gets one final response
        and nothing after it.
        """
        frames = self._frames
        with self.lock:
            if req.responded:
                return
            req.responded = True
            if self.broken:
                return
            if self._busy:  # the thread writing now takes this frame too
                frames.append(frame)
                self._pending += len(frame)
                return
            self._busy = True
            behind = bool(frames)  # frames queued unclaimed go first
            if behind:
                frames.append(frame)
                self._pending += len(frame)
        if behind:
            self.write_queued()
            return
        try:
            written = os.write(self._fd, frame)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._fail(exc)
            return
        if written < len(frame) and not self._requeue_rest(frame, written):
            return
        with self.lock:  # write_queued's first turn: nothing more queued meanwhile (the usual case)
            if not frames or self.broken:
                self._busy = False
                if self._waiters:
                    self._cond.notify_all()
                return
        self.write_queued()

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
