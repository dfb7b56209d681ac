"""The ledger: ~100 uploads under a seeded schedule of worker kills and one Redis restart.

Every upload's answer is recorded. At the end every acknowledged (202) upload must be
`done`, or `failed` with a reason if it was built to fail; no file has duplicate chunks;
Postgres holds no file nobody was told about; nothing is left checked out.

A few uploads are big (several segments each), mixed with the small ones.
A kill takes the worker down with its children (the parser forkserver), as a pod's
death would. Kills land while the victim runs a unit; recovery rests on the units'
leases in Postgres, not on RQ's cleanup (whose lock a killed worker can leave held).
Set SLUICE_LEDGER_SEED to replay another schedule.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import pytest

from tests.faults.stack import FaultStack, WebUI
from tests.faults.uploads import Answer, record
from tests.support.helpers import wait_until
from tests.support.samples import make_pdf
from tests.support.stack import Proc

FAULT_ENV = {
    "JOB_MONITORING_INTERVAL": "1",
    "WORKER_HEARTBEAT_GRACE": "4",
    "WORKER_MAINTENANCE_INTERVAL": "2",
    "JOB_RETRY_DELAY": "1",
    "JOB_MAX_RETRIES": "5",
    "RECONCILE_INTERVAL": "1",
    "RECONCILE_QUEUED_GRACE": "2",
    "REDIS_SOCKET_TIMEOUT": "5",
    "UNIT_LEASE_SECONDS": "4",
    "SEGMENT_CHUNKS": "8",  # the big files are several segments each
}
SEED = int(os.environ.get("SLUICE_LEDGER_SEED", "20261127"))
UPLOADS, BUILT_TO_FAIL, BIG, KILLS = 100, 6, 4, 3
BUDGET_S = 180


@dataclass
class Spec:
    name: str
    data: bytes
    should_fail: bool
    pause: float  # before this upload


def _specs(rng: random.Random) -> list[Spec]:
    picked = rng.sample(range(UPLOADS), BUILT_TO_FAIL + BIG)
    to_fail, big = set(picked[:BUILT_TO_FAIL]), set(picked[BUILT_TO_FAIL:])
    specs = []
    for i in range(UPLOADS):
        nonce = uuid.UUID(int=rng.getrandbits(128)).hex
        # Uploads arrive over ~25 s, the kill window: a small file is processed in
        # well under a second, so a burst over sooner left no busy worker to kill.
        pause = rng.uniform(0.1, 0.9)
        if i in to_fail and rng.random() < 0.5:  # an executable dressed up as a PDF
            specs.append(Spec(f"f{i}.pdf", b"MZ\x90\x00" + bytes.fromhex(nonce) * 64, True, pause))
        elif i in to_fail:  # a real PDF with no text in it
            specs.append(Spec(f"f{i}.pdf", make_pdf([[]]) + f"% {nonce}\n".encode(), True, pause))
        else:
            # 1-3 chunks, or ~30 (4 segments) for a big one
            sentences = rng.randint(450, 550) if i in big else rng.randint(3, 30)
            body = " ".join(f"Ledger {i} line {j}: salt marsh, tidal creek, sluice."
                            for j in range(sentences))
            specs.append(Spec(f"g{i}.txt", f"{nonce}\n{body}\n".encode(), False, pause))
    return specs


def _busy_workers(fault_stack: FaultStack, timeout: float) -> list[Proc]:
    """Workers running a job now (RQ's own state), waiting up to `timeout` for one."""
    host = socket.gethostname()
    deadline = time.monotonic() + timeout
    while True:
        busy = [p for p in fault_stack.live_workers()
                if fault_stack.rc.hget(f"rq:worker:sluice-worker.{host}.{p.pid}", "state") == b"busy"]
        if busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.1)


class Replacements:
    """Boots replacement workers in the background so the schedule keeps its pace."""

    def __init__(self, fault_stack: FaultStack):
        self.fault_stack = fault_stack
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start_one(self) -> None:
        def boot() -> None:
            try:
                self.fault_stack.start_worker()
            except BaseException as err:  # reported by the test
                self.errors.append(err)

        t = threading.Thread(target=boot, daemon=True)
        t.start()
        self.threads.append(t)

    def wait(self) -> None:
        for t in self.threads:
            t.join(150)
        assert not any(t.is_alive() for t in self.threads), "a replacement worker hung at boot"
        assert not self.errors, self.errors


@pytest.fixture(scope="module")
def web(fault_stack: FaultStack) -> WebUI:
    return fault_stack.start(workers=2)


def test_ledger_under_worker_kills_and_a_redis_restart(fault_stack: FaultStack, web: WebUI) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    specs = _specs(rng)
    kill_at = sorted(rng.uniform(3, 25) for _ in range(KILLS))
    redis_restart_at = rng.uniform(5, 20)
    user = fault_stack.user("ledger")
    answers: dict[str, Answer] = {}

    def uploader(share: list[Spec]) -> None:
        with fault_stack.client(user) as c:
            for spec in share:
                time.sleep(spec.pause)
                answers[spec.name] = record(c, spec.name, spec.data)

    uploaders = [threading.Thread(target=uploader, args=(specs[k::2],), daemon=True)
                 for k in range(2)]
    for t in uploaders:
        t.start()

    replacements = Replacements(fault_stack)
    events = sorted([(t, "kill") for t in kill_at] + [(redis_restart_at, "redis")])
    done_events: list[str] = []
    for at, what in events:
        wait_until(lambda at=at: time.monotonic() - started >= at, at + 5, "the next event")
        if what == "redis":
            replacements.wait()  # a worker that boots while Redis is down exits at once
            fault_stack.redis.restart()
            done_events.append(f"{time.monotonic() - started:.1f}s redis restarted")
            continue
        busy = _busy_workers(fault_stack, 15) if len(fault_stack.live_workers()) >= 2 else []
        if not busy:
            done_events.append(f"{time.monotonic() - started:.1f}s no busy worker to kill")
            continue
        victim = rng.choice(busy)
        fault_stack.kill(victim, signal.SIGKILL, tree=True)
        done_events.append(f"{time.monotonic() - started:.1f}s killed {victim.pid}")
        replacements.start_one()
    for t in uploaders:
        t.join(120)
    assert not any(t.is_alive() for t in uploaders), "an upload hung"
    replacements.wait()

    # Every answer is 202, or a clean 503 / 415 (refused, nothing stored); never 500 or none.
    assert len(answers) == UPLOADS
    by_name = {s.name: s for s in specs}
    bad = [a for a in answers.values() if not (
        a.status == 202 or a.clean_503 or (a.status == 415 and by_name[a.name].should_fail))]
    assert not bad, bad
    acknowledged = {a.file_id: by_name[a.name] for a in answers.values() if a.file_id}
    assert sum(not s.should_fail for s in acknowledged.values()) >= UPLOADS - BUILT_TO_FAIL - 5

    # Postgres knows exactly the acknowledged files, and each reaches its end.
    def statuses() -> dict[str, tuple[str, str | None]]:
        rows = fault_stack.sql(
            "SELECT f.id::text, f.status, f.error FROM files f JOIN users u ON u.id = f.owner_id "
            "WHERE u.email = :e", e=user.email)
        return {fid: (status, error) for fid, status, error in rows}

    left = BUDGET_S - (time.monotonic() - started)
    wait_until(lambda: all(s in ("done", "failed") for s, _ in statuses().values()), max(left, 30),
               f"every file to end (events: {done_events})")
    final = statuses()
    assert set(final) == set(acknowledged)
    wrong = {fid: (acknowledged[fid].name, final[fid]) for fid in final
             if final[fid][0] != ("failed" if acknowledged[fid].should_fail else "done")}
    assert not wrong, wrong
    assert all(error and "retrying" not in error for status, error in final.values()
               if status == "failed")

    dupes = fault_stack.sql("SELECT file_id, idx FROM chunks GROUP BY 1, 2 HAVING count(*) > 1")
    assert not dupes
    mismatched = fault_stack.sql(
        "SELECT f.id FROM files f LEFT JOIN chunks c ON c.file_id = f.id "
        "GROUP BY f.id, f.chunk_count HAVING f.chunk_count <> count(c.idx)")
    assert not mismatched
    big = fault_stack.sql("SELECT count(*) FROM files WHERE segments_total >= 3 AND status = 'done'")
    assert big[0][0] >= BIG - 1, big  # the big ones really were several segments
    assert sum("killed" in e for e in done_events) >= 2, done_events  # the schedule really ran
    fault_stack.assert_no_checked_out_connections()
    assert time.monotonic() - started <= BUDGET_S
