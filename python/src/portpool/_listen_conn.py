"""One host's connection to a ``--listen`` listener: the handshake, then its frames relayed.

An :class:`asyncio.Protocol` (callbacks, no task per connection): until the handshake is
done a connection holds a timer, a 32-byte nonce and at most one handshake frame, and when
it fails or stalls it is closed and forgotten at once. TLS is started by the connection
itself (``loop.start_tls``) so that the handshake deadline counts from accept, TLS included.

After the hello, each frame from the host is checked with :func:`protocol.unpack` before it
goes on: the child runtime treats a malformed message as the end of its host, and here one
bad host must not end the worker for the others. Its id is then replaced by a listener-wide
one (:mod:`portpool._listen_ids`); ``params`` travel byte for byte.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING, Final

from portpool import _auth, protocol
from portpool._listen_ids import check_unique_keys, id_span, with_id
from portpool._stdio import _log

if TYPE_CHECKING:
    from portpool._listen import Listener

_HEADER: Final = struct.Struct(">I")
_LINGER: Final = 5.0  # a closed connection whose last frames the host does not read is then aborted
_EARLY_MAX: Final = 1 << 20  # bytes a host may send between its auth_response and the hello
_SHUTTING_DOWN: Final = "the worker is shutting down and takes no new requests"

# States
_TLS, _AUTH, _WAIT_CHILD, _OPEN, _CLOSED = "tls", "auth", "wait_child", "open", "closed"


def _peer(transport: asyncio.BaseTransport) -> str:
    addr = transport.get_extra_info("peername")
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
        return f"{host}:{addr[1]}"
    return str(addr)


class HostConnection(asyncio.Protocol):
    """A host's connection. ``calls`` maps the host's in-flight request ids to listener ids."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.state = _TLS
        self.peer = "?"
        self.calls: dict[int, int] = {}
        self.stopping = False  # takes no new requests (host shutdown, or the listener drains)
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._nonce = b""
        self._buf = bytearray()
        self._reader = protocol.FrameReader(listener.max_frame)
        self._counted = False  # counted in listener.unauthenticated

    # ------------------------------------------------------------------ handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accepted: the handshake clock starts now (TLS included), then TLS or the challenge."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = _peer(transport)
        if not self.listener.admit():
            self.state = _CLOSED
            transport.abort()
            return
        self._counted = True
        self.listener.handshaking.add(self)
        timeout = self.listener.handshake_timeout
        self._timer = self._loop.call_later(timeout, self._expired)
        if self.listener.ssl_context is None:
            self._challenge()
        else:
            self._tls_task = self._loop.create_task(self._start_tls(transport, timeout))

    async def _start_tls(self, raw: asyncio.Transport, timeout: float) -> None:
        """The TLS handshake, within the time the handshake has left."""
        ctx = self.listener.ssl_context
        assert ctx is not None
        try:
            tls = await self._loop.start_tls(raw, self, ctx, server_side=True, ssl_handshake_timeout=timeout)
        except Exception as exc:  # ssl.SSLError, ConnectionError, TimeoutError...: all end the connection
            self._tls_task = None
            if self.state != _CLOSED:
                self._drop(f"TLS handshake failed: {exc or type(exc).__name__}")
            raw.abort()
            return
        self._tls_task = None
        if tls is None or self.state != _TLS:
            raw.abort()
            return
        assert isinstance(tls, asyncio.Transport)
        self.transport = tls
        self._challenge()

    def _challenge(self) -> None:
        """Step 1: a fresh nonce per connection, so that no earlier response can be replayed."""
        assert self.transport is not None
        self.state = _AUTH
        self._nonce = _auth.new_nonce()
        self.transport.write(_auth.challenge_frame(self._nonce))

    def _auth_data(self) -> None:
        """Step 2: waits for one whole handshake frame (4096 bytes at most), then checks it."""
        buf = self._buf
        if len(buf) < 4:
            return
        (length,) = _HEADER.unpack_from(buf)
        if length > _auth.HANDSHAKE_MAX_FRAME:
            self._refuse(
                f"handshake frame of {length} bytes (more than {_auth.HANDSHAKE_MAX_FRAME})",
                "handshake frame too large",
            )
            return
        if len(buf) < 4 + length:
            return
        body = bytes(buf[4 : 4 + length])
        del buf[: 4 + length]
        secret = self.listener.secret
        try:
            host_nonce = _auth.check_response(body, secret, self._nonce)
        except _auth.HandshakeError as exc:
            self._refuse(str(exc), exc.reason)
            return
        assert self.transport is not None
        self.transport.write(_auth.ok_frame(_auth.server_mac(secret, host_nonce, self._nonce)))
        self.transport.pause_reading()  # nothing more is read until the hello is out
        self.state = _WAIT_CHILD
        self._uncount()
        hello = self.listener.ready_hello()
        if hello is not None:
            self.child_ready(hello)  # else the listener calls it once a child said hello

    def child_ready(self, hello: bytes) -> None:
        """Step 4: the child's hello (with its instance); from now on frames are relayed."""
        if self.state != _WAIT_CHILD or self.transport is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = _OPEN
        self.listener.handshaking.discard(self)
        self.listener.conns.add(self)
        self.transport.write(hello)
        early, self._buf = bytes(self._buf), bytearray()
        if early:
            self._relay_in(early)
        if self.state == _OPEN:
            self.transport.resume_reading()

    def _uncount(self) -> None:
        """No longer an unauthenticated connection (authenticated, or closed)."""
        if self._counted:
            self._counted = False
            self.listener.unauthenticated -= 1

    def _expired(self) -> None:
        """The handshake time-out: whatever step the host is at, it is closed (and logged)."""
        self._timer = None
        if self.state == _TLS:
            self._drop(f"TLS handshake not done within {self.listener.handshake_timeout:g}s")
        elif self.state == _AUTH:
            self._refuse(
                f"handshake not done within {self.listener.handshake_timeout:g}s", "handshake timed out"
            )
        elif self.state == _WAIT_CHILD:
            self._refuse("no worker runtime ready within the handshake time-out", "worker not ready")

    def _refuse(self, detail: str, reason: str) -> None:
        """Ends a handshake that failed: ``auth_failed``, one log line, close."""
        if self.transport is not None and self.state != _CLOSED:
            self.transport.write(_auth.failed_frame(reason))
        self._drop(f"handshake refused: {detail}", graceful=True)

    # ------------------------------------------------------------------ relaying

    def data_received(self, data: bytes) -> None:
        """Bytes from the host: relayed once open, else the handshake's (bounded) buffer."""
        if self.state == _OPEN:
            self._relay_in(data)
        elif self.state in (_AUTH, _WAIT_CHILD):
            self._buf += data
            if self.state == _AUTH:
                self._auth_data()
            elif len(self._buf) > _EARLY_MAX:  # reading is paused: only a read already under way
                self._drop("closed: too much sent before the hello")

    def _relay_in(self, data: bytes) -> None:
        """Splits frames (the runtime's size limit applies) and relays each while still open."""
        try:
            bodies = self._reader.feed(data)
        except protocol.FrameTooLarge as exc:
            self._drop(f"closed: {exc}")
            return
        for body in bodies:
            if self.state != _OPEN:
                return
            self._on_frame(body)

    def _on_frame(self, body: bytes) -> None:
        """One message from the host: checked, its id replaced, passed to the child."""
        try:
            try:
                msg = protocol.unpack(body)
                kind, host_id = msg["type"], msg.get("id")
            except protocol.InvalidParams as exc:  # the child answers it with an InvalidParams error
                kind, host_id = "request", exc.id
            if kind == "request":  # relayed as is but for its id: the child must read the id we route
                check_unique_keys(body)
        except protocol.Malformed as exc:
            self._drop(f"closed: malformed frame ({exc})")
            return
        listener = self.listener
        if kind == "request":
            assert isinstance(host_id, int)
            if self.stopping:
                error = protocol.response_error_message(host_id, "ShuttingDown", _SHUTTING_DOWN)
                self.send(protocol.encode(error))
            elif host_id in self.calls:
                self._drop(f"closed: request id {host_id} is already in flight on this connection")
            else:
                gid = self.calls[host_id] = listener.route(self, host_id)
                _, _, start, end = id_span(body)
                listener.to_child(with_id(body, start, end, gid), self)
        elif kind == "cancel":
            assert isinstance(host_id, int)
            in_flight = self.calls.get(host_id)
            if in_flight is not None:  # else done already: cancel is advisory
                listener.to_child(protocol.encode(protocol.cancel_message(in_flight)), self)
        elif kind == "ping":
            assert isinstance(host_id, int)
            gid = listener.route(self, host_id)
            listener.to_child(protocol.encode(protocol.ping_message(gid)), self)
        elif kind == "session_close":
            listener.to_child(protocol.frame(body), self)
        elif kind == "shutdown":
            if not self.stopping:
                self.stopping = True
                self._task = self._loop.create_task(self._shutdown())
        else:
            self._drop(f"closed: {kind!r} is not a host -> worker message")

    async def _shutdown(self) -> None:
        """The host is done: its calls finish (or are cancelled after the grace), then goodbye."""
        await self.listener.settle([self], self.listener.shutdown_grace)
        self._task = None
        self.close("shutdown requested by the host")

    def send(self, frame: bytes) -> None:
        """Queues one frame to the host; a host that lets too much pile up is dropped."""
        transport = self.transport
        if self.state != _OPEN or transport is None:
            return
        transport.write(frame)
        waiting = transport.get_write_buffer_size()
        if waiting > self.listener.write_limit:
            self._drop(f"closed: the host does not read its replies ({waiting} bytes waiting)")

    def finished(self, host_id: int) -> None:
        """The child answered request ``host_id`` (its response is about to be sent)."""
        self.calls.pop(host_id, None)

    # ------------------------------------------------------------------ ending

    def close(self, goodbye: str | None = None, *, cancel: bool = True) -> None:
        """Ends the connection after its queued frames, with a ``goodbye`` first if given."""
        if self.state == _OPEN and goodbye is not None:
            self.send(protocol.encode(protocol.goodbye_message(goodbye)))
        self._drop(None, graceful=True, cancel=cancel)

    def goodbye(self, reason: str) -> None:
        """Tells the host the worker is going away, without closing yet."""
        self.send(protocol.encode(protocol.goodbye_message(reason)))

    def _drop(self, why: str | None, *, graceful: bool = False, cancel: bool = True) -> None:
        """Closes (``graceful``: after the queued frames, else at once), logs ``why``, forgets everything.

        The host's calls still in flight are cancelled in the child (``cancel``), and their
        replies are dropped when they come.
        """
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self._uncount()
        if why is not None:
            _log(f"host {self.peer}: {why}")
        for handle in (self._timer, self._tls_task, self._task):
            if handle is not None and handle is not asyncio.current_task():
                handle.cancel()
        self._timer = self._tls_task = self._task = None
        self._buf = bytearray()
        self._reader = protocol.FrameReader(0)
        self.listener.forget(self, cancel=cancel)
        transport = self.transport
        if transport is not None:
            if graceful:
                transport.close()
                self._timer = self._loop.call_later(_LINGER, transport.abort)
            else:
                transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        """The host went away (or our close completed): its calls are cancelled, nothing kept."""
        if self._timer is not None and self.state == _CLOSED:
            self._timer.cancel()  # the linger timer: the close completed
            self._timer = None
        if self.state == _OPEN:
            self._drop(f"disconnected ({exc})" if exc else "disconnected")
        elif self.state != _CLOSED:
            self._drop(f"closed during the handshake ({self.state})")
        self.transport = None
