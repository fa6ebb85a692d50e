"""The handler threads (:class:`_Workers`) and the job that hands one of them the lead."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from portpool._state import _Request


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
