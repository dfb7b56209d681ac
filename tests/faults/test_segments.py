"""One file in segments across two workers: same result as one worker, each unit done once,
a killed worker's segments (and only they) redone within the lease, deletes mid-run quiet."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import numpy as np
import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.queue import UNIT_FUNC, make_queue, unit_job_id
from shared.storage import new_storage_key, stored_path
from tests.faults.stack import EventLog, FaultStack, WebUI, long_text
from tests.support.helpers import upload, wait_for_status, wait_until
from tests.support.stack import insert_file
from worker.reconciler import RECONCILE_LOCK

FAULT_ENV = {
    "SEGMENT_CHUNKS": "4",
    "JOB_MONITORING_INTERVAL": "1",
    "UNIT_LEASE_SECONDS": "4",
    "WORKER_HEARTBEAT_GRACE": "4",
    "WORKER_MAINTENANCE_INTERVAL": "2",
    "RECONCILE_INTERVAL": "1",
    "RECONCILE_QUEUED_GRACE": "2",
    "JOB_RETRY_DELAY": "1",
    "JOB_MAX_RETRIES": "2",
}
CHUNKS = 160  # ~40 segments of 4
SLACK_S = 10  # scheduling on a busy 2-core machine, commits, the API poll


@pytest.fixture(scope="module")
def web(fault_stack: FaultStack) -> WebUI:
    return fault_stack.start(workers=2)


def _two_workers(fault_stack: FaultStack) -> None:
    while len(fault_stack.live_workers()) < 2:
        fault_stack.start_worker()


def _chunks(fault_stack: FaultStack, fid: str) -> list[tuple[int, str, np.ndarray]]:
    rows = fault_stack.sql("SELECT idx, text, embedding::text FROM chunks WHERE file_id = :i "
                           "ORDER BY idx", i=uuid.UUID(fid))
    return [(int(i), t, np.array(e.strip("[]").split(","), dtype=np.float32)) for i, t, e in rows]


def test_two_workers_share_a_file_with_the_result_of_one(fault_stack: FaultStack, web: WebUI) -> None:
    _two_workers(fault_stack)
    data = long_text(CHUNKS, "shared")
    polled: list[tuple[float, int]] = []
    with EventLog(fault_stack.rc) as events, fault_stack.client(fault_stack.user()) as c:
        fid = upload(c, "big.txt", data).json()["id"]

        def done() -> dict[str, Any] | None:
            body: dict[str, Any] = c.get(f"/api/v1/files/{fid}").json()
            polled.append((body["progress"], body["segments_done"]))
            return body if body["status"] in ("done", "failed") else None

        body = wait_until(done, 180, "the file to finish", interval=0.1)
        time.sleep(0.5)  # the last event's delivery
        file_events = events.of(fid)
    assert body["status"] == "done", body
    assert body["segments_total"] >= 35 and body["segments_done"] == body["segments_total"]
    assert body["progress"] == 1.0 and body["attempts"] == 1
    count, rows, distinct = fault_stack.chunk_facts(fid)
    assert count == rows == distinct >= 4 * (body["segments_total"] - 1)

    # Both workers took segments.
    takers = fault_stack.sql("SELECT DISTINCT worker FROM work_units WHERE file_id = :i "
                             "AND kind = 'segment'", i=uuid.UUID(fid))
    assert len(takers) == 2, takers
    # Progress only rises: in the API and in the events (one per stored segment).
    assert polled == sorted(polled), polled
    stored = [e["segments_done"] for e in file_events if e.get("segments_done")]
    assert stored == list(range(1, body["segments_total"] + 1)), stored
    progress = [e["progress"] for e in file_events]
    assert progress == sorted(progress) and file_events[-1]["status"] == "done"

    # The same bytes with one worker (another user: same-bytes dedup is per user).
    two = _chunks(fault_stack, fid)
    fault_stack.live_workers()[0].stop()
    assert len(fault_stack.live_workers()) == 1
    with fault_stack.client(fault_stack.user("single")) as c:
        single = upload(c, "big.txt", data).json()["id"]
        assert wait_for_status(c, single, timeout=180)["status"] == "done"
    one = _chunks(fault_stack, single)
    assert [(i, t) for i, t, _ in one] == [(i, t) for i, t, _ in two]
    assert all(np.allclose(a, b, atol=1e-5) for (_, _, a), (_, _, b) in zip(one, two, strict=True))


def test_one_unit_delivered_twice_at_once_is_done_once(fault_stack: FaultStack, web: WebUI) -> None:
    _two_workers(fault_stack)
    user = fault_stack.user("twice")
    key = new_storage_key()
    path = stored_path(fault_stack.settings.upload_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(long_text(10, "twice"))
    fid, unit_id = insert_file(fault_stack.db, user.id, key, unit_state="dispatched", attempt=1)
    queue = make_queue(fault_stack.rc, fault_stack.settings)
    with fault_stack.rc.pipeline() as pipe:  # both in the queue at the same moment
        jobs = [queue.enqueue_call(UNIT_FUNC, args=(unit_id, 1), pipeline=pipe,
                                   job_id=f"{unit_job_id(unit_id, 1)}-copy{n}") for n in (1, 2)]
        pipe.execute()

    def ran() -> list[Job] | None:
        fetched = [Job.fetch(j.id, connection=fault_stack.rc, serializer=JSONSerializer)
                   for j in jobs]
        return fetched if all(j.get_status() == JobStatus.FINISHED for j in fetched) else None

    finished = wait_until(ran, 60, "both deliveries to run")
    names = {j.worker_name for j in finished}
    assert len(names) == 2 and None not in names, "each copy went to its own worker"
    assert sorted(j.return_value()["outcome"] for j in finished) == ["done", "skipped"]
    with fault_stack.client(user) as c:
        body = wait_for_status(c, fid, timeout=60)
    assert body["status"] == "done" and body["attempts"] == 1, body
    assert fault_stack.unit_tries(fid)[unit_id] == 1
    count, rows, distinct = fault_stack.chunk_facts(fid)
    assert count == rows == distinct > 0


def test_worker_killed_mid_segment_redoes_only_the_segments_it_held(
    fault_stack: FaultStack, web: WebUI
) -> None:
    """SIGKILL a worker holding a segment while another process that was in the middle of
    the reconciler's pass dies too: the pass's lock goes with its connection, the lease runs
    out, and the survivor's reconciler offers the segment again."""
    _two_workers(fault_stack)
    s = fault_stack.settings
    bound = s.lease_seconds + s.reconcile_interval + s.dispatch_interval + SLACK_S
    with fault_stack.client(fault_stack.user()) as c:
        fid = upload(c, "big.txt", long_text(CHUNKS, "kill")).json()["id"]
        wait_until(lambda: c.get(f"/api/v1/files/{fid}").json()["segments_done"] >= 3, 120,
                   "a few segments stored")
        holder = _hold_reconciler_lock(fault_stack)
        try:
            pid = wait_until(lambda: fault_stack.job_worker_pid(fid), 30, "a running segment")
            victim = next(p for p in fault_stack.live_workers() if p.pid == pid)
            killed_at = time.monotonic()
            fault_stack.kill(victim, signal.SIGKILL, tree=True)
        finally:
            holder.kill()
            holder.communicate(timeout=10)  # reaps it and closes its pipe
        # What the victim held when it died (it may have finished the one seen above): its
        # job's segment and those it claimed to fill the same encode call (EMBED_FILL_CHUNKS).
        held = [u for u, p in fault_stack.running_units(fid).items() if p == pid]
        assert 1 <= len(held) <= fault_stack.settings.user_units_in_flight, held
        wait_until(lambda: all(fault_stack.unit_tries(fid)[u] >= 2 for u in held), bound + 30,
                   "the killed segments to be claimed again")
        recovered_s = time.monotonic() - killed_at
        body = wait_for_status(c, fid, timeout=180)
    assert recovered_s <= bound, f"re-claimed {recovered_s:.1f}s after the kill (bound {bound}s)"
    assert body["status"] == "done" and body["attempts"] == 2, body
    tries = fault_stack.unit_tries(fid)
    assert {tries.pop(u) for u in held} == {2}
    assert set(tries.values()) == {1}, "every other unit ran once"
    count, rows, distinct = fault_stack.chunk_facts(fid)
    assert count == rows == distinct
    fault_stack.assert_no_checked_out_connections()


def test_delete_while_segments_run_is_quiet(fault_stack: FaultStack, web: WebUI) -> None:
    _two_workers(fault_stack)
    failed_before = _failed_jobs(fault_stack)
    with fault_stack.client(fault_stack.user()) as c:
        fid = upload(c, "big.txt", long_text(CHUNKS, "delete")).json()["id"]
        wait_until(lambda: c.get(f"/api/v1/files/{fid}").json()["segments_done"] >= 2, 120,
                   "a few segments stored")
        assert c.delete(f"/api/v1/files/{fid}").status_code == 204
        assert c.get(f"/api/v1/files/{fid}").status_code == 404
        # Past a lease and a few reconciler passes: nothing comes back, nothing fails.
        time.sleep(fault_stack.settings.lease_seconds + 3)
    i = uuid.UUID(fid)
    assert fault_stack.sql("SELECT count(*) FROM chunks WHERE file_id = :i", i=i)[0][0] == 0
    assert fault_stack.sql("SELECT count(*) FROM work_units WHERE file_id = :i", i=i)[0][0] == 0
    logs = "".join(p.log() for p in fault_stack.procs if "worker" in p.argv)
    mine = [line for line in logs.splitlines() if fid in line]
    assert mine and not [line for line in mine if "attempt_failed" in line
                         or "status_not_saved" in line or "ERROR" in line], mine
    assert _failed_jobs(fault_stack) == failed_before
    assert len(fault_stack.live_workers()) == 2


def _failed_jobs(fault_stack: FaultStack) -> int:
    return int(fault_stack.rc.zcard(make_queue(fault_stack.rc, fault_stack.settings)
                                    .failed_job_registry.key))


def _hold_reconciler_lock(fault_stack: FaultStack) -> subprocess.Popen[str]:
    """A process in the middle of a reconciler pass: it holds the pass's lock."""
    code = (
        "import sys, time\n"
        "from sqlalchemy import create_engine, text\n"
        "e = create_engine(sys.argv[1])\n"
        "c = e.connect()\n"
        f"assert c.execute(text('SELECT pg_try_advisory_xact_lock({RECONCILE_LOCK})')).scalar()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    url = fault_stack.settings.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    proc = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc
