"""portpool.app reads a plain function's kind and arity off its code object (no inspect import
at a worker's start); anything else goes through inspect. Both must agree everywhere."""

from __future__ import annotations

import functools
import inspect
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conftest import worker_env

from portpool import App
from portpool.app import (
    Handler,
    HandlerKind,
    _arity,
    _arity_by_inspect,
    _kind_by_inspect,
    _kind_of,
    _plain_function,
)


def f0() -> None: ...
def f1(p): ...  # noqa: ANN001, ANN201
def f2(p, ctx): ...  # noqa: ANN001, ANN201
def f1d(p=1): ...  # noqa: ANN001, ANN201
def f2d(p, ctx=None): ...  # noqa: ANN001, ANN201
def f3d(p, ctx, extra=None): ...  # noqa: ANN001, ANN201
def f3(p, ctx, extra): ...  # noqa: ANN001, ANN201
def fvar(*args): ...  # noqa: ANN002, ANN201
def f1var(p, *args): ...  # noqa: ANN001, ANN002, ANN201
def fkw(p, **kw): ...  # noqa: ANN001, ANN003, ANN201
def fkwonly_default(p, *, k=1): ...  # noqa: ANN001, ANN201
def fkwonly_required(p, *, k): ...  # noqa: ANN001, ANN201
def fposonly(p, /): ...  # noqa: ANN001, ANN201
def fposonly2(p, ctx, /): ...  # noqa: ANN001, ANN201
def gen(p):
    yield p  # noqa: ANN001, ANN201, E704


async def coro(p): ...  # noqa: ANN001, ANN201
async def agen(p):
    yield p  # noqa: ANN001, ANN201, E704


def _wrapped(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any) -> Any:
        return func(*args)

    return wrapper


def _with_signature() -> Callable[..., Any]:
    def g(*args: Any) -> None: ...

    g.__signature__ = inspect.signature(f2)  # type: ignore[attr-defined]
    return g


class _Obj:
    def method(self, p: Any) -> None: ...

    async def __call__(self, p: Any, ctx: Any) -> None: ...


CASES: list[Any] = [
    f0, f1, f2, f1d, f2d, f3d, f3, fvar, f1var, fkw, fkwonly_default, fkwonly_required, fposonly, fposonly2,
    gen, coro, agen, lambda: 1, lambda p: p, lambda p, c: p,
    _wrapped(coro), _wrapped(f1), _with_signature(), functools.partial(f2, 1), _Obj().method, _Obj(), print,
]  # fmt: skip


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ValueError as exc:
        return ("ValueError", str(exc))


@pytest.mark.parametrize("func", CASES, ids=lambda f: getattr(f, "__name__", type(f).__name__))
def test_code_object_reading_agrees_with_inspect(func: Any) -> None:
    assert _kind_of(func) == _kind_by_inspect(func)
    assert _outcome(lambda: _arity("h", func)) == _outcome(lambda: _arity_by_inspect("h", func))


def test_which_functions_are_read_off_their_code() -> None:
    assert _plain_function(f1) and _plain_function(coro) and _plain_function(lambda: 1)
    assert not _plain_function(_wrapped(f1))  # functools.wraps: inspect follows __wrapped__
    assert not _plain_function(_with_signature())
    assert not _plain_function(functools.partial(f1))
    assert not _plain_function(_Obj().method)
    assert not _plain_function(print)
    assert _kind_of(_wrapped(coro)) is HandlerKind.SYNC  # as inspect says: the wrapper is a plain def
    assert _kind_of(_Obj()) is HandlerKind.ASYNC


def test_handler_records_are_immutable_values() -> None:
    app = App()
    app.add_handler(f2, "h")
    handler = app.get_handler("h")
    assert handler == Handler("h", f2, HandlerKind.SYNC, True, True)
    assert hash(handler) == hash(Handler("h", f2, HandlerKind.SYNC, True, True))
    assert handler != Handler("h", f1, HandlerKind.SYNC, True, False)
    assert "Handler(name='h'" in repr(handler)
    with pytest.raises(AttributeError):
        handler.name = "other"  # type: ignore[misc]


def test_importing_portpool_imports_no_typing_inspect_or_asyncio() -> None:
    code = (
        "import sys, portpool, portpool.protocol\n"
        "heavy = ('typing', 'inspect', 'dataclasses', 'asyncio', 'traceback')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(portpool.protocol.RequestMessage.__name__, 'typing' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=worker_env(), check=True
    )
    assert out.stdout.split("\n")[:2] == ["[]", "RequestMessage True"]  # the types resolve on first use
