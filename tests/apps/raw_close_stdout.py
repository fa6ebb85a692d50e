"""A raw worker (no runtime): says hello, closes its stdout at the first
request, then sleeps."""

import os
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
os.close(1)
time.sleep(60)
