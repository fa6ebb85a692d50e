"""Handlers measured by `portpool bench` (`cargo xtask bench`).

PORTPOOL_BENCH_IMPORT_DELAY (seconds) makes importing this app slow, to
measure cold starts; PORTPOOL_BENCH_CONCURRENCY sets max_concurrency;
PORTPOOL_BENCH_SYNC_ONLY=1 leaves out the async handlers (and asyncio): a
worker of such an app runs without an event loop (cold start row 4c).
"""

from __future__ import annotations

import os
import time
from typing import Any

import portpool

_delay = float(os.environ.get("PORTPOOL_BENCH_IMPORT_DELAY", "0") or 0)
if _delay > 0:
    time.sleep(_delay)  # stands in for importing torch, dspy, a model...

app = portpool.App(max_concurrency=int(os.environ.get("PORTPOOL_BENCH_CONCURRENCY", "128")))


@app.handler
def echo(params: Any) -> Any:
    """Sync handler (runs on the worker's thread pool)."""
    return params


if os.environ.get("PORTPOOL_BENCH_SYNC_ONLY") != "1":
    import asyncio

    @app.handler
    async def aecho(params: Any) -> Any:
        """Async handler (runs on the worker's event loop)."""
        return params

    @app.handler
    async def sleep_ms(params: Any) -> Any:
        """I/O-bound: awaits `params` milliseconds."""
        await asyncio.sleep(float(params) / 1000.0)
        return None
