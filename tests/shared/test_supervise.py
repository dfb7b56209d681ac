"""`sluice up`'s supervisor and the lifeline, on small real processes (no stack)."""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import sys
import time

import pytest

from shared.local import supervise
from shared.local.supervise import Supervisor
from tests.support.helpers import pid_alive, wait_until


def _crashing(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", "exit 3"], start_new_session=True)


def test_a_crashing_child_restarts_with_doubling_backoff(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(supervise, "BACKOFF_FIRST_S", 0.2)
    sup = Supervisor(spawn=_crashing)
    child = sup.start("worker-1", ["worker"], {})
    restarts_at: list[float] = []
    deadline = time.monotonic() + 10
    with caplog.at_level(logging.WARNING, logger="sluice.up"):
        while child.restarts < 3 and time.monotonic() < deadline:
            before = child.restarts
            sup.tick()
            if child.restarts > before:
                restarts_at.append(time.monotonic())
            time.sleep(0.02)
    sup.stop(grace_s=1)
    assert child.restarts == 3
    gaps = [b - a for a, b in itertools.pairwise(restarts_at)]
    # Never sooner than the backoff (0.4 s after the second quick crash, 0.8 s after the
    # third); the upper bounds leave room for a busy machine.
    assert 0.4 <= gaps[0] < 3
    assert 0.8 <= gaps[1] < 3
    assert child.last_status == 3
    assert sup.failed() == [child]
    text = caplog.text
    assert "up.child_exited name=worker-1" in text and "status=exit 3" in text
    assert "up.child_restarted name=worker-1" in text


def test_stop_takes_what_the_child_forked_along() -> None:
    def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True)

    sup = Supervisor(spawn=spawn)
    child = sup.start("webui", ["webui"], {})
    assert child.popen is not None
    wait_until(lambda: len(_group(child.popen.pid)) == 2, 5, "the grandchild")
    forked = _group(child.popen.pid)
    assert len(forked) == 2  # sh and its sleep
    sup.stop(grace_s=2)
    wait_until(lambda: not [pid for pid in forked if pid_alive(pid)], 5, "the group gone")


def _group(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


_PARENT = """
import signal, subprocess, sys, time
from shared.local.lifeline import tether
# A child that ignores SIGTERM: the reaper must escalate to SIGKILL.
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
    start_new_session=True)
tether(child, signals=(signal.SIGTERM, signal.SIGKILL), step_s=0.5)
print(child.pid, flush=True)
time.sleep(300)
"""


def test_the_reaper_escalates_when_the_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        time.sleep(0.3)  # the child has set its SIGTERM handler
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        wait_until(lambda: not pid_alive(pid), 10, "the child to be stopped by the reaper")
    finally:
        parent.kill()
        parent.communicate()
