"""What a fork server would buy on bench row 4 (a measurement, not product code).

    python docs/fork_server_prototype.py examples/bench_app.py [ROUNDS]

With no argument beyond the app it alternates, ROUNDS times, a "zygote" that starts 1 worker
and one that starts 8: the zygote (a fresh interpreter) imports the runtime and the app
(PORTPOOL_BENCH_IMPORT_DELAY=0.5) once, forks the workers, each serving the app on pipes of
its own, and reports when every hello was read. None of the host's supervision is here (no
stub, no process groups, no fd passing): see docs/fork-server.md.
"""

import os
import statistics
import struct
import subprocess
import sys
import time


def zygote(app_spec: str, n: int, t0: float) -> None:
    from portpool._cli import serve_app
    from portpool._loader import load_app

    app = load_app(app_spec)
    pipes = []
    for _ in range(n):
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        if os.fork() == 0:
            os.close(in_w)
            os.close(out_r)
            serve_app(app, (in_r, out_w))
        os.close(in_r)
        os.close(out_w)
        pipes.append((in_w, out_r))
    for _, out_r in pipes:
        need = struct.unpack(">I", os.read(out_r, 4))[0]
        body = b""
        while len(body) < need:
            body += os.read(out_r, need - len(body))
    print(f"{time.time() - t0:.3f}", flush=True)
    for in_w, _ in pipes:
        os.close(in_w)  # end of input: each worker exits
    for _ in pipes:
        os.wait()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--zygote":
        zygote(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    app_spec = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    env = dict(os.environ, PORTPOOL_BENCH_IMPORT_DELAY="0.5")
    took: dict[int, list[float]] = {1: [], 8: []}
    for r in range(rounds):
        for n in (1, 8) if r % 2 == 0 else (8, 1):
            cmd = [sys.executable, __file__, "--zygote", app_spec, str(n), repr(time.time())]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            took[n].append(float(out.stdout))
    ratios = [a / b for a, b in zip(took[8], took[1])]
    print(
        f"fork model: 8 workers {statistics.median(took[8]):.3f} s, 1 worker {statistics.median(took[1]):.3f} s; "
        f"8 vs 1: median {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}); "
        f"load {' '.join(open('/proc/loadavg').read().split()[:3])}"
    )


if __name__ == "__main__":
    main()
