"""Keep `sluice up`'s webui and workers running, the way the cluster keeps its pods.

A child that exits while we are not stopping is started again after a
backoff that doubles with each quick crash (1 s, 2 s, 4 s … 30 s) and resets
once it has stayed up for a minute, like Kubernetes' CrashLoopBackOff. Each
exit and restart is logged with the child's name, PID and exit status.

Every child leads a process group of its own (what it forks stays in it), dies
with `sluice up` (``die_with_parent``) and is tethered to its reaper, so none
of them outlives `sluice up`, even when that is SIGKILLed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.local.lifeline import die_with_parent, tether

log = logging.getLogger("sluice.up")
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    crashes_in_a_row: int = 0
    restart_at: float | None = None
    last_status: int | None = None  # negative: killed by that signal

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`sluice <args>` in a session of its own: Ctrl-C reaches only `sluice up`, which
    then stops the children in order instead of all at once."""
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", *args], env=env,
                            start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
    tether(proc, group=True, signals=(signal.SIGTERM, signal.SIGKILL), step_s=5)
    return proc


@dataclass
class Supervisor:
    spawn: Callable[[list[str], dict[str, str]], subprocess.Popen[bytes]] = spawn
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        child = Child(name, args, env)
        self.children.append(child)
        self._launch(child)
        return child

    def _launch(self, child: Child) -> None:
        child.popen = self.spawn(child.args, child.env)
        child.started_at = time.monotonic()
        child.restart_at = None

    def failed(self) -> list[Child]:
        """Children that exited with an error status (not killed by a signal)."""
        return [c for c in self.children if c.last_status is not None and c.last_status > 0]

    def tick(self) -> None:
        """Notice exits, schedule restarts with backoff, start the children that are due."""
        now = time.monotonic()
        for child in self.children:
            if child.popen is not None and (code := _exit_status(child.popen)) is not None:
                self._on_exit(child, code, now)
            if child.restart_at is not None and now >= child.restart_at:
                self._launch(child)
                child.restarts += 1
                log.warning("up.child_restarted name=%s pid=%s restarts=%d", child.name,
                            child.pid, child.restarts)

    def _on_exit(self, child: Child, code: int, now: float) -> None:
        assert child.popen is not None
        _kill_group_and_reap(child.popen)
        child.last_status = code
        uptime = now - child.started_at
        child.crashes_in_a_row = 1 if uptime >= STABLE_AFTER_S else child.crashes_in_a_row + 1
        delay = min(BACKOFF_FIRST_S * 2 ** (child.crashes_in_a_row - 1), BACKOFF_MAX_S)
        log.error("up.child_exited name=%s pid=%d status=%s uptime=%.0fs restart_in=%.0fs",
                  child.name, child.popen.pid, _describe(code), uptime, delay)
        child.popen = None
        child.restart_at = now + delay

    def stop(self, grace_s: float) -> None:
        """SIGTERM all (workers finish their current job), SIGKILL what is left after
        `grace_s`, then whatever their process groups still hold."""
        running = [c.popen for c in self.children if c.popen is not None]
        for child in self.children:
            child.restart_at = None
        for p in running:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in running:
            while _exit_status(p) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if _exit_status(p) is None:
                log.warning("up.kill pid=%d (did not stop within %.0f s)", p.pid, grace_s)
            _kill_group_and_reap(p)


def _exit_status(popen: subprocess.Popen[bytes]) -> int | None:
    """The exit status, without reaping: while the leader is a zombie its process
    group id cannot be reused, so the group can still be signalled safely."""
    try:
        info = os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped
        return popen.returncode if popen.returncode is not None else -1
    if info is None:
        return None
    return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status


def _kill_group_and_reap(popen: subprocess.Popen[bytes]) -> None:
    """What the child forked (parser forkserver, RQ scheduler) goes with it."""
    if popen.returncode is None:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except OSError:
            pass
    popen.wait()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"
