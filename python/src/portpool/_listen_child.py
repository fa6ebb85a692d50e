"""The one stdio runtime a ``--listen`` listener serves its hosts with.

The listener does not run the app itself: it starts ``python -m portpool APP`` as a child,
exactly as a local host would, so the worker behaves the same whether it is reached over a
pipe or over TCP (its concurrency limit, its ``ctx.session`` state, its handlers). The child
leads its own process group, so the listener can kill all it left behind in one call.

The child's stderr is drained continuously (a full stderr pipe would freeze the worker) and
echoed to the listener's stderr; its last few KiB are kept so that a death can be explained
to the hosts in the ``goodbye`` they get.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections.abc import Callable
from typing import Any, Final

import msgpack

from portpool import protocol
from portpool._auth import ENV_SECRET
from portpool._stdio import _log

_READ_SIZE: Final = 256 * 1024
_TAIL_KEEP: Final = 8192  # bytes of stderr kept
_TAIL_SHOWN: Final = 2000  # characters of them put in a goodbye
_STDERR_SETTLE: Final = 1.0  # after a death, how long the last stderr bytes may take to arrive
_REAP_TIMEOUT: Final = 5.0  # stdout closed but the process still there: then it is killed


class ChildGone(Exception):
    """The child exited (or broke the protocol) before its hello; ``str()`` says why."""


def _status(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


class Child:
    """One child runtime: start it, relay its frames, stop it, say why it died.

    ``on_frame`` is called with each body the child writes after its hello, on the loop.
    """

    def __init__(self, app: str, max_frame: int, on_frame: Callable[[bytes], None]) -> None:
        self.app = app
        self.instance = secrets.token_hex(16)  # 32 hex chars, new for every child
        self.hello_frame = b""  # the child's hello with "instance" added, framed for the hosts
        self.pid = 0
        self.alive = False
        self._max_frame = max_frame
        self._on_frame = on_frame
        self._proc: asyncio.subprocess.Process | None = None
        self._reader = protocol.FrameReader(max_frame)
        self._pending: list[bytes] = []
        self._tail = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None
        self._broke: str | None = None

    async def start(self) -> None:
        """Starts the child and reads its hello; raises :class:`ChildGone` if it never says it."""
        env = dict(os.environ)
        env.pop(ENV_SECRET, None)  # the app needs no key to the listener's door
        try:
            self._proc = proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "portpool",
                self.app,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            raise ChildGone(f"cannot start {sys.executable} -m portpool {self.app}: {exc}") from None
        self.pid = proc.pid
        self._stderr_task = asyncio.get_running_loop().create_task(self._pump_stderr())
        assert proc.stdout is not None
        bodies: list[bytes] = []
        try:
            while not bodies:
                data = await proc.stdout.read(_READ_SIZE)
                if not data:
                    raise ChildGone(await self._death_reason("before its hello"))
                bodies = self._reader.feed(data)
            kind = protocol.unpack(bodies[0])["type"]
            if kind != "hello":
                raise protocol.Malformed(f"its first message is a {kind!r}, not a hello")
            # Decoded again in full: the hello goes on with every key it has, plus the instance.
            hello: dict[str, Any] = msgpack.unpackb(bodies[0], raw=False)
        except protocol.ProtocolError as exc:
            self.kill_group()
            raise ChildGone(await self._death_reason(f"after breaking the protocol ({exc})")) from None
        hello["instance"] = self.instance
        self.hello_frame = protocol.encode(hello)
        self._pending = bodies[1:]
        self.alive = True

    async def relay(self) -> str:
        """Passes the child's frames to ``on_frame`` until its output ends; returns why it died."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            for body in self._pending:
                self._on_frame(body)
            self._pending = []
            while True:
                data = await proc.stdout.read(_READ_SIZE)
                if not data:
                    break
                for body in self._reader.feed(data):
                    self._on_frame(body)
        except protocol.ProtocolError as exc:
            self._broke = f"after breaking the protocol ({exc})"
            self.kill_group()
        finally:
            self.alive = False
        return await self._death_reason(self._broke or "")

    def send(self, frame: bytes) -> bool:
        """Writes one frame to the child; True when its input pipe has much data waiting (back off)."""
        proc = self._proc
        if not self.alive or proc is None or proc.stdin is None or proc.stdin.is_closing():
            return False
        proc.stdin.write(frame)
        return proc.stdin.transport.get_write_buffer_size() > _READ_SIZE

    async def drained(self) -> None:
        """Returns once the child has read most of what was written to it (or is gone)."""
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            try:
                await proc.stdin.drain()
            except (ConnectionError, OSError):
                pass

    async def stop(self, grace: float) -> None:
        """Asks the child to finish and exit; after ``grace`` seconds its process group is killed."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(protocol.encode(protocol.shutdown_message()))
            proc.stdin.close()  # end of input as well: the runtime then kills its own group
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            _log(f"the worker runtime (pid {proc.pid}) did not exit within {grace:g}s; killing it")
        self.kill_group()
        await proc.wait()

    def kill_group(self) -> None:
        """SIGKILL to the child's process group: the child and whatever it started."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    async def _death_reason(self, when: str) -> str:
        """Waits for the child to be gone; returns its exit status and the end of its stderr."""
        proc = self._proc
        assert proc is not None
        try:
            await asyncio.wait_for(proc.wait(), _REAP_TIMEOUT)
        except asyncio.TimeoutError:
            _log(f"the worker runtime (pid {proc.pid}) closed its output but did not exit; killing it")
        self.kill_group()  # leftovers of a dead worker serve no one
        returncode = await proc.wait()
        if self._stderr_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._stderr_task), _STDERR_SETTLE)
            except asyncio.TimeoutError:
                pass
        reason = f"the worker runtime (pid {proc.pid}) {_status(returncode)}"
        if when:
            reason += f" {when}"
        tail = bytes(self._tail).decode("utf-8", "replace").strip()
        if len(tail) > _TAIL_SHOWN:
            tail = tail[-_TAIL_SHOWN:]
            tail = tail.partition("\n")[2] or tail
        if tail:
            reason += f"; its stderr ended with:\n{tail}"
        return reason

    async def _pump_stderr(self) -> None:
        """Copies the child's stderr to ours as it comes, keeping its last few KiB."""
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        while True:
            data = await proc.stderr.read(65536)
            if not data:
                return
            self._tail += data
            if len(self._tail) > _TAIL_KEEP:
                del self._tail[:-_TAIL_KEEP]
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(2, view) :]
            except OSError:
                pass  # our own stderr is gone: keep draining the child's all the same
