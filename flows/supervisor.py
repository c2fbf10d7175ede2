"""Ties a server's whole process tree to the process that started it (`edgepipe serve`).

Run as `python -m flows.supervisor --parent PID --grace SECONDS -- CMD...`. It starts CMD and stops CMD and
every process CMD spawned (SIGTERM, then SIGKILL after `grace` seconds) when it gets SIGTERM/SIGINT/SIGHUP,
when CMD exits, or when its parent dies in any way, SIGKILL included: Linux delivers SIGTERM on the parent's
death (PR_SET_PDEATHSIG) and, elsewhere, the parent is polled. As a child subreaper it inherits the
orphans of CMD's tree (e.g. workers whose own parent died first), so they are stopped too.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def terminate_then_kill(procs: list[psutil.Process], grace: float) -> list[psutil.Process]:
    """SIGTERM to `procs` (none if `grace` is 0), SIGKILL to those still alive after `grace` seconds.
    Returns the ones that had to be killed."""
    if grace:
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, procs = psutil.wait_procs(procs, timeout=grace)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)
    return procs


def stop_tree(grace: float) -> None:
    """SIGTERM to every descendant, SIGKILL to whatever is left after `grace` seconds."""
    me = psutil.Process()
    procs = me.children(recursive=True)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    alive = {p.pid: p for p in alive}
    alive.update({p.pid: p for p in me.children(recursive=True)})  # orphans re-parented to us meanwhile
    for proc in alive.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(alive.values()), timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flows.supervisor")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd

    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stopping = False

    def request_stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, request_stop)
    if os.getppid() != args.parent:  # the parent died before PR_SET_PDEATHSIG was armed
        return 0
    child = subprocess.Popen(cmd)
    code = None
    while not stopping and code is None and os.getppid() == args.parent:
        time.sleep(0.2)
        # Reap everything that ended: our server, and orphans of its tree we inherited as subreaper.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == child.pid:
                code = os.waitstatus_to_exitcode(status)
                child.returncode = code
    stop_tree(args.grace)
    return code if code is not None else 0


if __name__ == "__main__":
    sys.exit(main())
