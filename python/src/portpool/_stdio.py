"""The process's standard streams and environment: the protocol moved off fds 0 and 1,
diagnostics on stderr, settings read from the environment, fd helpers.
"""

from __future__ import annotations

import io
import os
import sys

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    from typing import Any


_MAX_GRACE = 24 * 3600.0


def _log(text: str) -> None:
    """Writes one diagnostic line to stderr (never to the protocol fd)."""
    try:
        sys.stderr.write(f"portpool[{os.getpid()}]: {text}\n")
        sys.stderr.flush()
    except Exception:  # stderr gone: nothing sensible left to do
        pass


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        _log(f"ignoring {name}={raw!r}: not an integer")
        return default
    if value < 0:
        _log(f"ignoring {name}={raw!r}: negative")
        return default
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        _log(f"ignoring {name}={raw!r}: not a number")
        return default
    if not value >= 0:
        _log(f"ignoring {name}={raw!r}: negative")
        return default
    return min(value, _MAX_GRACE)


def redirect_stdio() -> tuple[int, int]:
    """Moves the protocol off fds 0 and 1; returns ``(in_fd, out_fd)``.

    fd 1 then points at stderr (so ``print()``, C code and child processes
    writing to stdout cannot corrupt frames) and fd 0 at ``/dev/null`` (so
    nothing else can consume protocol input). ``sys.stdout`` is rebuilt on the
    new fd 1, line-buffered.
    """
    for stream in (sys.stdout, sys.__stdout__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    out_fd = os.dup(1)  # dup'ed fds are non-inheritable: child processes do not get them
    os.dup2(2, 1)
    in_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
    finally:
        os.close(devnull)
    os.set_blocking(in_fd, True)
    os.set_blocking(out_fd, True)
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )
    return in_fd, out_fd


def _set_blocking(fd: int) -> None:
    try:
        if not os.get_blocking(fd):
            os.set_blocking(fd, True)
    except OSError:
        pass


def _readable(poller: Any) -> bool:
    """Whether input is waiting on the fd ``poller`` watches (or it reports an error: so will a read)."""
    try:
        return bool(poller.poll(0))
    except OSError:
        return False
