"""Leaving the process: exit codes, the watchdog, the group kill, and the exit itself."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from portpool._stdio import _log

TYPE_CHECKING = False  # typing is not imported at run time (cold start)
if TYPE_CHECKING:
    from typing import NoReturn


EXIT_OK = 0
EXIT_APP_ERROR = 1  # bad usage, app failed to import, output pipe broken
EXIT_PROTOCOL_ERROR = 2  # malformed input from the host

_ATEXIT_TIMEOUT = 3.0  # how long the app's atexit callbacks may take on a clean exit

# The parent that started this process (the host), before any reparenting: see _kill_own_group.
_PARENT_AT_START = os.getppid()
_GROUP_KILL_ROUNDS = 10


def _watchdog(seconds: float, code: int, *, kill_group: bool = False) -> None:
    """Guarantees the process exits even if the event loop is blocked by a misbehaving handler."""

    def fire() -> None:
        _log(f"event loop did not stop within {seconds:g}s; forcing exit {code}")
        if kill_group:
            _kill_own_group()
        os._exit(code)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def _group_members(pgid: int) -> list[tuple[int, int]] | None:
    """``(pid, ppid)`` of the live (not zombie) processes in group ``pgid``; None without ``/proc``."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    members: list[tuple[int, int]] = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat_line = f.read()
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            fields = stat_line[stat_line.rindex(b")") + 2 :].split()
            state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or unreadable
        if pgrp == pgid and state not in (b"Z", b"X"):
            members.append((int(name), ppid))
    return members


def _kill_own_group() -> int:
    """SIGKILLs what is left of this process's group: children and grandchildren handlers started.

    Only when this process leads its group (as every worker portpool launches does); a
    group it does not lead is never touched. Spared: this process, and processes whose
    parent is the one that started this process (siblings, e.g. the rest of a shell
    pipeline; a live host that adopted orphans kills the group itself). Linux (``/proc``)
    only; elsewhere a no-op. Returns how many processes were signalled.
    """
    pid = os.getpid()
    try:
        if os.getpgid(0) != pid:
            return 0
    except OSError:
        return 0
    killed = 0
    for _ in range(_GROUP_KILL_ROUNDS):  # again, for processes forked while we looked
        members = _group_members(pid)
        if members is None:
            return killed
        targets = [m for m, ppid in members if m != pid and ppid != _PARENT_AT_START]
        if not targets:
            break
        for target in targets:
            if _kill_member(target, pid):
                killed += 1
        time.sleep(0.005)
    return killed


def _live_pgrp(pid: int) -> int | None:
    """The process group of ``pid`` now, or None if it is gone, a zombie or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
        fields = stat_line[stat_line.rindex(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[2])
    except (OSError, ValueError, IndexError):
        return None


def _kill_member(target: int, pgid: int) -> bool:
    """SIGKILLs ``target`` if it is still a live member of group ``pgid``; True if signalled.

    A member listed a moment ago may have exited and been reaped since, and its pid given to
    an unrelated process. So the membership is checked again after opening a pidfd, which
    names one process whatever happens to its pid, and the signal goes through the pidfd:
    check and signal concern the same process. Without pidfds (Linux < 5.3, Python < 3.9)
    the check is repeated just before ``kill``, which narrows the window.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    send_signal = getattr(signal, "pidfd_send_signal", None)
    if pidfd_open is None or send_signal is None:
        if _live_pgrp(target) != pgid:
            return False
        try:
            os.kill(target, signal.SIGKILL)
            return True
        except OSError:
            return False
    try:
        pidfd = pidfd_open(target)
    except OSError:
        return False  # gone
    try:
        if _live_pgrp(target) != pgid:
            return False
        send_signal(pidfd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def _run_exitfuncs() -> None:
    run: Callable[[], None] | None = getattr(atexit, "_run_exitfuncs", None)
    if run is not None:
        try:
            run()
        except BaseException:
            pass


def _exit(code: int, *, run_atexit: bool = False, kill_group: bool = False) -> NoReturn:
    """Leaves the process without waiting for stray threads (a stuck handler must not block exit).

    ``kill_group``: last of all, kill what is left of the process group (see :func:`_kill_own_group`).
    """
    if run_atexit:
        _watchdog(_ATEXIT_TIMEOUT, code, kill_group=kill_group)
        _run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if kill_group:
        _kill_own_group()
    os._exit(code)
