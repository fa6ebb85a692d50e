"""A hostile portpool worker, written WITHOUT the portpool runtime.

It speaks the wire protocol by hand (4-byte big-endian length, then a
MessagePack map) with the small pure-Python MessagePack codec below, so it
needs only the standard library: `python3 worker.py MODE STATE_DIR`.

Every start records its pid as STATE_DIR/start-N (N = 0, 1, ...; created
with O_EXCL, so concurrent starts get distinct numbers), and every process
it spawns as STATE_DIR/child-PID, so the test can check that none is left.
Start 0 misbehaves as MODE says; later starts behave (so the pool can come
back to full strength), except in `every_*` modes, where every start does.

A well-behaved start: sends its hello, answers `ping` with `pong`, serves
`echo` (params back), `sleep` (ms, then params back), `pid`, `big`
(n bytes of bin), exits 0 on `shutdown` or stdin EOF.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

# ---------------------------------------------------------------- msgpack


def pack(obj: Any) -> bytes:
    """Encodes nil, bool, int, float, str, bytes, list and dict."""
    if obj is None:
        return b"\xc0"
    if obj is True:
        return b"\xc3"
    if obj is False:
        return b"\xc2"
    if isinstance(obj, int):
        if 0 <= obj < 128:
            return bytes([obj])
        if -32 <= obj < 0:
            return struct.pack(">b", obj)
        if 0 <= obj < 2**64:
            return b"\xcf" + struct.pack(">Q", obj)
        return b"\xd3" + struct.pack(">q", obj)
    if isinstance(obj, float):
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, str):
        raw = obj.encode()
        if len(raw) < 32:
            return bytes([0xA0 | len(raw)]) + raw
        return b"\xdb" + struct.pack(">I", len(raw)) + raw
    if isinstance(obj, (bytes, bytearray)):
        return b"\xc6" + struct.pack(">I", len(obj)) + bytes(obj)
    if isinstance(obj, list):
        head = bytes([0x90 | len(obj)]) if len(obj) < 16 else b"\xdd" + struct.pack(">I", len(obj))
        return head + b"".join(pack(x) for x in obj)
    if isinstance(obj, dict):
        head = bytes([0x80 | len(obj)]) if len(obj) < 16 else b"\xdf" + struct.pack(">I", len(obj))
        return head + b"".join(pack(k) + pack(v) for k, v in obj.items())
    raise TypeError(f"cannot pack {type(obj).__name__}")


def unpack(data: bytes) -> Any:
    """Decodes one MessagePack value (the subset the host sends)."""
    value, _ = _unpack(data, 0)
    return value


def _unpack(d: bytes, i: int) -> tuple[Any, int]:
    b = d[i]
    i += 1
    if b < 0x80:
        return b, i
    if b >= 0xE0:
        return b - 0x100, i
    if 0x80 <= b <= 0x8F:
        return _map(d, i, b & 0x0F)
    if 0x90 <= b <= 0x9F:
        return _array(d, i, b & 0x0F)
    if 0xA0 <= b <= 0xBF:
        n = b & 0x1F
        return d[i : i + n].decode(), i + n
    fixed: dict[int, tuple[str, int]] = {
        0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
        0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
        0xCA: (">f", 4), 0xCB: (">d", 8),
    }  # fmt: skip
    if b in fixed:
        fmt, n = fixed[b]
        return struct.unpack(fmt, d[i : i + n])[0], i + n
    if b == 0xC0:
        return None, i
    if b in (0xC2, 0xC3):
        return b == 0xC3, i
    sizes = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}
    if b in sizes:
        n = int.from_bytes(d[i : i + sizes[b]], "big")
        i += sizes[b]
        raw = d[i : i + n]
        return (raw.decode() if b >= 0xD9 else bytes(raw)), i + n
    if b in (0xDC, 0xDD):
        w = 2 if b == 0xDC else 4
        return _array(d, i + w, int.from_bytes(d[i : i + w], "big"))
    if b in (0xDE, 0xDF):
        w = 2 if b == 0xDE else 4
        return _map(d, i + w, int.from_bytes(d[i : i + w], "big"))
    raise ValueError(f"unsupported msgpack byte {b:#x}")


def _array(d: bytes, i: int, n: int) -> tuple[list[Any], int]:
    out = []
    for _ in range(n):
        v, i = _unpack(d, i)
        out.append(v)
    return out, i


def _map(d: bytes, i: int, n: int) -> tuple[dict[Any, Any], int]:
    out = {}
    for _ in range(n):
        k, i = _unpack(d, i)
        v, i = _unpack(d, i)
        out[k] = v
    return out, i


# ---------------------------------------------------------------- frames

OUT = os.fdopen(os.dup(1), "wb", buffering=0)
LOCK = threading.Lock()


def raw(data: bytes) -> None:
    with LOCK:
        OUT.write(data)


def send(msg: dict[str, Any]) -> None:
    body = pack(msg)
    raw(struct.pack(">I", len(body)) + body)


def read_exact(n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv() -> dict[str, Any] | None:
    head = read_exact(4)
    if head is None:
        return None
    body = read_exact(struct.unpack(">I", head)[0])
    if body is None:
        return None
    msg = unpack(body)
    assert isinstance(msg, dict)
    return msg


def hello(major: int = 1) -> None:
    send(
        {
            "type": "hello",
            "protocol_major": major,
            "protocol_minor": 0,
            "runtime": "hostile",
            "runtime_version": "0",
            "pid": os.getpid(),
            "max_concurrency": 4,
            "methods": ["echo", "sleep", "pid", "big"],
            "capabilities": ["cancel"],
        }
    )


def reply(req: dict[str, Any], result: Any) -> None:
    send({"type": "response", "id": req["id"], "result": result})


def log(text: str) -> None:
    sys.stderr.write(f"hostile[{os.getpid()}]: {text}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- state


def record_start(state: str) -> int:
    n = 0
    while True:
        try:
            fd = os.open(os.path.join(state, f"start-{n}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            n += 1
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return n


def record_child(state: str, pid: int) -> None:
    with open(os.path.join(state, f"child-{pid}"), "w") as f:
        f.write(str(pid))


def spawn(state: str, argv: list[str]) -> None:
    """Starts a descendant that inherits stdout (holding the frame pipe)."""
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=OUT.fileno())
    record_child(state, child.pid)


# ---------------------------------------------------------------- serving


def serve_one(req: dict[str, Any]) -> None:
    method, params = req.get("method"), req.get("params")
    if method == "sleep":
        time.sleep(int(params) / 1000)
        reply(req, params)
    elif method == "pid":
        reply(req, os.getpid())
    elif method == "big":
        reply(req, b"x" * int(params))
    elif method == "echo":
        reply(req, params)
    else:
        send(
            {
                "type": "response",
                "id": req["id"],
                "error": {"type": "MethodNotFound", "message": str(method)},
            }
        )


def serve(on_request: Any = None) -> int:
    """The well-behaved loop; `on_request(req)` may take a request over
    (return True when it did)."""
    while True:
        msg = recv()
        if msg is None:
            return 0
        kind = msg.get("type")
        if kind == "ping":
            send({"type": "pong", "id": msg["id"]})
        elif kind == "shutdown":
            return 0
        elif kind == "request":
            if on_request is not None and on_request(msg):
                continue
            threading.Thread(target=serve_one, args=(msg,), daemon=True).start()


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def main() -> int:
    mode, state = sys.argv[1], sys.argv[2]
    start = record_start(state)
    bad = start == 0 or mode.startswith("every_")
    if not bad:
        hello()
        return serve()

    log(f"start {start}: misbehaving as {mode}")
    if mode == "garbage_before_hello":
        raw(b"loading model weights...\n")
        hello()
        return serve()
    if mode == "no_hello":
        log("stuck before hello")
        return wait_eof()
    if mode == "wrong_version":
        hello(major=99)
        return serve()
    if mode == "every_exit_at_start":
        log("cannot start: missing config")
        return 3
    hello()

    if mode == "exit_at_first_request":
        recv_until_request()
        log("exiting at first request")
        return 4
    if mode == "duplicate_reply":

        def dup(req: dict[str, Any]) -> bool:
            reply(req, req["params"])
            reply(req, "duplicate")
            return True

        return serve(dup)
    if mode == "unknown_reply_id":

        def stray(req: dict[str, Any]) -> bool:
            send({"type": "response", "id": 987654321, "result": "stray"})
            reply(req, req["params"])
            return True

        return serve(stray)
    if mode == "late_reply_after_cancel":
        # Ignores cancels: every `sleep` is answered when it ends.
        return serve()
    if mode == "huge_header":
        recv_until_request()
        raw(b"\xff\xff\xff\xff")
        return wait_eof()
    if mode == "stderr_flood":
        line = b"E" * 1023 + b"\n"
        for _ in range(10 * 1024):  # 10 MiB
            os.write(2, line)
        log("LAST LINE before exit")
        return 5
    if mode == "ignore_sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Ignores `shutdown` and stdin EOF too: only SIGKILL ends it.
        while recv_ignoring() is not None:
            pass
        log("stdin closed; staying anyway (60 s at most)")
        time.sleep(60)
        return 0
    if mode == "grandchild_holds_stdout":
        recv_until_request()
        spawn(state, ["sh", "-c", "sleep 60"])
        log("exiting; a descendant keeps stdout open")
        os._exit(6)
    if mode == "memory_hog":
        recv_until_request()
        hog = []
        while True:
            hog.append(bytearray(16 * 1024 * 1024))
    if mode == "over_limit_reply":

        def too_big(req: dict[str, Any]) -> bool:
            reply(req, b"x" * (2 * 1024 * 1024))
            return True

        return serve(too_big)
    if mode == "stdin_closed":
        os.close(0)
        log("closed stdin, still running (60 s at most)")
        time.sleep(60)
        return 0
    if mode == "sends_requests":
        recv_until_request()
        send({"type": "request", "id": 1, "method": "host_please", "params": None})
        return wait_eof()
    if mode.startswith("deep_reply_"):
        depth = int(mode.removeprefix("deep_reply_"))
        req = recv_until_request()
        body = pack({"type": "response", "id": req["id"]})
        # A fixmap of 3 entries whose `result` is `depth` nested arrays.
        body = b"\x83" + body[1:] + pack("result") + nested(depth)
        raw(struct.pack(">I", len(body)) + body)
        return wait_eof()
    if mode == "idle":
        return serve()
    if mode == "every_linger_on_eof":
        # Serves, then outlives stdin EOF by 300 ms: exits after a host
        # that dropped it without waiting is long past looking.
        code = serve()
        time.sleep(0.3)
        return code
    log(f"unknown mode {mode}")
    return 9


def wait_eof() -> int:
    """Reads (and drops) everything until stdin EOF, then exits 0: a
    hostile start that will not serve still ends with its host."""
    while os.read(0, 65536):
        pass
    return 0


def recv_until_request() -> dict[str, Any]:
    """Answers pings until a request comes; exits 0 on EOF."""
    while True:
        msg = recv()
        if msg is None:
            sys.exit(0)
        if msg.get("type") == "ping":
            send({"type": "pong", "id": msg["id"]})
        elif msg.get("type") == "request":
            return msg


def recv_ignoring() -> dict[str, Any] | None:
    """Answers pings, ignores everything else; None on EOF."""
    msg = recv()
    if msg is not None and msg.get("type") == "ping":
        send({"type": "pong", "id": msg["id"]})
    return msg


if __name__ == "__main__":
    sys.exit(main())
