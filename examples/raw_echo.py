"""The raw floor of `portpool bench`: the least a Python process can do per frame.

Reads a 4-byte big-endian length and the body from stdin and writes the same
frame back to stdout, without decoding it. No portpool, no msgpack.
"""

import sys


def main() -> None:
    read = sys.stdin.buffer.read
    out = sys.stdout.buffer
    while True:
        header = read(4)
        if len(header) < 4:
            return
        body = read(int.from_bytes(header, "big"))
        out.write(header + body)
        out.flush()


if __name__ == "__main__":
    main()
