"""A job that runs past JOB_TIMEOUT is stopped, retried, and finally failed with the reason."""

from __future__ import annotations

import re

import pytest

from tests.faults.stack import FaultStack, WebUI, long_text
from tests.support.helpers import unique_text, upload, wait_for_status

FAULT_ENV = {
    "JOB_TIMEOUT": "5",
    "JOB_MAX_RETRIES": "1",
    "JOB_RETRY_DELAY": "1",
    "EMBED_THREADS": "1",
    "SEGMENT_CHUNKS": "1000",
}


@pytest.fixture(scope="module")
def web(fault_stack: FaultStack) -> WebUI:
    return fault_stack.start(workers=1)


def test_job_past_its_timeout_is_retried_then_failed_with_the_reason(
    fault_stack: FaultStack, web: WebUI
) -> None:
    s = fault_stack.settings
    (worker,) = fault_stack.live_workers()
    with fault_stack.client(fault_stack.user()) as client:
        # ~250 chunks in one segment: well over 10 s of embedding on one thread, against
        # a 5 s timeout per unit.
        r = upload(client, "huge.txt", long_text(250))
        assert r.status_code == 202, r.text
        fid = r.json()["id"]
        failed = wait_for_status(client, fid, {"done", "failed"}, timeout=120)
        assert failed["status"] == "failed", failed
        assert failed["attempts"] == s.job_max_retries + 1
        # A sentence (the class name goes to the log only).
        assert "JobTimeoutException" not in failed["error"], failed["error"]
        assert f"longer than the {s.job_timeout} seconds" in failed["error"], failed["error"]
        assert "retrying" not in failed["error"]
        assert failed["chunk_count"] == 0 and fault_stack.chunk_facts(fid)[1] == 0

        # Every attempt was stopped by the timeout; all but the last were retried.
        attempts = re.findall(
            rf"file\.attempt_failed file_id={fid} final=(\w+) reason=JobTimeoutException",
            worker.log(),
        )
        assert attempts == ["False"] * s.job_max_retries + ["True"], attempts

        # The worker survived the timeouts and still works.
        assert worker.popen.poll() is None
        ok = upload(client, "small.txt", unique_text("after the timeouts").encode()).json()
        assert wait_for_status(client, ok["id"], timeout=60)["status"] == "done"
