"""The fork server ("zygote") behind ``WorkerCommand::fork_server(true)``: see docs/fork-server.md.

The host starts ``python -m portpool APP`` with ``PORTPOOL_FORK_SERVER=1`` and one end of a
unix ``SOCK_SEQPACKET`` socket pair as fd 0. This process imports the runtime and the app
once, starts no thread and no event loop, and then forks one worker per request. Messages
are MessagePack maps, one per packet:

host -> zygote
    ``{"fork": REQ, "env": {K: V}, "limits": [[NAME, SOFT, HARD]]}`` with SCM_RIGHTS
    ``[stdin_read, stdout_write, stderr_write]``: the worker's three pipe ends, made by the host;
    ``{"reap": PID}``: the host recorded PID's exit and killed its group: reap the zombie now;
    ``{"close": true}``: fork no more; exit once every child is reaped.
zygote -> host
    ``{"ready": PID, "refused": REASON or nil}`` once, after the import;
    ``{"forked": REQ, "pid": PID}`` or ``{"failed": REQ, "reason": TEXT, "refused": True or nil}``
    (refused: a thread runs in the zygote now, so it will never fork again: exec instead);
    ``{"exit": PID, "code": CODE or nil, "signal": SIG or nil}`` when a child ended.

A child's exit is read with ``waitid(WNOWAIT)`` and the child is only reaped when the host
says ``reap``: until then the zombie keeps its pid, hence its process group id, so no group
kill (here or on the host) can reach an unrelated process that got the pid again.
End of file on the socket without ``close`` means the host is gone: every child's group is
killed and the zygote exits.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import threading
from collections import deque

import msgpack

from portpool._stdio import _log, redirect_stdio

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from portpool.app import App

ENV_FORK_SERVER = "PORTPOOL_FORK_SERVER"
_MAX_PACKET = 1 << 20
_RLIMITS = {"AS": "RLIMIT_AS", "CPU": "RLIMIT_CPU", "NOFILE": "RLIMIT_NOFILE"}


def _thread_refusal() -> str | None:
    """Why forking this process would be unsafe (threads running), or None."""
    count = threading.active_count()
    if count != 1:
        names = ", ".join(sorted(t.name for t in threading.enumerate() if t is not threading.main_thread()))
        return f"the app started {count - 1} Python thread(s) ({names})"
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        return None
    if tasks != 1:
        return f"the process runs {tasks} threads after importing the app (started by native code)"
    return None


class _Zygote:
    def __init__(self, sock: socket.socket, app: App, refusal: str | None) -> None:
        self.sock = sock
        self.app = app
        self.refusal = refusal
        # pid -> True once its exit was reported (a zombie waiting for the host's "reap").
        self.children: dict[int, bool] = {}
        self.closing = False
        self.outbox: deque[bytes] = deque()  # messages for the host the socket did not take yet
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def send(self, message: dict[str, Any]) -> None:
        """Queues one message and writes what the socket takes now, never waiting: a zygote
        blocked on a write would stop reading, and the host's reader may itself be blocked
        writing a ``reap`` to us (each side waiting on the other for ever)."""
        self.outbox.append(msgpack.packb(message))
        self.flush()

    def flush(self) -> None:
        while self.outbox:
            try:
                self.sock.send(self.outbox[0], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return  # the rest goes when the socket is writable again (see serve)
            except OSError as exc:  # the host is gone
                _log(f"fork server: cannot write to the host: {exc}")
                self.host_gone()
            self.outbox.popleft()

    def serve(self) -> NoReturn:
        import select

        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda _signo, _frame: None)
        self.sock.sendall(msgpack.packb({"ready": os.getpid(), "refused": self.refusal}))
        if self.refusal is not None:
            os._exit(0)
        gc.freeze()  # objects of the import stay out of the children's collections: fewer COW faults
        while True:
            self.check_children()
            if self.closing and not self.children:
                self.sock.settimeout(5.0)  # last words (a refusal, say) before going
                for data in self.outbox:
                    try:
                        self.sock.send(data)
                    except OSError:
                        break
                os._exit(0)
            # poll, not select: the app may hold more than FD_SETSIZE fds, so ours can be past it.
            poller = select.poll()
            poller.register(self.wake_r, select.POLLIN)
            poller.register(self.sock.fileno(), select.POLLIN | (select.POLLOUT if self.outbox else 0))
            try:
                events = dict(poller.poll(1000))
            except InterruptedError:
                continue
            sock_events = events.get(self.sock.fileno(), 0)
            if sock_events & select.POLLOUT:
                self.flush()
            if self.wake_r in events:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if sock_events & (select.POLLIN | select.POLLHUP | select.POLLERR) and not self.receive():
                self.host_gone()

    def receive(self) -> bool:
        """Handles one packet; False at end of file (the host is gone)."""
        flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, _MAX_PACKET, 3, flags)
        except InterruptedError:
            return True
        except OSError as exc:
            _log(f"fork server: cannot read from the host: {exc}")
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            message = msgpack.unpackb(data)
        except Exception as exc:
            _log(f"fork server: bad message from the host: {exc}")
            message = None
        if isinstance(message, dict) and "fork" in message:
            self.fork(message, fds)
            return True
        for fd in fds:
            os.close(fd)
        if isinstance(message, dict) and "reap" in message:
            pid = message["reap"]
            if isinstance(pid, int) and self.children.get(pid):
                del self.children[pid]
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        elif isinstance(message, dict) and message.get("close"):
            self.closing = True
        return True

    def fork(self, message: dict[str, Any], fds: list[int]) -> None:
        req = message.get("fork")
        try:
            if self.closing:
                raise RuntimeError("the fork server is closing")
            if len(fds) != 3:
                raise RuntimeError(f"expected 3 file descriptors, got {len(fds)}")
            # Again at every fork, not only after the import: a thread started since (by a
            # register_at_fork hook, a callback, native code) makes forking unsafe for good.
            refusal = _thread_refusal()
            if refusal is not None:
                self.closing = True  # fork no more; exit once the children are gone
                self.send({"failed": req, "reason": refusal, "refused": True})
                return
            # Every buffer, the interpreter's original stdout too: a child flushes those
            # (redirect_stdio) with fd 1 already its protocol pipe.
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                try:
                    if stream is not None:
                        stream.flush()
                except Exception:  # closed by the app, say: nothing buffered then
                    pass
            pid = os.fork()
            if pid == 0:
                self.child(message, fds)  # never returns
        except Exception as exc:
            self.send({"failed": req, "reason": f"{type(exc).__name__}: {exc}"})
            return
        finally:
            for fd in fds:
                os.close(fd)
        try:
            # Also here, not only in the child: the group exists before the host learns the
            # pid, so a group kill the host sends at once cannot miss the worker.
            os.setpgid(pid, pid)
        except OSError:
            pass
        self.children[pid] = False
        self.send({"forked": req, "pid": pid})

    def check_children(self) -> None:
        """Reports children that ended (without reaping them: see the module's docstring)."""
        for pid, reported in list(self.children.items()):
            if reported:
                continue
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
                self.children.pop(pid, None)
                self.send({"exit": pid, "code": None, "signal": None})
                continue
            if info is None or info.si_pid == 0:
                continue
            code = signo = None
            if info.si_code == os.CLD_EXITED:
                code = info.si_status
            else:
                signo = info.si_status
            # What is left of its group goes now; the zombie still holds the group id.
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            self.children[pid] = True
            self.send({"exit": pid, "code": code, "signal": signo})

    def host_gone(self) -> NoReturn:
        """End of input: the host died (or dropped us without ``close``): nothing we forked stays."""
        for pid in self.children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)

    def child(self, message: dict[str, Any], fds: list[int]) -> NoReturn:
        """In the forked worker: become a worker like an exec'd one, then serve the app."""
        try:
            os.setpgid(0, 0)  # its own process group, as every worker has
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # SIGINT: as inherited, like an exec'd worker
            for target, fd in enumerate(fds):
                os.dup2(fd, target)  # inheritable, blocking: as a spawned process's stdio
            for fd in (*fds, self.sock.fileno(), self.wake_r, self.wake_w):
                if fd > 2:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self.sock.detach()
            env = message.get("env") or {}
            for key, value in env.items():
                os.environ[key] = value
            _apply_limits(message.get("limits") or [])
            # The import's objects stay frozen (gc.freeze in the zygote): a collection in this
            # worker never walks them, so their pages stay shared with the zygote.
            from portpool import _exit as exit_module

            exit_module._PARENT_AT_START = os.getppid()  # the zygote: see _kill_own_group
            # (random reseeds itself in a forked child: os.register_at_fork.)
            from portpool._cli import serve_app

            fds_in_out = redirect_stdio()
        except BaseException:
            import traceback

            _log("fork server: cannot start the forked worker:\n" + traceback.format_exc())
            os._exit(1)
        try:
            serve_app(self.app, fds_in_out)
        finally:
            os._exit(1)


def _apply_limits(limits: list[Any]) -> None:
    import resource

    for name, soft, hard in limits:
        which = getattr(resource, _RLIMITS.get(name, ""), None)
        if which is None:
            continue
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
        resource.setrlimit(which, (min(soft, hard), hard))


def serve_forks(spec: str) -> NoReturn:
    """``python -m portpool APP`` as the fork server (``PORTPOOL_FORK_SERVER=1``, the socket on fd 0)."""
    del os.environ[ENV_FORK_SERVER]  # not for the workers, nor anything they start
    # As in a worker: fd 0 (the socket) moved off to a non-inheritable fd, /dev/null in its
    # place, and fd 1 (and sys.stdout, unbuffered) on stderr, so nothing the import prints is
    # left in a buffer that a forked child would flush into its frames.
    sock_fd, devnull_out = redirect_stdio()
    os.close(devnull_out)
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    from portpool._cli import load_or_exit

    app = load_or_exit(spec)
    _Zygote(sock, app, _thread_refusal()).serve()
