"""Review finding R3: the runtime's group kill on EOF must not kill a process that merely
took over the pid of a group member between the listing of the group and the signal.

The listing (all of ``/proc``) and the signals are separate steps: a member that exits and
is reaped meanwhile frees its pid, which the kernel may give to an unrelated process. The
test simulates exactly that: the listing names a pid that now belongs to a process outside
the group.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time


def test_a_pid_reused_after_the_listing_is_not_killed() -> None:
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)  # another group
    try:
        script = textwrap.dedent(
            f"""
            import os
            os.setpgid(0, 0)  # lead a group, as a worker launched by portpool does
            from portpool import _exit
            rounds = iter([[({bystander.pid}, 1)]])
            _exit._group_members = lambda pgid: next(rounds, [])
            print(_exit._kill_own_group())
            """
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        time.sleep(0.1)
        assert bystander.poll() is None, "the group kill killed a process outside the group"
        assert out.stdout.strip() == "0", out.stdout
    finally:
        bystander.kill()
        bystander.wait()


def test_group_members_are_still_killed() -> None:
    script = textwrap.dedent(
        """
        import os, subprocess, sys, time
        os.setpgid(0, 0)
        child = subprocess.Popen(["sleep", "30"])  # in our group
        from portpool import _exit
        killed = _exit._kill_own_group()
        child.wait(timeout=5)
        print(killed, child.returncode)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", str(-9)], out.stdout
