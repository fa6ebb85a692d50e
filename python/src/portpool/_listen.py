"""``python -m portpool APP --listen HOST:PORT``: one worker served to remote hosts (docs/remote.md).

The listener is a small asyncio proxy in front of ONE ordinary stdio runtime (its child,
:mod:`portpool._listen_child`). Any number of hosts connect (:mod:`portpool._listen_conn`);
after the handshake, their frames are multiplexed onto the child's stdin and the child's
replies routed back, each under the id its host gave:

    host A  id 1 ─┐                       ┌─ response 7 ─> host A as id 1
    host B  id 1 ─┼─> child as ids 7, 8 ──┤
                  │                       └─ response 8 ─> host B as id 1

``_routes`` maps each listener-wide id in flight (requests and pings) to its connection and
the host's own id. A connection that goes away leaves its ids behind as orphans (their
requests are cancelled in the child; their replies are dropped when they come).

When the child dies, every host gets a ``goodbye`` naming the exit status and the end of
the child's stderr, and is closed; a new child (new ``instance``) is started unless the
listener is draining. SIGTERM/SIGINT drain: goodbye, in-flight calls finish (up to the
grace), the child is shut down, exit 0.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
from collections.abc import Iterable
from typing import Final, NoReturn

from portpool import _listen_config, protocol
from portpool._listen_child import Child, ChildGone
from portpool._listen_conn import HostConnection
from portpool._listen_ids import id_span, with_id
from portpool._stdio import _log

_SETTLE_POLL: Final = 0.02
_CANCEL_SETTLE: Final = 1.0  # after cancelling stragglers, how long their answers may take
_RESTART_BACKOFF: Final = (0.5, 10.0)  # first and largest wait after a child that died before its hello
_WRITE_SLACK: Final = 1 << 20


class Listener:
    """The listener's state: the child, the connections, the id routes."""

    def __init__(self, options: _listen_config.Options) -> None:
        self.options = options
        self.secret = options.secret
        self.ssl_context = options.ssl_context
        self.handshake_timeout = options.handshake_timeout
        self.shutdown_grace = options.shutdown_grace
        self.max_frame = options.max_frame
        # Bytes a host may leave unread before it is dropped: one largest frame and then some.
        self.write_limit = options.max_frame + _WRITE_SLACK
        self.handshaking: set[HostConnection] = set()
        # Connections not authenticated yet (TLS or auth step), capped at options.max_handshakes.
        self.unauthenticated = 0
        self._refused_logged_at = -1.0
        self.conns: set[HostConnection] = set()
        self.child: Child | None = None
        self.draining = False
        self._routes: dict[int, tuple[HostConnection | None, int]] = {}
        self._ids = itertools.count(1)
        self._stalled: set[HostConnection] = set()
        self._unstall: asyncio.Task[None] | None = None
        self._server: asyncio.base_events.Server | None = None
        self._done: asyncio.Future[int] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._exit_code = 0  # what a drain ends with

    # ------------------------------------------------------------------ used by connections

    def ready_hello(self) -> bytes | None:
        """The hello of the child serving now, or None while none is (connections then wait)."""
        child = self.child
        return child.hello_frame if child is not None and child.alive and not self.draining else None

    def admit(self) -> bool:
        """Whether one more unauthenticated connection may start its handshake (else it is closed).

        Each holds a socket, a timer and buffers until its handshake time-out: the cap bounds
        what a flood of connections that never authenticate can hold. Refusals are logged at
        most once a second.
        """
        if self.unauthenticated < self.options.max_handshakes:
            self.unauthenticated += 1
            return True
        now = asyncio.get_running_loop().time()
        if now - self._refused_logged_at >= 1.0:
            self._refused_logged_at = now
            _log(
                f"refusing connections: {self.unauthenticated} handshakes in progress"
                f" (--max-handshakes {self.options.max_handshakes})"
            )
        return False

    def route(self, conn: HostConnection, host_id: int) -> int:
        """A new listener-wide id for ``conn``'s request (or ping) ``host_id``."""
        gid = next(self._ids)
        self._routes[gid] = (conn, host_id)
        return gid

    def to_child(self, frame: bytes, conn: HostConnection) -> None:
        """Writes to the child; ``conn`` stops being read while the child's input is backed up."""
        child = self.child
        if child is None or not child.send(frame):
            return
        if conn.transport is not None and conn not in self._stalled:
            self._stalled.add(conn)
            conn.transport.pause_reading()
        if self._unstall is None:
            self._unstall = asyncio.get_running_loop().create_task(self._resume_stalled(child))

    async def _resume_stalled(self, child: Child) -> None:
        """Once the child has caught up with its input, the paused connections are read again."""
        await child.drained()
        self._unstall = None
        stalled, self._stalled = self._stalled, set()
        for conn in stalled:
            if conn.state == "open" and conn.transport is not None:
                conn.transport.resume_reading()

    def forget(self, conn: HostConnection, *, cancel: bool) -> None:
        """``conn`` is closed: its requests still in flight become orphans, cancelled in the child."""
        self.handshaking.discard(conn)
        self.conns.discard(conn)
        self._stalled.discard(conn)
        child = self.child
        for host_id, gid in conn.calls.items():
            if gid in self._routes:
                self._routes[gid] = (None, host_id)
                if cancel and child is not None:
                    child.send(protocol.encode(protocol.cancel_message(gid)))
        conn.calls = {}

    async def settle(self, conns: Iterable[HostConnection], grace: float) -> None:
        """Waits up to ``grace`` for ``conns``' calls to finish, then cancels the rest (and waits a bit)."""
        conns = list(conns)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(c.calls for c in conns) and loop.time() < deadline:
            await asyncio.sleep(_SETTLE_POLL)
        child = self.child
        if child is None or not any(c.calls for c in conns):
            return
        for conn in conns:
            for gid in conn.calls.values():
                child.send(protocol.encode(protocol.cancel_message(gid)))
        deadline = loop.time() + _CANCEL_SETTLE
        while any(c.calls for c in conns) and loop.time() < deadline:
            await asyncio.sleep(_SETTLE_POLL)

    # ------------------------------------------------------------------ the child's frames

    def _from_child(self, body: bytes) -> None:
        """A response, chunk or pong from the child: back to the host that asked, under its id."""
        try:
            kind, gid, start, end = id_span(body)
        except protocol.Malformed as exc:
            _log(f"ignoring a frame from the worker runtime: {exc}")
            return
        if kind == "chunk":
            route = self._routes.get(gid)
        elif kind in ("response", "pong"):
            route = self._routes.pop(gid, None)
        else:
            _log(f"ignoring a {kind!r} frame from the worker runtime")
            return
        if route is None:
            return
        conn, host_id = route
        if conn is None:
            return  # its host is gone
        if kind == "response":
            conn.finished(host_id)
        conn.send(with_id(body, start, end, host_id))

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> int:
        """Binds, starts the child, serves until drained; returns the exit code."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        opts = self.options
        try:
            self._server = await loop.create_server(
                lambda: HostConnection(self), opts.host or None, opts.port, reuse_address=True
            )
        except OSError as exc:
            _log(f"cannot listen on {_listen_config.format_address(opts.host, opts.port)}: {exc}")
            return _listen_config.EXIT_USAGE
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self._start_child()
        except ChildGone as exc:
            self._server.close()
            if self.draining:
                return 0  # stopped before it was ready
            _log(f"the worker runtime could not start: {exc}")
            return 1
        addresses = [
            _listen_config.format_address(str(addr[0]), int(addr[1]))
            for addr in (sock.getsockname() for sock in self._server.sockets)
        ]
        if opts.port_file and addresses:
            try:
                self._write_port_file(addresses[0])
            except OSError as exc:
                _log(f"cannot write --port-file {opts.port_file!r}: {exc}; stopping")
                self._exit_code = _listen_config.EXIT_USAGE
                self._on_signal(None)
        for text in addresses:  # after the port file: whoever reads this line may read the file
            sys.stderr.write(f"portpool: listening on {text}\n")
        sys.stderr.flush()
        supervisor = loop.create_task(self._supervise())
        code = await self._done
        supervisor.cancel()
        return code

    def _write_port_file(self, text: str) -> None:
        path = self.options.port_file
        assert path is not None
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)  # readers never see half of it

    async def _start_child(self) -> None:
        child = Child(self.options.app, self.max_frame, self._from_child)
        self.child = child
        await child.start()
        _log(f"worker runtime started (pid {child.pid}, instance {child.instance})")
        for conn in list(self.handshaking):
            conn.child_ready(child.hello_frame)

    async def _supervise(self) -> None:
        """Relays the child's frames; when it dies, tells the hosts why and starts a new one."""
        child = self.child
        assert child is not None
        while True:
            reason = await child.relay()
            if self.draining and not self.conns:
                return  # stopped by the drain
            _log(f"worker runtime died: {reason}")
            self._routes.clear()
            for conn in list(self.conns):
                conn.close(reason, cancel=False)
            if self.draining or not await self._restart():
                return
            child = self.child
            assert child is not None

    async def _restart(self) -> bool:
        """Starts a new child, retrying with backoff; False if the listener started draining meanwhile."""
        backoff = _RESTART_BACKOFF[0]
        while not self.draining:
            try:
                await self._start_child()
                return True
            except ChildGone as exc:
                _log(f"the worker runtime could not start again (retrying in {backoff:g}s): {exc}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RESTART_BACKOFF[1])
        return False

    def _on_signal(self, sig: signal.Signals | None) -> None:
        """The first SIGTERM/SIGINT drains; a second one ends the listener at once (exit 1)."""
        if self.draining:
            if sig is not None and self._done is not None and not self._done.done():
                _log(f"{sig.name} again: exiting now")
                if self.child is not None:
                    self.child.kill_group()
                self._done.set_result(1)
            return
        if sig is not None:
            _log(f"{sig.name}: draining")
        self.draining = True
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Stop accepting, goodbye, let in-flight calls finish, close, stop the child, exit 0."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.handshaking):
            conn.close()
        conns = list(self.conns)
        for conn in conns:
            conn.stopping = True
            conn.goodbye("draining")
        await self.settle(conns, self.shutdown_grace)
        for conn in conns:
            conn.close()
        child = self.child
        if child is not None:
            child.alive = False
            await child.stop(self.shutdown_grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while any(c.transport is not None for c in conns) and loop.time() < deadline:
            await asyncio.sleep(_SETTLE_POLL)
        _log("drained; exiting")
        if self._done is not None and not self._done.done():
            self._done.set_result(self._exit_code)


def main(argv: list[str]) -> NoReturn:
    """``python -m portpool APP --listen HOST:PORT [options]``: runs the listener, exits with its code."""
    options = _listen_config.parse(argv)
    code = asyncio.run(Listener(options).run())
    sys.exit(code)
