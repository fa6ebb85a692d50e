"""The fork server (``PORTPOOL_FORK_SERVER=1``, docs/fork-server.md) driven the way the Rust host
drives it: a SOCK_SEQPACKET socket as fd 0, fork requests carrying the worker's pipes."""

from __future__ import annotations

import itertools
import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from conftest import APPS, HERE, Calls, StderrCapture, worker_env

from portpool import protocol

pytestmark = pytest.mark.skipif(not hasattr(socket, "recv_fds"), reason="needs socket.recv_fds")


class ForkedWorker(Calls):
    def __init__(self, pid: int, stdin_w: int, stdout_r: int, stderr_r: int) -> None:
        self.pid = pid
        self.stdin_w = stdin_w
        self.stderr_r = stderr_r
        self._ids = itertools.count(1)
        self._frames: queue.Queue[Any] = queue.Queue()
        self._stdout_r = stdout_r
        threading.Thread(target=self._read, daemon=True).start()
        self.hello = self.recv()

    def _read(self) -> None:
        reader = protocol.FrameReader(protocol.DEFAULT_MAX_FRAME)
        while True:
            try:
                data = os.read(self._stdout_r, 65536)
            except OSError:
                data = b""
            if not data:
                self._frames.put(EOFError())
                return
            for body in reader.feed(data):
                self._frames.put(protocol.unpack(body))

    def send(self, message: dict[str, Any]) -> None:
        os.write(self.stdin_w, protocol.encode(message))

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        item = self._frames.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise AssertionError(f"no frame: {item!r}")
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        for fd in (self.stdin_w, self.stderr_r):
            try:
                os.close(fd)
            except OSError:
                pass


class Zygote:
    def __init__(
        self, app: str | pathlib.Path, env: dict[str, str] | None = None, sndbuf: int | None = None
    ) -> None:
        self.host, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if sndbuf is not None:  # the zygote's send buffer: a few packets fill it
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "portpool", str(app)],
            stdin=theirs.fileno(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=worker_env({"PORTPOOL_FORK_SERVER": "1", **(env or {})}),
            cwd=str(HERE),
            start_new_session=True,
        )
        theirs.close()
        self.host.settimeout(10)
        self.stderr = StderrCapture(self.proc)
        self.workers: list[ForkedWorker] = []
        self.exits: dict[int, dict[str, Any]] = {}
        self._req = itertools.count(1)

    def recv(self) -> dict[str, Any]:
        data = self.host.recv(1 << 16)
        if not data:
            raise EOFError(f"fork server closed the socket; stderr:\n{self.stderr.text}")
        message = msgpack.unpackb(data)
        assert isinstance(message, dict)
        return message

    def recv_reply(self) -> dict[str, Any]:
        """The next message that is not an exit report (those are kept in ``exits``)."""
        while True:
            message = self.recv()
            if "exit" in message:
                self.exits[message["exit"]] = message
            else:
                return message

    def wait_exit(self, pid: int) -> dict[str, Any]:
        while pid not in self.exits:
            self.recv_reply_or_exit()
        return self.exits[pid]

    def recv_reply_or_exit(self) -> None:
        message = self.recv()
        assert "exit" in message, message
        self.exits[message["exit"]] = message

    def fork(self, env: dict[str, str] | None = None) -> ForkedWorker:
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        req = next(self._req)
        socket.send_fds(
            self.host,
            [msgpack.packb({"fork": req, "env": env or {}, "limits": []})],
            [stdin_r, stdout_w, stderr_w],
        )
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
        reply = self.recv_reply()
        assert reply.get("forked") == req, reply
        worker = ForkedWorker(reply["pid"], stdin_w, stdout_r, stderr_r)
        self.workers.append(worker)
        return worker

    def kill(self) -> None:
        for worker in self.workers:
            try:
                os.killpg(worker.pid, signal.SIGKILL)
            except OSError:
                pass
            worker.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.host.close()


@pytest.fixture
def zygote() -> Iterator[Callable[..., Zygote]]:
    made: list[Zygote] = []

    def make(app: str | pathlib.Path = APPS / "basic.py", **kw: Any) -> Zygote:
        z = Zygote(app, **kw)
        made.append(z)
        return z

    yield make
    for z in made:
        z.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


def test_forked_workers_serve_in_their_own_groups_and_exits_are_reported(
    zygote: Callable[..., Zygote],
) -> None:
    z = zygote()
    ready = z.recv_reply()
    assert ready == {"ready": z.proc.pid, "refused": None}
    a, b = z.fork(), z.fork({"PORTPOOL_TEST_VALUE": "per-spawn"})
    assert a.hello["pid"] == a.pid and b.hello["pid"] == b.pid
    assert len({a.pid, b.pid, z.proc.pid}) == 3
    assert a.result("echo", "hi") == "hi"
    assert b.result("pid") == b.pid
    assert os.getpgid(a.pid) == a.pid and os.getpgid(b.pid) == b.pid

    a.close()  # end of input: the worker exits 0
    assert z.wait_exit(a.pid) == {"exit": a.pid, "code": 0, "signal": None}
    assert not _alive(a.pid)
    os.kill(b.pid, signal.SIGKILL)
    assert z.wait_exit(b.pid) == {"exit": b.pid, "code": None, "signal": signal.SIGKILL}
    # A zombie until the host says "reap"; then gone for good.
    for pid in (a.pid, b.pid):
        assert os.path.exists(f"/proc/{pid}")
        z.host.send(msgpack.packb({"reap": pid}))
    z.host.send(msgpack.packb({"close": True}))
    assert z.proc.wait(5) == 0, z.stderr.text
    for pid in (a.pid, b.pid):
        assert not os.path.exists(f"/proc/{pid}")


def test_env_sent_with_the_fork_reaches_the_worker(zygote: Callable[..., Zygote], write_app: Any) -> None:
    path = write_app(
        "import os, portpool\napp = portpool.App()\n\n"
        "@app.handler\ndef env(name):\n    return os.environ.get(name)\n"
    )
    z = zygote(path, env={"FROM_COMMAND": "yes"})
    z.recv_reply()
    w = z.fork({"PORTPOOL_TEST_VALUE": "per-spawn"})
    assert w.result("env", "PORTPOOL_TEST_VALUE") == "per-spawn"
    assert w.result("env", "FROM_COMMAND") == "yes"
    assert w.result("env", "PORTPOOL_FORK_SERVER") is None


def test_app_imported_once(zygote: Callable[..., Zygote], write_app: Any, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "imports"
    path = write_app(
        "import os, portpool\n"
        f"open({str(log)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "app = portpool.App()\n\n@app.handler\ndef pid(_):\n    return os.getpid()\n"
    )
    z = zygote(path)
    z.recv_reply()
    workers = [z.fork() for _ in range(3)]
    assert len({w.result("pid") for w in workers}) == 3
    assert log.read_text().split() == [str(z.proc.pid)]


def test_refuses_when_the_app_started_a_thread(zygote: Callable[..., Zygote], write_app: Any) -> None:
    path = write_app(
        "import threading, time, portpool\n"
        "threading.Thread(target=time.sleep, args=(60,), name='app-bg', daemon=True).start()\n"
        "app = portpool.App()\n"
    )
    z = zygote(path)
    ready = z.recv_reply()
    assert ready["ready"] == z.proc.pid
    assert "app-bg" in ready["refused"] and "thread" in ready["refused"], ready
    assert z.proc.wait(5) == 0


def test_end_of_input_kills_every_forked_group(zygote: Callable[..., Zygote]) -> None:
    z = zygote(APPS / "basic.py")
    z.recv_reply()
    w = z.fork()
    assert w.result("echo", 1) == 1
    z.host.shutdown(socket.SHUT_RDWR)  # the host died: its end of the socket is closed
    assert z.proc.wait(5) == 0, z.stderr.text
    assert _wait_gone(w.pid), "a forked worker outlived its fork server's host"


def test_import_failure_exits_with_the_traceback(zygote: Callable[..., Zygote], write_app: Any) -> None:
    path = write_app("raise RuntimeError('no import for you')\n")
    z = zygote(path)
    assert z.proc.wait(10) == 1
    with pytest.raises(EOFError):
        z.recv()
    deadline = time.monotonic() + 5
    while "no import for you" not in z.stderr.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "no import for you" in z.stderr.text


def test_keeps_forking_while_the_host_is_not_reading(zygote: Callable[..., Zygote]) -> None:
    """The zygote never blocks on a write to the host: with its send buffer full (the host busy,
    e.g. its reader blocked writing a ``reap`` the zygote is not reading) it still reads and
    forks; otherwise both sides would wait on each other for ever."""
    z = zygote(sndbuf=4096)
    z.recv_reply()  # ready
    z.host.setblocking(False)
    for req in range(1000, 1030):  # workers that end at once: a "forked" and an "exit" each
        pipes = [os.pipe() for _ in range(3)]
        socket.send_fds(
            z.host,
            [msgpack.packb({"fork": req, "env": {}, "limits": []})],
            [pipes[0][0], pipes[1][1], pipes[2][1]],
        )
        for r, w in pipes:
            os.close(r)
            os.close(w)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    socket.send_fds(
        z.host,
        [msgpack.packb({"fork": 1, "env": {}, "limits": []})],
        [stdin_r, stdout_w, stderr_w],
    )
    for fd in (stdin_r, stdout_w, stderr_w):
        os.close(fd)
    try:
        import select

        readable, _, _ = select.select([stdout_r], [], [], 10.0)
        assert readable, f"no worker forked while the host was not reading; stderr:\n{z.stderr.text}"
        assert os.read(stdout_r, 4), "the last worker says hello"
    finally:
        for fd in (stdin_w, stdout_r, stderr_r):
            os.close(fd)
    # The host reads again: every reply arrives, in order.
    z.host.setblocking(True)
    forked = exits = 0
    while forked < 31 or exits < 31:
        message = z.recv()
        if "forked" in message:
            forked += 1
        elif "exit" in message:
            exits += 1
            z.host.send(msgpack.packb({"reap": message["exit"]}))
    z.host.send(msgpack.packb({"close": True}))
    assert z.proc.wait(10) == 0, z.stderr.text


def test_never_forks_once_a_thread_runs(zygote: Callable[..., Zygote], write_app: Any) -> None:
    """Threads checked at every fork, not only after the import: here the app starts one in the
    zygote after its first fork (``register_at_fork``, as some libraries do to restart theirs)."""
    path = write_app(
        "import os, threading, time, portpool\n"
        "def _restart():\n"
        "    threading.Thread(target=time.sleep, args=(60,), name='late-bg', daemon=True).start()\n"
        "os.register_at_fork(after_in_parent=_restart)\n"
        "app = portpool.App()\n"
    )
    z = zygote(path)
    assert z.recv_reply()["refused"] is None
    z.fork()  # no thread yet
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    socket.send_fds(
        z.host, [msgpack.packb({"fork": 99, "env": {}, "limits": []})], [stdin_r, stdout_w, stderr_w]
    )
    for fd in (stdin_r, stdout_w, stderr_w, stdin_w, stdout_r, stderr_r):
        os.close(fd)
    reply = z.recv_reply()
    assert reply.get("failed") == 99, reply
    assert reply.get("refused") is True and "late-bg" in reply["reason"], reply


def test_an_app_holding_many_fds_at_import_still_forks(zygote: Callable[..., Zygote], write_app: Any) -> None:
    """The zygote's own fds come after the app's: past 1024 (FD_SETSIZE) it must still wait on them."""
    path = write_app(
        "import os, resource, portpool\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "if soft < 1400 and (hard == resource.RLIM_INFINITY or hard >= 1400):\n"
        "    resource.setrlimit(resource.RLIMIT_NOFILE, (1400, hard))\n"
        "KEEP = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]\n"
        "app = portpool.App()\n\n@app.handler\ndef echo(x):\n    return x\n"
    )
    z = zygote(path)
    assert z.recv_reply()["refused"] is None
    w = z.fork()
    assert w.result("echo", "many fds") == "many fds"
