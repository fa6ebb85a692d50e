"""Sequential small-call cost of the worker runtime vs a minimal MessagePack echo loop.

A measurement tool, not a test (speed is never asserted). Drives each worker over real
pipes with one request in flight at a time and prints, per variant and round:
wall p50 per call (µs), worker CPU per call (µs, all threads, from /proc/<pid>/task/*/schedstat),
worker context switches per call (all threads, /proc/<pid>/task/*/status), and the ratio of
each to the floor measured in the same round. Variants run interleaved, order alternating.

    python benchmarks/seq_bench.py [--rounds 5] [--calls 3000] [--variant NAME=SRC_DIR ...]

Each ``--variant NAME=SRC_DIR`` runs ``python -m portpool`` with ``SRC_DIR`` first on
PYTHONPATH (e.g. a copy of an older runtime: ``git show main:python/src/portpool/...``);
the default is this checkout's ``python/src``. ``--async`` calls an async handler instead;
``--both`` runs every variant with the sync and the async handler in each round and also prints
each variant's async/sync ratios (wall p50 and CPU) measured in the same round.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import msgpack

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE.parent / "src"

APP = """
import portpool
app = portpool.App()

@app.handler
def echo(params):
    return params

@app.handler
async def aecho(params):
    return params
"""

# The floor: read a frame, decode it, encode a response, write it. Nothing else.
FLOOR = """
import os, struct, msgpack
rd, wr = 0, 1
hdr = struct.Struct(">I")
def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(rd, n - len(buf))
        if not chunk:
            raise SystemExit(0)
        buf += chunk
    return buf
os.write(wr, hdr.pack(1) + msgpack.packb({}))  # "hello"
while True:
    (n,) = hdr.unpack(read_exact(4))
    msg = msgpack.unpackb(read_exact(n))
    body = msgpack.packb({"type": "response", "id": msg["id"], "result": msg["params"]})
    os.write(wr, hdr.pack(len(body)) + body)
"""


def _proc_totals(pid: int) -> tuple[float, int]:
    """(CPU seconds, context switches) summed over the process's live threads."""
    cpu_ns = 0
    switches = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                cpu_ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return cpu_ns / 1e9, switches


class Driver:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wr = self.proc.stdin.fileno()
        self.rd = self.proc.stdout.fileno()
        self.unpacker = msgpack.Unpacker(raw=False)
        self.buf = b""
        self.recv()  # hello

    def recv(self) -> dict:
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                    return msgpack.unpackb(body, raw=False)  # type: ignore[no-any-return]
            chunk = os.read(self.rd, 65536)
            if not chunk:
                raise EOFError("worker exited")
            self.buf += chunk

    def run(self, calls: int, method: str) -> tuple[float, float, float]:
        """Returns (p50 wall µs, CPU µs/call, context switches/call)."""
        params = {"a": 1, "b": "hello world!"}
        # warm up
        for i in range(200):
            self._call(i + 1, method, params)
        cpu0, sw0 = _proc_totals(self.proc.pid)
        times = []
        for i in range(calls):
            t = time.perf_counter_ns()
            self._call(1000 + i, method, params)
            times.append(time.perf_counter_ns() - t)
        cpu1, sw1 = _proc_totals(self.proc.pid)
        return statistics.median(times) / 1000, (cpu1 - cpu0) / calls * 1e6, (sw1 - sw0) / calls

    def _call(self, id_: int, method: str, params: object) -> None:
        body = msgpack.packb({"type": "request", "id": id_, "method": method, "params": params})
        os.write(self.wr, struct.pack(">I", len(body)) + body)
        reply = self.recv()
        assert reply.get("id") == id_ and "result" in reply, reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--async", dest="use_async", action="store_true")
    ap.add_argument("--both", action="store_true", help="sync and async handler, per variant")
    args = ap.parse_args()
    variants = [tuple(v.split("=", 1)) for v in args.variant] or [("this", str(SRC))]
    method = "aecho" if args.use_async else "echo"
    methods = [("", "echo"), ("/a", "aecho")] if args.both else [("", method)]

    with tempfile.TemporaryDirectory() as tmp:
        app = pathlib.Path(tmp, "bench_app.py")
        app.write_text(APP)
        floor = pathlib.Path(tmp, "floor.py")
        floor.write_text(FLOOR)
        runs: list[tuple[str, list[str], dict[str, str], str]] = [
            ("floor", [sys.executable, str(floor)], dict(os.environ), "echo")
        ]
        for name, src in variants:
            env = dict(os.environ, PYTHONPATH=src)
            for suffix, meth in methods:
                runs.append((name + suffix, [sys.executable, "-m", "portpool", str(app)], env, meth))

        print(
            f"load: {os.getloadavg()}  python {sys.version.split()[0]}"
            f"  calls/round {args.calls}  methods {[m for _, m in methods]}"
        )
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _, _ in runs}
        ratios: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _, _ in runs[1:]}
        async_ratios: dict[str, list[tuple[float, float]]] = {
            name: [] for name, _, _, _ in runs if name + "/a" in results
        }
        for rnd in range(args.rounds):
            order = runs if rnd % 2 == 0 else [runs[0]] + runs[:0:-1]
            row: dict[str, tuple[float, float, float]] = {}
            for name, argv, env, meth in order:
                d = Driver(argv, env)
                try:
                    row[name] = d.run(args.calls, meth)
                finally:
                    d.close()
                results[name].append(row[name])
            base = row["floor"]
            line = [f"round {rnd + 1} load {os.getloadavg()[0]:.2f}:"]
            for name, _, _, _ in runs:
                p50, cpu, sw = row[name]
                line.append(f"{name} p50 {p50:.1f}us cpu {cpu:.1f}us ctxsw {sw:.2f}")
                if name != "floor":
                    ratios[name].append((p50 / base[0], cpu / base[1]))
            for name in async_ratios:
                a, s_ = row[name + "/a"], row[name]
                async_ratios[name].append((a[0] / s_[0], a[1] / s_[1]))
            print("  ".join(line), flush=True)
        print("medians:")
        for name, _, _, _ in runs:
            rs = results[name]
            med = [statistics.median(r[i] for r in rs) for i in range(3)]
            extra = ""
            if name in ratios:
                wall = sorted(r[0] for r in ratios[name])
                cpu = sorted(r[1] for r in ratios[name])
                extra = (
                    f"  p50/floor {statistics.median(wall):.2f}x [{wall[0]:.2f}-{wall[-1]:.2f}]"
                    f"  cpu/floor {statistics.median(cpu):.2f}x [{cpu[0]:.2f}-{cpu[-1]:.2f}]"
                )
            print(
                f"  {name:8s} p50 {med[0]:7.1f}us  cpu {med[1]:7.1f}us/call  ctxsw {med[2]:.2f}/call{extra}"
            )
        for name, rs_ in async_ratios.items():
            wall = sorted(r[0] for r in rs_)
            cpu = sorted(r[1] for r in rs_)
            print(
                f"  {name:8s} async/sync p50 {statistics.median(wall):.2f}x [{wall[0]:.2f}-{wall[-1]:.2f}]"
                f"  cpu {statistics.median(cpu):.2f}x [{cpu[0]:.2f}-{cpu[-1]:.2f}]"
            )


if __name__ == "__main__":
    main()
