"""The decoding floor of `portpool bench`: the least a Python worker must do per call.

Reads each frame (a 4-byte big-endian length, then a MessagePack body) from
stdin, decodes the request with msgpack, and writes back a response shaped and
encoded like the runtime's: ``{type: "response", id, result: params}``, packed
with ``use_bin_type=True``. One thread, no portpool, no validation.
"""

import struct
import sys

import msgpack


def main() -> None:
    read = sys.stdin.buffer.read
    out = sys.stdout.buffer
    header = struct.Struct(">I")
    while True:
        head = read(4)
        if len(head) < 4:
            return
        request = msgpack.unpackb(read(header.unpack(head)[0]), raw=False, strict_map_key=False)
        body = msgpack.packb(
            {"type": "response", "id": request["id"], "result": request["params"]},
            use_bin_type=True,
        )
        out.write(header.pack(len(body)) + body)
        out.flush()


if __name__ == "__main__":
    main()
