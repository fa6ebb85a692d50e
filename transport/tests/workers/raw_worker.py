"""A misbehaving worker that speaks the frames by hand (no portpool runtime).

Usage: raw_worker.py MODE [ARG]. Each mode sends a valid hello (unless the
mode is about the hello) and then misbehaves in one way. Progress notes go
to stderr, so the host's tests can wait for them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import msgpack

OUT = sys.stdout.buffer
IN = sys.stdin.buffer


def note(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def send_raw(body: bytes) -> None:
    OUT.write(len(body).to_bytes(4, "big") + body)
    OUT.flush()


def send(message: dict[str, Any]) -> None:
    send_raw(msgpack.packb(message, use_bin_type=True))


def hello(major: int = 1, max_concurrency: int = 4) -> None:
    send(
        {
            "type": "hello",
            "protocol_major": major,
            "protocol_minor": 0,
            "runtime": "raw",
            "pid": os.getpid(),
            "max_concurrency": max_concurrency,
            "methods": ["anything"],
        }
    )


def read_request() -> dict[str, Any]:
    header = IN.read(4)
    if len(header) < 4:
        sys.exit(0)
    body = IN.read(int.from_bytes(header, "big"))
    message: dict[str, Any] = msgpack.unpackb(body, raw=False, strict_map_key=False)
    return message


def read_call() -> dict[str, Any]:
    """The next request, skipping pings, cancels and the like."""
    while True:
        message = read_request()
        if message.get("type") == "request":
            return message


def deep_response(request_id: int, levels: int) -> bytes:
    head = msgpack.packb({"type": "response", "id": request_id})
    # Replace the 2-entry fixmap marker by a 3-entry one and append `result`.
    return bytes([0x83]) + head[1:] + msgpack.packb("result") + b"\x91" * levels + b"\x01"


def sleep_forever() -> None:
    time.sleep(60)


def main() -> None:
    mode = sys.argv[1]
    arg = sys.argv[2] if len(sys.argv) > 2 else ""
    if mode == "stdin_closed":
        # Takes one call, then closes its stdin and keeps running.
        hello()
        read_call()
        os.close(0)
        note("stdin closed")
        sleep_forever()
    elif mode == "deep_reply":
        # Takes two calls, then answers the first with a reply nested
        # `arg` arrays deep.
        hello()
        first = read_call()
        read_call()
        note("replying deep")
        send_raw(deep_response(first["id"], int(arg)))
        sleep_forever()
    elif mode == "deep_hello":
        body = msgpack.packb({"type": "hello", "protocol_major": 1})
        send_raw(bytes([0x83]) + body[1:] + msgpack.packb("extra") + b"\x91" * int(arg) + b"\x01")
        sleep_forever()
    elif mode == "huge_header":
        hello()
        read_call()
        OUT.write(b"\xff\xff\xff\xff")
        OUT.flush()
        sleep_forever()
    elif mode == "invalid_msgpack":
        hello()
        read_call()
        send_raw(b"\xc1")
        sleep_forever()
    elif mode == "sends_request":
        hello()
        read_call()
        send({"type": "request", "id": 1, "method": "host_method", "params": None})
        sleep_forever()
    elif mode == "hello_twice":
        hello()
        read_call()
        hello()
        sleep_forever()
    elif mode == "close_stdout":
        hello()
        read_call()
        os.close(1)
        note("stdout closed")
        sleep_forever()
    elif mode == "exit_at_first_request":
        hello()
        read_call()
        note("exiting")
        os._exit(5)
    elif mode == "garbage_before_hello":
        OUT.write(b"Loading model weights...\n")
        OUT.flush()
        hello()
        sleep_forever()
    elif mode == "version":
        hello(major=int(arg))
        sleep_forever()
    elif mode == "no_hello_stderr":
        note("warming up forever")
        sleep_forever()
    elif mode == "busy":
        # Answers nothing; spins the CPU once a call arrives.
        hello()
        read_call()
        note("spinning")
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pass
    elif mode == "silent":
        # Takes calls and never answers them.
        hello()
        while True:
            read_call()
    elif mode == "spawns_descendants":
        # Starts a child and a grandchild (`sleep 60` through a shell, in
        # the background), records their pids in the file `arg`, then serves
        # nothing until its stdin ends.
        hello()
        shell = subprocess.Popen(
            ["/bin/sh", "-c", "sleep 60 & echo $! ; sleep 60"],
            stdout=subprocess.PIPE,
        )
        assert shell.stdout is not None
        grandchild = shell.stdout.readline().decode().strip()
        with open(arg + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {shell.pid} {grandchild}\n")
        os.rename(arg + ".tmp", arg)
        while True:
            read_call()
    elif mode == "split_replies":
        # Echoes each call's params in order. A call to `split` gets its
        # reply in two halves, `arg` ms apart (default 300); a call to
        # `split_exit` too, and then the worker exits.
        hello()
        pause = int(arg or "300") / 1000
        while True:
            call = read_call()
            body = msgpack.packb(
                {"type": "response", "id": call["id"], "result": call["params"]}, use_bin_type=True
            )
            frame = len(body).to_bytes(4, "big") + body
            if call["method"] in ("split", "split_exit"):
                cut = 4 + len(body) // 2
                OUT.write(frame[:cut])
                OUT.flush()
                note(f"half of {call['id']} sent")
                time.sleep(pause)
                OUT.write(frame[cut:])
                OUT.flush()
                if call["method"] == "split_exit":
                    note("exiting")
                    os._exit(3)
            else:
                OUT.write(frame)
                OUT.flush()
    elif mode == "reverse_halves":
        # Takes `arg` calls, then answers them in reverse order, each reply
        # in two halves 20 ms apart.
        hello()
        calls = [read_call() for _ in range(int(arg))]
        for call in reversed(calls):
            body = msgpack.packb(
                {"type": "response", "id": call["id"], "result": call["params"]}, use_bin_type=True
            )
            frame = len(body).to_bytes(4, "big") + body
            cut = 4 + len(body) // 2
            OUT.write(frame[:cut])
            OUT.flush()
            time.sleep(0.02)
            OUT.write(frame[cut:])
            OUT.flush()
        sleep_forever()
    elif mode == "half_then":
        # Takes two calls, sends half of the first one's reply, then exits
        # (`arg` = "exit") or hangs (anything else).
        hello()
        first = read_call()
        read_call()
        body = msgpack.packb({"type": "response", "id": first["id"], "result": 1})
        send_part = (len(body).to_bytes(4, "big") + body)[: 4 + len(body) // 2]
        OUT.write(send_part)
        OUT.flush()
        note("half sent")
        if arg == "exit":
            time.sleep(0.1)
            os._exit(4)
        sleep_forever()
    elif mode == "journal":
        # Notes every message as "type:id" in arrival order; answers `hold`
        # requests only when `release` arrives, and `journal` with the notes.
        hello(max_concurrency=1024)
        seen: list[str] = []
        held: list[int] = []
        while True:
            message = read_request()
            seen.append(f"{message.get('type')}:{message.get('id')}")
            if message.get("type") != "request":
                continue
            method = message["method"]
            if method == "hold":
                held.append(message["id"])
                continue
            if method == "release":
                for held_id in held:
                    send({"type": "response", "id": held_id, "result": None})
                held.clear()
            result: Any = seen if method == "journal" else message.get("params")
            send({"type": "response", "id": message["id"], "result": result})
    else:
        note(f"unknown mode {mode}")
        sys.exit(2)


if __name__ == "__main__":
    main()
