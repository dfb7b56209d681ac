"""Process helpers for the embedded servers: liveness by PID file, escalating stop."""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

log = logging.getLogger("sluice.embedded")
Proc: TypeAlias = subprocess.Popen[bytes]


def alive(pid: int, name: str) -> bool:
    """`pid` runs, is no zombie (container PID 1 may never reap) and its name starts with `name`."""
    if not Path("/proc/self/stat").exists():  # not Linux: best effort
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    try:
        head, _, rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")  # "pid (comm) S ..."
    except OSError:
        return False
    return rest.split()[0] != "Z" and head.partition("(")[2].startswith(name)


def run_as(user: str | None) -> dict[str, Any]:
    """subprocess arguments that run a child as `user` with only that user's group."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def read_pid(pid_file: Path, name: str) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid, name) else None


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def terminate(pid: int, proc: Proc | None, signals: tuple[int, ...], timeout: float) -> None:
    """Send each signal in turn until `pid` exits (`timeout` s each); reaps `proc`, our child."""
    child = proc if proc is not None and proc.pid == pid else None
    for sig in signals:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.poll() is not None if child else not alive(pid, ""):
                return
            time.sleep(0.05)
        log.warning("pid %s still running %.0fs after %s", pid, timeout, signal.Signals(sig).name)
    raise RuntimeError(f"process {pid} did not exit")


def wait_ready(
    ready: Callable[[], bool], proc: Proc, what: str, log_path: Path, timeout: int
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}); {log_path}:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            terminate(proc.pid, proc, (signal.SIGTERM, signal.SIGKILL), 5)
            raise RuntimeError(f"{what} not ready in {timeout}s; {log_path}:\n{tail(log_path)}")
        time.sleep(0.1)
