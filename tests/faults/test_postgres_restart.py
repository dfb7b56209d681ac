"""Postgres goes down (and comes back) mid-job and under upload load."""

from __future__ import annotations

import contextlib

import pytest

from tests.faults.stack import FaultStack, WebUI, long_text, unavailable
from tests.faults.uploads import Uploader, record
from tests.support.helpers import wait_for_status, wait_until

FAULT_ENV = {
    "JOB_MAX_RETRIES": "5",
    "JOB_RETRY_DELAY": "2",
    "JOB_MONITORING_INTERVAL": "1",
    "WORKER_HEARTBEAT_GRACE": "4",
    "WORKER_MAINTENANCE_INTERVAL": "2",
    "RECONCILE_INTERVAL": "1",
    "RECONCILE_QUEUED_GRACE": "2",
    "DATABASE_POOL_SIZE": "3",
    "DATABASE_POOL_MAX_OVERFLOW": "2",
    "DATABASE_POOL_TIMEOUT": "5",
}


@pytest.fixture(scope="module")
def web(fault_stack: FaultStack) -> WebUI:
    return fault_stack.start(workers=1)


def test_postgres_outage_answers_503_then_recovers_without_leaks(
    fault_stack: FaultStack, web: WebUI
) -> None:
    user = fault_stack.user()
    (worker,) = fault_stack.live_workers()
    with contextlib.ExitStack() as cleanup:
        client = cleanup.enter_context(fault_stack.client(user))
        upload_client = cleanup.enter_context(fault_stack.client(user))
        long = record(client, "long.txt", long_text(60))
        assert long.status == 202, long
        fid = long.file_id
        assert fid is not None  # a 202 carries the file's id
        wait_until(lambda: client.get(f"/api/v1/files/{fid}").json()["stage"] == "embed",
                   60, "the long job to be embedding")
        uploader = cleanup.enter_context(Uploader(upload_client, "load"))
        wait_until(lambda: len(uploader.answers) >= 3, 30, "uploads before the outage")

        fault_stack.postgres.stop()
        try:
            for r in (client.get("/api/v1/files"), client.get(f"/api/v1/files/{fid}"),
                      client.post("/api/v1/search", json={"query": "tides"}),
                      client.get("/readyz")):
                assert r.status_code == 503, (r.request.url, r.status_code, r.text)
                assert r.headers["content-type"].startswith("application/json")
            assert unavailable(client.get("/api/v1/files"))
            assert record(client, "down.txt", b"uploaded while Postgres is down").clean_503
            # The running job reaches its store step, fails it, and is retried later.
            wait_until(lambda: f"file.attempt_failed file_id={fid}" in worker.log(), 60,
                       "the in-flight job to fail its attempt")
            before = len(uploader.answers)
            wait_until(lambda: len(uploader.answers) >= before + 3, 30, "uploads during the outage")
        finally:
            fault_stack.postgres.start()
        wait_until(lambda: client.get("/api/v1/files").status_code == 200, 30, "the API to recover")
        after = len(uploader.answers)
        wait_until(lambda: len(uploader.answers) >= after + 3, 30, "uploads after the outage")
        answers = uploader.stop()

        bad = [a for a in answers if a.status != 202 and not a.clean_503]
        assert not bad, bad
        assert any(a.clean_503 for a in answers) and answers[-1].status == 202
        acknowledged = [a.file_id for a in [long, *answers] if a.file_id]
        for file_id in acknowledged:
            assert wait_for_status(client, file_id, timeout=120)["status"] == "done"
        done = client.get(f"/api/v1/files/{fid}").json()
        assert done["attempts"] >= 2, done  # the interrupted attempt was retried
        count, rows, distinct = fault_stack.chunk_facts(fid)
        assert count == rows == distinct >= 50

    assert worker.popen.poll() is None and web.proc.popen.poll() is None
    fault_stack.assert_no_checked_out_connections()
