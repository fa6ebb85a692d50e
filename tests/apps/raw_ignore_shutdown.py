"""A raw worker (no runtime) that ignores shutdown, stdin EOF and SIGTERM."""

import os
import signal
import time

from portpool import protocol

signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.write(1, protocol.encode(protocol.hello_message(
    runtime_version="raw", pid=os.getpid(), max_concurrency=4, methods=["echo"])))
while os.read(0, 65536):
    pass
time.sleep(600)
