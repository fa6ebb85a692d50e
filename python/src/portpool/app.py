"""The user-facing API: :class:`App` (handler registry), :class:`Context`, :class:`HandlerError`."""

from __future__ import annotations

import enum
import threading
import time
import types

# Not imported at run time (a worker's cold start pays for every module it imports; typing,
# inspect and dataclasses cost more CPU than the rest of the runtime): inspect only for
# handlers that are not plain functions (see _plain_function).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn, TypeVar, overload

    F = TypeVar("F", bound=Callable[..., Any])
else:

    def overload(func):  # noqa: ANN001, ANN202 - typing.overload for mypy; the last def wins at run time
        return func


__all__ = ["App", "Context", "HandlerError", "RESERVED_PREFIX"]

RESERVED_PREFIX = "_portpool"


class HandlerError(Exception):
    """An application error that carries structured ``data`` (and optionally a wire ``type``).

    Any exception raised by a handler becomes an error response; raise this one
    to attach ``data`` (any MessagePack-encodable value) or to choose the error
    ``type`` sent on the wire (default: ``"HandlerError"``).
    """

    def __init__(self, message: str, *, data: Any = None, type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.type = type


class Context:
    """Per-request information handed to handlers that accept a second argument.

    Attributes:
        request_id: the request's id (unique among in-flight requests).
        method: the method name that was called.
        session_id: the request's session id, or ``None``.
        session: a dict kept by the worker for ``session_id`` until the host
            sends ``session_close`` for it; ``None`` when the request has no session.
        deadline: ``time.monotonic()`` value by which the caller gives up, or ``None``.
        trace: the request's opaque trace context string, or ``None``.
        cancelled: a ``threading.Event`` set when the host cancels the request
            (or the worker is shutting down). Sync handlers should poll it;
            async handlers are additionally cancelled with ``CancelledError``.
    """

    __slots__ = ("request_id", "method", "session_id", "session", "deadline", "trace", "cancelled")

    def __init__(
        self,
        request_id: int,
        method: str,
        *,
        session_id: str | None = None,
        session: dict[str, Any] | None = None,
        deadline: float | None = None,
        trace: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.method = method
        self.session_id = session_id
        self.session = session
        self.deadline = deadline
        self.trace = trace
        self.cancelled = threading.Event()

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or ``None`` without a deadline."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def __repr__(self) -> str:
        return (
            f"Context(request_id={self.request_id!r}, method={self.method!r}, "
            f"session_id={self.session_id!r}, cancelled={self.cancelled.is_set()})"
        )


class HandlerKind(enum.Enum):
    SYNC = "sync"
    ASYNC = "async"
    SYNC_GEN = "sync_gen"
    ASYNC_GEN = "async_gen"


class Handler:
    """A registered handler and how to call it (immutable)."""

    __slots__ = ("name", "func", "kind", "takes_params", "takes_ctx")

    name: str
    func: Callable[..., Any]
    kind: HandlerKind
    takes_params: bool
    takes_ctx: bool

    def __init__(
        self, name: str, func: Callable[..., Any], kind: HandlerKind, takes_params: bool, takes_ctx: bool
    ) -> None:
        init = object.__setattr__
        init(self, "name", name)
        init(self, "func", func)
        init(self, "kind", kind)
        init(self, "takes_params", takes_params)
        init(self, "takes_ctx", takes_ctx)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Handler is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Handler is immutable: cannot delete {name!r}")

    def _fields(self) -> tuple[Any, ...]:
        return (self.name, self.func, self.kind, self.takes_params, self.takes_ctx)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Handler:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Handler(name={self.name!r}, func={self.func!r}, kind={self.kind!r}, "
            f"takes_params={self.takes_params!r}, takes_ctx={self.takes_ctx!r})"
        )

    def call(self, params: Any, ctx: Context | None) -> Any:
        """Calls the handler; ``ctx`` may be None when it does not take one (``takes_ctx`` is False)."""
        if self.takes_ctx:
            return self.func(params, ctx)
        if self.takes_params:
            return self.func(params)
        return self.func()


# Code flags (as inspect reads them): see _plain_function.
_CO_VARARGS = 0x04
_CO_GENERATOR = 0x20
_CO_COROUTINE = 0x80
_CO_ASYNC_GENERATOR = 0x200


def _plain_function(func: Any) -> bool:
    """A ``def`` or ``lambda`` with nothing inspect would unwrap or take instead of its code
    (``functools.wraps``, ``__signature__``, ``partialmethod``, ``markcoroutinefunction``):
    its kind and signature are read off its code object, as inspect would, without
    importing inspect (see the module's imports). Anything else goes through inspect."""
    return type(func) is types.FunctionType and not any(
        hasattr(func, attr)
        for attr in (
            "__wrapped__",
            "__signature__",
            "_partialmethod",
            "__partialmethod__",
            "_is_coroutine_marker",
        )
    )


def _kind_of(func: Callable[..., Any]) -> HandlerKind:
    if _plain_function(func):
        flags = func.__code__.co_flags
        if flags & _CO_ASYNC_GENERATOR:
            return HandlerKind.ASYNC_GEN
        if flags & _CO_COROUTINE:
            return HandlerKind.ASYNC
        if flags & _CO_GENERATOR:
            return HandlerKind.SYNC_GEN
        return HandlerKind.SYNC
    return _kind_by_inspect(func)


def _kind_by_inspect(func: Callable[..., Any]) -> HandlerKind:
    # Functions, bound methods and functools.partial are recognized by inspect; for other
    # callable objects, look at their __call__ method.
    import inspect

    candidates: list[Any] = [func]
    if not (inspect.isfunction(func) or inspect.ismethod(func) or isinstance(func, type)):
        candidates.append(getattr(func, "__call__", None))  # noqa: B004
    for target in candidates:
        if inspect.isasyncgenfunction(target):
            return HandlerKind.ASYNC_GEN
        if inspect.iscoroutinefunction(target):
            return HandlerKind.ASYNC
        if inspect.isgeneratorfunction(target):
            return HandlerKind.SYNC_GEN
    return HandlerKind.SYNC


def _arity(name: str, func: Callable[..., Any]) -> tuple[bool, bool]:
    """Returns (takes_params, takes_ctx) from the signature."""
    if _plain_function(func):
        code = func.__code__
        positional = code.co_argcount  # positional-only and positional-or-keyword
        keyword_only = code.co_varnames[positional : positional + code.co_kwonlyargcount]
        kw_defaults = func.__kwdefaults__ or {}
        required = positional - len(func.__defaults__ or ())
        if all(p in kw_defaults for p in keyword_only) and required <= 2:  # else: inspect's error
            if code.co_flags & _CO_VARARGS or positional >= 2:
                return True, True
            return positional == 1, False
    return _arity_by_inspect(name, func)


def _arity_by_inspect(name: str, func: Callable[..., Any]) -> tuple[bool, bool]:
    import inspect

    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return True, False  # builtins without a signature: call with params only
    positional = 0
    var_positional = False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
        elif p.kind is p.VAR_POSITIONAL:
            var_positional = True
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise ValueError(f"handler {name!r}: required keyword-only parameter {p.name!r} is not supported")
    if var_positional or positional >= 2:
        required = [
            p
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        if len(required) > 2:
            raise ValueError(f"handler {name!r} must take (params) or (params, ctx), not {sig}")
        return True, True
    return positional == 1, False


class App:
    """A set of named handlers served by one worker process.

    ::

        app = portpool.App(max_concurrency=8)

        @app.handler
        def echo(params):
            return params

        @app.handler("sum")
        async def total(params, ctx):
            return sum(params)

    Handlers take ``(params)`` or ``(params, ctx)`` (see :class:`Context`) and
    may be sync functions (run on a thread pool), ``async def`` coroutines (run
    on the event loop), or sync/async generators (each item is streamed as a
    ``chunk``). Run with ``python -m portpool path/to/app.py`` or ``module:app``.
    """

    def __init__(self, max_concurrency: int = 16, *, name: str | None = None) -> None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self.name = name
        self._handlers: dict[str, Handler] = {}

    @overload
    def handler(self, func: F, /) -> F: ...

    @overload
    def handler(self, name: str | None = None, /) -> Callable[[F], F]: ...  # noqa: F811 - see overload

    @overload
    def handler(self, *, name: str) -> Callable[[F], F]: ...  # noqa: F811

    def handler(self, func: Any = None, *, name: Any = None) -> Any:  # noqa: F811
        """Registers a handler: ``@app.handler``, ``@app.handler("name")``, ``@app.handler(name="name")``."""
        if callable(func):
            self.add_handler(func, name)
            return func
        if func is not None and name is not None:
            raise TypeError("give the handler name once")
        if func is not None and not isinstance(func, str):
            raise TypeError(f"handler name must be a str, got {func!r}")
        chosen: str | None = func if func is not None else name

        def decorator(f: F) -> F:
            self.add_handler(f, chosen)
            return f

        return decorator

    def add_handler(self, func: Callable[..., Any], name: str | None = None) -> None:
        """Registers ``func`` under ``name`` (default: its ``__name__``)."""
        if not callable(func):
            raise TypeError(f"handler must be callable, got {func!r}")
        if name is None:
            name = getattr(func, "__name__", None)
            if not isinstance(name, str):
                raise ValueError(f"cannot infer a name for handler {func!r}; pass one")
        if not isinstance(name, str) or not name:
            raise ValueError(f"handler name must be a non-empty str, got {name!r}")
        if name.startswith(RESERVED_PREFIX):
            raise ValueError(f"handler name {name!r} is reserved: names starting with {RESERVED_PREFIX!r}")
        if name in self._handlers:
            raise ValueError(f"a handler named {name!r} is already registered")
        takes_params, takes_ctx = _arity(name, func)
        self._handlers[name] = Handler(name, func, _kind_of(func), takes_params, takes_ctx)

    @property
    def methods(self) -> list[str]:
        """Registered method names, sorted."""
        return sorted(self._handlers)

    def get_handler(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def run(self) -> NoReturn:
        """Serves this app on stdin/stdout, as ``python -m portpool`` would, then exits the process.

        For scripts ending in ``if __name__ == "__main__": app.run()``. Output
        written to fd 1 before this call is not protected from mixing with frames.
        """
        from portpool._cli import serve_app

        serve_app(self)

    def __repr__(self) -> str:
        return f"App(max_concurrency={self.max_concurrency}, methods={self.methods!r})"
