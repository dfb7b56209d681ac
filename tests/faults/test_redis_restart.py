"""Redis goes away (and comes back) while files are queued, a job runs and uploads arrive."""

from __future__ import annotations

import contextlib

import pytest

from tests.faults.stack import FaultStack, WebUI, long_text
from tests.faults.uploads import Uploader, record
from tests.support.helpers import wait_for_status, wait_until

FAULT_ENV = {
    "JOB_MONITORING_INTERVAL": "1",
    "WORKER_HEARTBEAT_GRACE": "4",
    "WORKER_MAINTENANCE_INTERVAL": "2",
    "JOB_RETRY_DELAY": "1",
    "JOB_MAX_RETRIES": "3",
    "RECONCILE_INTERVAL": "1",
    "RECONCILE_QUEUED_GRACE": "2",
    "REDIS_POOL_TIMEOUT": "2",
    "REDIS_SOCKET_TIMEOUT": "5",
}


@pytest.fixture(scope="module")
def web(fault_stack: FaultStack) -> WebUI:
    return fault_stack.start(workers=1)


def test_redis_outage_loses_no_acknowledged_upload(fault_stack: FaultStack, web: WebUI) -> None:
    user = fault_stack.user()
    (worker,) = fault_stack.live_workers()
    with contextlib.ExitStack() as cleanup:
        client = cleanup.enter_context(fault_stack.client(user))
        upload_client = cleanup.enter_context(fault_stack.client(user))
        # One long job keeps the worker busy, so the next files wait in the queue.
        long = record(client, "long.txt", long_text(40))
        assert long.status == 202, long
        wait_until(lambda: client.get(f"/api/v1/files/{long.file_id}").json()["stage"] == "embed",
                   60, "the long job to be embedding")
        queued = [record(client, f"q{i}.txt", f"queued {i} {long.file_id}".encode())
                  for i in range(6)]
        assert all(a.status == 202 for a in queued), queued

        uploader = cleanup.enter_context(Uploader(upload_client, "during", pause=0.3))
        wait_until(lambda: len(uploader.answers) >= 3, 30, "uploads before the outage")
        fault_stack.redis.stop()
        try:
            before = len(uploader.answers)
            wait_until(lambda: len(uploader.answers) >= before + 5, 60, "uploads during the outage")
            during = uploader.answers[before:before + 5]
            assert client.get("/readyz").json()["checks"]["redis"] != "ok"  # reported
            # Postgres holds the truth: reading state needs no Redis.
            assert client.get(f"/api/v1/files/{long.file_id}").status_code == 200
            # The running job ends while Redis is still down (its result is in Postgres).
            wait_until(lambda: client.get(f"/api/v1/files/{long.file_id}").json()["status"]
                       in ("done", "failed", "queued"), 90, "the long job to end")
        finally:
            fault_stack.redis.start()
        after = len(uploader.answers)
        wait_until(lambda: len(uploader.answers) >= after + 3, 30, "uploads after the outage")
        answers = uploader.stop()

        bad = [a for a in answers if a.status != 202 and not a.clean_503]
        assert not bad, bad
        # Postgres alone acknowledges an upload: the file waits `queued` for the reconciler.
        assert all(a.status == 202 for a in during), during
        acknowledged = [a.file_id for a in [long, *queued, *answers] if a.file_id]
        for fid in acknowledged:
            body = wait_for_status(client, fid, timeout=120)
            assert body["status"] == "done", body
            count, rows, distinct = fault_stack.chunk_facts(fid)
            assert count == rows == distinct > 0

    assert worker.popen.poll() is None, f"the worker quit:\n{worker.log()[-3000:]}"
    fault_stack.assert_no_checked_out_connections()

