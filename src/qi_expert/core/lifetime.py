"""What may outlive a stage, and what must not.

A stage can die without running any of its own code (SIGKILL, the out-of-memory killer, a node
lost under a scheduler). Then:

- its child processes (the TypeScript compiler, Axolotl, llama.cpp's converters) must die with
  it, or an orphaned Axolotl goes on writing checkpoints into the folder the rerun resumes from:
  `tied(cmd)` starts a command under `setpriv --pdeathsig KILL`, so the kernel kills it when the
  stage's thread that started it is gone (the same guarantee bubblewrap's --die-with-parent gives
  the sandbox). setpriv (util-linux) is a program, not a preexec_fn, which is unsafe in a process
  with threads;
- the MLflow run it opened stays RUNNING: the next run of the same stage closes it as KILLED
  (tracking.close_dead_runs), recognising a dead stage by `identity()`: host, pid and the
  process's start time (a pid alone may have been reused).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Sequence


def tied(cmd: Sequence[str]) -> list[str]:
    """`cmd`, killed by the kernel when the process that starts it dies (SIGKILL included)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:  # not Linux/util-linux: the signal handlers still stop children on SIGTERM/SIGINT
        return list(cmd)
    return [setpriv, "--pdeathsig", "KILL", "--", *map(str, cmd)]


def die_with(parent_pid: int) -> None:
    """tied() for a Python worker process (a multiprocessing pool's initializer): the kernel kills
    it when `parent_pid`, the process that started it, dies; Ctrl+C is left to that parent, which
    stops its pool."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)": state is field 3, starttime 22


def identity(pid: int | None = None) -> str:
    """host:pid:start-time of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def is_dead(ident: str) -> bool:
    """True when `ident` (from identity()) names a process of this host that no longer runs.

    A process of another host is never called dead: nothing here can tell.
    """
    try:
        host, pid, start = ident.rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname() or start == "?":
        return False
    return _start_time(pid_n) != start
