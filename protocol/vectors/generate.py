"""Regenerates vectors.json (frames as hex) from messages.json with msgpack.

Run: python protocol/vectors/generate.py. The Rust and Python test suites
both check every vector; this script only writes the file.
"""

from __future__ import annotations

import json
import pathlib
import struct
from typing import Any

import msgpack

HERE = pathlib.Path(__file__).parent


def from_json(value: Any) -> Any:
    """JSON form -> msgpack-ready value; {"$bin": hex} is a bin payload."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def main() -> None:
    messages = json.loads((HERE / "messages.json").read_text())
    vectors = []
    for entry in messages:
        body = msgpack.packb(from_json(entry["message"]), use_bin_type=True)
        frame = struct.pack(">I", len(body)) + body
        vectors.append({"name": entry["name"], "message": entry["message"], "frame": frame.hex()})
    # Decode-only vectors: what a peer must accept.
    unknown = msgpack.packb(
        {"type": "request", "id": 1, "method": "echo", "params": "hi", "future_field": [1, 2]},
        use_bin_type=True,
    )
    vectors.append(
        {
            "name": "request_unknown_field",
            "decode_only": True,
            "equals": "request_minimal",
            "frame": (struct.pack(">I", len(unknown)) + unknown).hex(),
        }
    )
    (HERE / "vectors.json").write_text(json.dumps({"protocol": "1.0", "vectors": vectors}, indent=1) + "\n")


if __name__ == "__main__":
    main()
