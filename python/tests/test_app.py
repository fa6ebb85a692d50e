"""Unit tests of App registration (no process)."""

from __future__ import annotations

import functools
from typing import Any

import pytest

import portpool
from portpool.app import Context, HandlerKind


def test_decorator_forms_and_sorted_methods() -> None:
    app = portpool.App(max_concurrency=2)

    @app.handler
    def zeta(params: Any) -> Any:
        return params

    @app.handler("alpha")
    def named(params: Any, ctx: Context) -> Any:
        return ctx.request_id

    @app.handler(name="mid")
    async def coro(params: Any) -> Any:
        return params

    assert zeta(1) == 1  # the decorator returns the function unchanged
    assert app.methods == ["alpha", "mid", "zeta"]
    h = app.get_handler("alpha")
    assert h is not None and h.takes_ctx and h.kind is HandlerKind.SYNC
    h = app.get_handler("mid")
    assert h is not None and not h.takes_ctx and h.kind is HandlerKind.ASYNC


def test_handler_kinds_and_arity() -> None:
    app = portpool.App()

    def gen(params: Any) -> Any:
        yield params

    async def agen(params: Any, ctx: Context) -> Any:
        yield params

    def zero() -> int:
        return 0

    def varargs(*args: Any) -> Any:
        return args

    async def two(a: Any, b: Any) -> Any:
        return a

    class Callable_:
        async def __call__(self, params: Any, ctx: Any) -> Any:
            return params

    app.add_handler(gen)
    app.add_handler(agen)
    app.add_handler(zero)
    app.add_handler(varargs)
    app.add_handler(functools.partial(two, 1), "partial")
    app.add_handler(Callable_(), "obj")
    expected = {
        "gen": (HandlerKind.SYNC_GEN, True, False),
        "agen": (HandlerKind.ASYNC_GEN, True, True),
        "zero": (HandlerKind.SYNC, False, False),
        "varargs": (HandlerKind.SYNC, True, True),
        "partial": (HandlerKind.ASYNC, True, False),
        "obj": (HandlerKind.ASYNC, True, True),
    }
    for name, (kind, params, ctx) in expected.items():
        h = app.get_handler(name)
        assert h is not None
        assert (h.kind, h.takes_params, h.takes_ctx) == (kind, params, ctx), name


@pytest.mark.parametrize("name", ["_portpool", "_portpool_ping", "_portpoolx"])
def test_reserved_names(name: str) -> None:
    app = portpool.App()
    with pytest.raises(ValueError, match="reserved"):
        app.handler(name)(lambda p: p)


def test_duplicates_and_bad_arguments() -> None:
    app = portpool.App()
    app.handler("x")(lambda p: p)
    with pytest.raises(ValueError, match="already registered"):
        app.handler("x")(lambda p: p)
    with pytest.raises(ValueError):
        app.handler("")(lambda p: p)
    with pytest.raises(ValueError, match="params, ctx"):
        app.handler("three")(lambda a, b, c: a)
    with pytest.raises(ValueError, match="keyword-only"):

        @app.handler
        def kw(params: Any, *, required: int) -> None: ...

    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            portpool.App(max_concurrency=bad)  # type: ignore[arg-type]


def test_context_remaining() -> None:
    ctx = Context(1, "m")
    assert ctx.remaining() is None and not ctx.cancelled.is_set()
    import time

    ctx = Context(1, "m", deadline=time.monotonic() + 10)
    remaining = ctx.remaining()
    assert remaining is not None and 9 < remaining <= 10
    assert "request_id=1" in repr(ctx)
