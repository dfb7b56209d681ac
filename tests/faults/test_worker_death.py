"""A worker dies mid-job (SIGKILL) or is asked to stop (SIGTERM) mid-job."""

from __future__ import annotations

import signal
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.faults.stack import FaultStack, WebUI, long_text
from tests.support.helpers import upload, wait_for_status, wait_until

FAULT_ENV = {
    "JOB_MONITORING_INTERVAL": "1",
    "UNIT_LEASE_SECONDS": "4",
    "RECONCILE_INTERVAL": "1",
    "SEGMENT_CHUNKS": "64",  # the long documents here are one segment each
    "WORKER_HEARTBEAT_GRACE": "4",
    "WORKER_MAINTENANCE_INTERVAL": "2",
    "JOB_RETRY_DELAY": "1",
    "JOB_MAX_RETRIES": "2",
}
# Process scheduling on a busy 2-core machine, Postgres commits, the API poll.
SLACK_S = 15


@pytest.fixture(scope="module")
def web(fault_stack: FaultStack) -> WebUI:
    return fault_stack.start(workers=2)


def _file(client: httpx.Client, fid: str) -> dict[str, Any]:
    r = client.get(f"/api/v1/files/{fid}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _start_long_job(fault_stack: FaultStack, client: httpx.Client, chunks: int) -> tuple[str, int]:
    """Upload a document that takes seconds to embed; return its id and its worker's PID
    once it is embedding."""
    r = upload(client, "long.txt", long_text(chunks))
    assert r.status_code == 202, r.text
    fid = r.json()["id"]
    wait_until(lambda: _file(client, fid)["stage"] == "embed", 60, "the job to be embedding")
    pid: int = wait_until(lambda: fault_stack.job_worker_pid(fid), 30, "a segment running")
    return fid, pid


def test_worker_killed_mid_job_is_retried_by_another_worker(
    fault_stack: FaultStack, web: WebUI
) -> None:
    s = fault_stack.settings
    # The unit's lease in Postgres runs out, the other worker's reconciler (every
    # RECONCILE_INTERVAL) puts it back in the backlog, its dispatcher hands it to RQ.
    bound = s.lease_seconds + s.reconcile_interval + s.dispatch_interval + 2 + SLACK_S
    with fault_stack.client(fault_stack.user()) as client:
        fid, pid = _start_long_job(fault_stack, client, chunks=60)
        victim = next(p for p in fault_stack.live_workers() if p.pid == pid)
        assert len(fault_stack.live_workers()) == 2
        killed_at = time.monotonic()
        fault_stack.kill(victim, signal.SIGKILL)
        before = _file(client, fid)
        assert (before["status"], before["attempts"]) == ("processing", 1), before

        second = wait_until(lambda: (b := _file(client, fid))["attempts"] >= 2 and b,
                            bound + 60, "a second attempt")
        recovered_s = time.monotonic() - killed_at
        assert recovered_s <= bound, f"retried {recovered_s:.1f}s after the kill (bound {bound}s)"
        assert pid not in fault_stack.running_units(fid).values()

        done = wait_for_status(client, fid, timeout=120)
    assert done["status"] == "done", done
    assert done["attempts"] == 2 and done["error"] is None, (second, done)
    count, rows, distinct = fault_stack.chunk_facts(fid)
    assert count == rows == distinct >= 50
    fault_stack.assert_no_checked_out_connections()


def test_sigterm_finishes_the_job_then_exits_0(fault_stack: FaultStack, web: WebUI) -> None:
    if not fault_stack.live_workers():
        fault_stack.start_worker()
    with fault_stack.client(fault_stack.user()) as client:
        fid, pid = _start_long_job(fault_stack, client, chunks=40)
        worker = next(p for p in fault_stack.live_workers() if p.pid == pid)
        worker.popen.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # not an assertion on timing: a cold stop would be immediate
        assert worker.popen.poll() is None, "the worker quit without finishing its job"

        done = wait_for_status(client, fid, timeout=120)
        assert done["status"] == "done", done
        assert done["attempts"] == 1, done  # this attempt finished: nothing was retried
        assert worker.popen.wait(60) == 0, worker.log()[-3000:]
    count, rows, distinct = fault_stack.chunk_facts(fid)
    assert count == rows == distinct > 0
    # Nothing left for another worker to "recover": every unit done, once.
    assert set(fault_stack.unit_tries(fid).values()) == {1}
    assert fault_stack.sql("SELECT DISTINCT state FROM work_units WHERE file_id = :i",
                           i=uuid.UUID(fid)) == [("done",)]
    assert "warm shut down" in worker.log().lower() or "stopping on request" in worker.log()
