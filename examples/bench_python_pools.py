"""Scenario 6 of `portpool bench`: Python's own process pools doing scenarios 1 and 2.

Prints one JSON object: for multiprocessing.Pool and ProcessPoolExecutor,
sequential small-call latency on 1 process (p50/p99 in microseconds) and
throughput (calls/s) with N processes and many calls in flight (chunksize 1).

    python examples/bench_python_pools.py --workers 2 --seconds 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import statistics
import time
from typing import Any, Callable

PAYLOAD = {"n": 1, "s": "hello, portpool"}


def echo(params: Any) -> Any:
    return params


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def latency(call_one: Callable[[], Any], seconds: float) -> dict[str, float]:
    for _ in range(200):  # warm up
        call_one()
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        call_one()
        samples.append((time.perf_counter() - t) * 1e6)
    samples.sort()
    return {
        "calls": len(samples),
        "p50_us": _percentile(samples, 0.50),
        "p99_us": _percentile(samples, 0.99),
        "mean_us": statistics.fmean(samples),
    }


def throughput(run_batch: Callable[[int], int], seconds: float, batch: int) -> dict[str, float]:
    run_batch(batch)  # warm up
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += run_batch(batch)
    elapsed = time.perf_counter() - start
    return {"calls": done, "seconds": elapsed, "calls_per_s": done / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("fork")
    out: dict[str, Any] = {"workers": args.workers}

    with ctx.Pool(1) as pool:
        out["mp_pool_latency"] = latency(lambda: pool.apply(echo, (PAYLOAD,)), args.seconds)
    with ctx.Pool(args.workers) as pool:

        def mp_batch(n: int) -> int:
            return sum(1 for _ in pool.imap_unordered(echo, [PAYLOAD] * n, chunksize=1))

        out["mp_pool_throughput"] = throughput(mp_batch, args.seconds, args.batch)

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        out["executor_latency"] = latency(lambda: ex.submit(echo, PAYLOAD).result(), args.seconds)
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=ctx) as ex:

        def ex_batch(n: int) -> int:
            futures = [ex.submit(echo, PAYLOAD) for _ in range(n)]
            for f in futures:
                f.result()
            return n

        out["executor_throughput"] = throughput(ex_batch, args.seconds, args.batch)

    print(json.dumps(out))


if __name__ == "__main__":
    main()
