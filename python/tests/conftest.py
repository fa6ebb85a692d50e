"""Test client: spawns ``python -m portpool APP`` as a real subprocess and talks frames over real pipes.

Every read has a timeout, so no test can hang on a silent worker.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import queue
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from portpool import protocol

HERE = pathlib.Path(__file__).parent
APPS = HERE / "apps"
SRC = HERE.parent / "src"


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "0"
    env.pop("PORTPOOL_MAX_FRAME", None)
    env.pop("PORTPOOL_SHUTDOWN_GRACE", None)
    if extra:
        env.update(extra)
    return env


class StderrCapture:
    """A child's stderr, read continuously on a thread of its own (a full pipe would block it)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self._fd = proc.stderr.fileno()
        self._data = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:  # the test closed the pipe (e.g. the Popen was cleaned up) first
                return
            if not data:
                return
            with self._lock:
                self._data += data

    @property
    def text(self) -> str:
        """Everything read so far, decoded leniently."""
        with self._lock:
            return self._data.decode("utf-8", "replace")


class Calls:
    """Request/response helpers over a peer's ``send`` and ``recv`` (a worker's pipes, a socket)."""

    _ids: Iterator[int]
    call_timeout = 5.0

    def send(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        raise NotImplementedError

    def request(self, method: str, params: Any = None, **kw: Any) -> int:
        id_ = kw.pop("id", None) or next(self._ids)
        self.send(dict(protocol.request_message(id_, method, params, **kw)))
        return id_

    def call(
        self, method: str, params: Any = None, timeout: float | None = None, **kw: Any
    ) -> dict[str, Any]:
        """Sends one request and returns its response (fails on any other frame in between)."""
        id_ = self.request(method, params, **kw)
        msg = self.recv(self.call_timeout if timeout is None else timeout)
        assert msg["type"] == "response" and msg["id"] == id_, msg
        return msg

    def result(self, method: str, params: Any = None, **kw: Any) -> Any:
        msg = self.call(method, params, **kw)
        assert "result" in msg, msg
        return msg["result"]


class Worker(Calls):
    """One worker process and a frame-level client for it."""

    def __init__(
        self,
        app: str | pathlib.Path,
        *,
        env: dict[str, str] | None = None,
        hello: bool = True,
        max_frame: int = protocol.DEFAULT_MAX_FRAME,
        new_session: bool = False,
    ):
        """``max_frame``: the client's own limit (a larger frame from the worker fails ``recv``, as
        the Rust host kills such a worker); ``new_session``: the worker leads its own process group."""
        self.max_frame = max_frame
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "portpool", str(app)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=worker_env(env),
            cwd=str(HERE),
            start_new_session=new_session,
        )
        self._frames: queue.Queue[Any] = queue.Queue()
        self._stderr = StderrCapture(self.proc)
        self.raw_stdout = bytearray()
        self._ids = itertools.count(1)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.hello: dict[str, Any] | None = self.recv() if hello else None

    # -- background readers

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        reader = protocol.FrameReader(self.max_frame)
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                self._frames.put(EOFError("worker stdout closed"))
                return
            self.raw_stdout += data
            try:
                for body in reader.feed(data):
                    self._frames.put(protocol.unpack(body))
            except protocol.ProtocolError as exc:  # the worker corrupted its own framing
                self._frames.put(exc)
                return

    @property
    def stderr(self) -> str:
        return self._stderr.text

    def wait_stderr(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.stderr and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.stderr

    # -- frames

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(protocol.encode(message))

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        try:
            item = self._frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no frame within {timeout}s; stderr:\n{self.stderr}") from None
        if isinstance(item, BaseException):
            raise AssertionError(f"no frame: {item!r}; stderr:\n{self.stderr}")
        return item  # type: ignore[no-any-return]

    def recv_nowait(self) -> dict[str, Any] | None:
        """The next frame if one has arrived already, else None."""
        try:
            item = self._frames.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise AssertionError(f"no frame: {item!r}; stderr:\n{self.stderr}")
        return item  # type: ignore[no-any-return]

    def collect(self, ids: set[int], timeout: float = 5.0) -> dict[int, list[dict[str, Any]]]:
        """Reads frames until every id in ``ids`` got its response; returns all frames by id."""
        out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        pending = set(ids)
        deadline = time.monotonic() + timeout
        while pending:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            out.setdefault(msg["id"], []).append(msg)
            if msg["type"] == "response":
                pending.discard(msg["id"])
        return out

    # -- process

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def wait(self, timeout: float = 5.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit within {timeout}s; stderr:\n{self.stderr}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


@pytest.fixture
def spawn() -> Iterator[Callable[..., Worker]]:
    """Factory: ``spawn(app_path, env=..., hello=True)``; every worker is killed at teardown."""
    workers: list[Worker] = []

    def make(app: str | pathlib.Path = APPS / "basic.py", **kw: Any) -> Worker:
        w = Worker(app, **kw)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.kill()


@pytest.fixture
def worker(spawn: Callable[..., Worker]) -> Worker:
    """A worker serving tests/apps/basic.py (max_concurrency 4)."""
    return spawn()


@pytest.fixture
def write_app(tmp_path: pathlib.Path) -> Callable[[str, str], pathlib.Path]:
    def write(source: str, name: str = "app.py") -> pathlib.Path:
        path = tmp_path / name
        path.write_text(source)
        return path

    return write


def frame_header(length: int) -> bytes:
    return struct.pack(">I", length)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """TLS test certificates for the --listen tests (skipped where there is no openssl tool)."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command-line tool is needed to make test certificates")
    from listen_helpers import make_tls_files

    return make_tls_files(tmp_path_factory.mktemp("tls"))
