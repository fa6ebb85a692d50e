"""A raw worker (no runtime) that ignores PORTPOOL_MAX_FRAME: answers the
first request with a frame header far over the limit."""

import os
import struct
import time

from portpool import protocol

os.write(1, protocol.encode(protocol.hello_message(
    runtime_version="raw", pid=os.getpid(), max_concurrency=4, methods=["echo"])))
reader = protocol.FrameReader(1 << 20)
while True:
    data = os.read(0, 65536)
    if not data:
        raise SystemExit(0)
    if list(reader.feed(data)):
        break
limit = int(os.environ["PORTPOOL_MAX_FRAME"])
os.write(1, struct.pack(">I", limit * 4) + b"\x80" * 1024)
time.sleep(60)
