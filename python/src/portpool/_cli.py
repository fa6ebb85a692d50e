"""``python -m portpool APP``, and :func:`serve_app` behind :meth:`App.serve`."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from portpool import protocol
from portpool._exit import EXIT_APP_ERROR, EXIT_OK, _exit
from portpool._loader import AppLoadError, load_app
from portpool._runtime import DEFAULT_SHUTDOWN_GRACE, Runtime
from portpool._stdio import _env_float, _env_int, _log, redirect_stdio
from portpool.app import App

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    import asyncio
    from typing import NoReturn

ENV_MAX_FRAME = "PORTPOOL_MAX_FRAME"
ENV_SHUTDOWN_GRACE = "PORTPOOL_SHUTDOWN_GRACE"
# Microseconds a handler thread polls the input before a blocking read (set by the host for
# WorkerCommand::spin; absent: 0, no spinning). At most a second.
ENV_SPIN_US = "PORTPOOL_SPIN_US"
_MAX_SPIN_US = 1_000_000

ENV_UVLOOP = "PORTPOOL_UVLOOP"
ENV_FORK_SERVER = "PORTPOOL_FORK_SERVER"


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop with ``PORTPOOL_UVLOOP=1`` (when uvloop is installed), else asyncio's.

    Opt-in: measured here, uvloop saved no CPU per async call and woke the watcher thread
    about once per call (4 context switches per call instead of 1).
    """
    import asyncio

    if os.environ.get(ENV_UVLOOP, "").strip() == "1":
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            pass
        else:
            new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return new_loop()
    return asyncio.new_event_loop()


def serve_app(app: App, fds: tuple[int, int] | None = None) -> NoReturn:
    """Serves ``app`` on ``fds`` (``(in_fd, out_fd)``; default: redirect stdio now) and exits the process."""
    in_fd, out_fd = redirect_stdio() if fds is None else fds
    runtime = Runtime(
        app,
        in_fd,
        out_fd,
        max_frame=_env_int(ENV_MAX_FRAME, protocol.DEFAULT_MAX_FRAME),
        shutdown_grace=_env_float(ENV_SHUTDOWN_GRACE, DEFAULT_SHUTDOWN_GRACE),
        spin=min(_env_int(ENV_SPIN_US, 0), _MAX_SPIN_US) / 1e6,
    )
    try:
        if runtime.needs_loop:
            # Not asyncio.run(): its teardown waits for leftover tasks and executor threads, which
            # a misbehaving handler could make last forever. The process exits right after this.
            import asyncio

            loop = _new_event_loop()
            asyncio.set_event_loop(loop)
            code = loop.run_until_complete(runtime.run())
        else:  # no async handlers: no event loop, and asyncio is never imported (cold start)
            code = runtime.run_without_loop()
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        _log("the runtime failed:\n" + traceback.format_exc())
        code = EXIT_APP_ERROR
    if not runtime.close():
        _log("could not flush all output to the host in time")
    # On end of input the host is gone or done with us: nothing this worker started may outlive it.
    _exit(code, run_atexit=code == EXIT_OK, kill_group=code == EXIT_OK and runtime.stopped_on_eof)


def load_or_exit(spec: str) -> App:
    """Imports the app named by ``spec``, or says why on stderr and exits (code 1, or the app's own)."""
    try:
        app = load_app(spec)
    except AppLoadError as exc:
        _log(f"cannot load app {spec!r}: {exc}")
        _exit(EXIT_APP_ERROR)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            _exit(0)
        if isinstance(code, int):
            _log(f"app {spec!r} called sys.exit({code}) while importing")
            _exit(code)
        _log(f"app {spec!r} exited while importing: {code}")
        _exit(EXIT_APP_ERROR)
    except BaseException:
        import traceback

        sys.stderr.write(traceback.format_exc())
        _log(f"importing app {spec!r} failed (traceback above)")
        _exit(EXIT_APP_ERROR)
    return app


USAGE = """\
usage: python -m portpool APP

Serves a portpool App over stdin/stdout (4-byte length-prefixed MessagePack frames).
APP is a path to a .py file (its module-level App instance is used, e.g. `app`),
a module name, or module:attr / file.py:attr naming the App.

Environment: PORTPOOL_MAX_FRAME (bytes, default 67108864),
PORTPOOL_SHUTDOWN_GRACE (seconds, default 5), PORTPOOL_UVLOOP=1 (uvloop's
event loop, if installed), PORTPOOL_SPIN_US (microseconds to poll the input before
each blocking read; default 0, off).

python -m portpool APP --listen HOST:PORT [...] serves APP to remote hosts over
TCP (+TLS), authenticated with a shared secret: see `python -m portpool APP
--listen HOST:PORT --help` and docs/remote.md.
"""


def main(argv: list[str] | None = None) -> NoReturn:
    """``python -m portpool APP``."""
    args = sys.argv[1:] if argv is None else argv
    if any(a == "--listen" or a.startswith("--listen=") for a in args):
        # A listener (docs/remote.md): it serves no frames on its own stdio and runs no app
        # code itself (its child runtime does), so none of the below applies to it.
        from portpool._listen import main as listen_main

        listen_main(args)
    # SIGTERM must end the worker promptly, whatever disposition the parent left us.
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if os.environ.get(ENV_FORK_SERVER) == "1" and len(args) == 1 and not args[0].startswith("-"):
        # The fork server of WorkerCommand::fork_server (docs/fork-server.md): fd 0 is a socket.
        from portpool._forkserver import serve_forks

        serve_forks(args[0])
    # First of all, before any app code runs: move the protocol off fds 0 and 1.
    fds = redirect_stdio()
    if len(args) == 1 and args[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        _exit(EXIT_OK)
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write(USAGE)
        _exit(EXIT_APP_ERROR)
    serve_app(load_or_exit(args[0]), fds)
