"""Children that never outlive the process that started them, even when it is SIGKILLed.

A process killed with SIGKILL runs no cleanup, so its children (embedded
Postgres and Redis, the webui, workers) would run on as orphans. Two layers:

* ``die_with_parent(sig)``, a ``preexec_fn``: on Linux the child asks the
  kernel (``prctl(PR_SET_PDEATHSIG)``) for `sig` when its parent dies. Cheap
  and immediate, but it reaches only that one process (not what it forks),
  and the kernel clears it when a child changes user (Postgres as root).
* ``tether(popen)``: one small reaper process per parent (this file, run as
  a script) reads a pipe whose only writer is the parent. The parent
  registers each child on it; when the pipe reaches end-of-file the parent is
  gone, however it died, and the reaper stops every registered child that
  still runs, its whole process group if asked, escalating signal by signal
  (e.g. Postgres: SIGINT = fast shutdown, then SIGQUIT, SIGKILL).

The reaper runs in a session of its own and ignores Ctrl-C, so a signal sent
to the parent's process group spares it. A child stopped normally is simply
gone when the reaper looks; PIDs are checked against their start time, so a
recycled PID is never signalled. Only the standard library is imported: the
reaper starts in a few milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.05


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that delivers `sig` to the child when this process dies (Linux only).

    The kernel ties it to the *thread* that forks: a child started from a
    short-lived thread would die with that thread. So only from the main
    thread; elsewhere (and where prctl does not exist) None, and the reaper
    alone stands guard."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _start_ticks(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[19]) if fields else 0  # field 22: start time since boot


@dataclass
class _Watch:
    pid: int
    start: int
    group: bool
    signals: list[int]
    step_s: float

    def alive(self) -> bool:
        if not Path("/proc").is_dir():  # not Linux: best effort
            try:
                os.kill(self.pid, 0)
                return True
            except OSError:
                return False
        leader = _stat(self.pid)
        if leader is not None and leader[0] != "Z":
            return int(leader[19]) == self.start  # else: a recycled PID, not ours
        if not self.group:
            return False
        # The leader is gone; members of its group (forked helpers) may remain.
        # A group id is not reused while it has members, so they are its own.
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (f := _stat(int(entry.name))) and f[0] != "Z" \
                    and int(f[2]) == self.pid:
                return True
        return False

    def send(self, sig: int) -> None:
        try:
            if self.group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except OSError:
            pass


def _reap(watches: list[_Watch]) -> None:
    """Stop every watched process still running, escalating through its signals."""
    pending = [w for w in watches if w.alive()]
    for w in pending:
        print(f"sluice-lifeline: parent gone, stopping pid {w.pid}", file=sys.stderr, flush=True)
    steps = {id(w): 0 for w in pending}
    deadlines = {id(w): 0.0 for w in pending}
    while pending:
        now = time.monotonic()
        for w in pending:
            if now >= deadlines[id(w)] and steps[id(w)] < len(w.signals):
                w.send(w.signals[steps[id(w)]])
                steps[id(w)] += 1
                deadlines[id(w)] = now + w.step_s
        time.sleep(_POLL_S)
        pending = [w for w in pending if w.alive() and (
            steps[id(w)] < len(w.signals) or time.monotonic() < deadlines[id(w)])]


def _reaper_main() -> None:
    # Ctrl-C and a closed terminal are for the parent; only end-of-file ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watches: list[_Watch] = []
    for line in sys.stdin:
        pid, start, group, sigs, step = line.split()
        watches.append(_Watch(int(pid), int(start), group == "1",
                              [int(s) for s in sigs.split(",")], float(step)))
    _reap(watches)


class Lifeline:
    """The parent's end of one reaper process."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self._proc = subprocess.Popen(
            # This file as a script, isolated (-I): only the standard library is needed.
            [sys.executable, "-I", os.path.abspath(__file__)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, start_new_session=True, text=True,
        )
        self._pipe: IO[str] | None = self._proc.stdin
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._pipe is None

    @property
    def reaper_pid(self) -> int:
        return self._proc.pid

    def watch(self, pid: int, *, group: bool, signals: Sequence[int], step_s: float) -> None:
        line = f"{pid} {_start_ticks(pid)} {int(group)} {','.join(map(str, signals))} {step_s}\n"
        with self._lock:
            if self._pipe is None:
                raise RuntimeError("the lifeline is closed")
            self._pipe.write(line)
            self._pipe.flush()

    def close(self, timeout: float = 30) -> None:
        """Let the reaper go: it stops what is still running and exits."""
        with self._lock:
            if self._pipe is not None:
                self._pipe.close()
                self._pipe = None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


_lifeline: Lifeline | None = None
_lifeline_lock = threading.Lock()


def lifeline() -> Lifeline:
    """This process's reaper, started on first use (again in a forked child)."""
    global _lifeline
    with _lifeline_lock:
        if _lifeline is None or _lifeline.owner != os.getpid() or _lifeline.closed:
            _lifeline = Lifeline()
        return _lifeline


def close_lifeline() -> None:
    """At a clean exit: let this process's reaper finish now rather than just after we
    are gone, so nothing of ours is seen running once we have exited."""
    with _lifeline_lock:
        if _lifeline is not None and _lifeline.owner == os.getpid():
            _lifeline.close()


def tether(
    proc: subprocess.Popen[Any], *, group: bool = True,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGKILL), step_s: float = 5.0,
) -> None:
    """Stop `proc` (with `group`: the process group it leads) if this process dies first."""
    lifeline().watch(proc.pid, group=group, signals=signals, step_s=step_s)


if __name__ == "__main__":
    _reaper_main()
