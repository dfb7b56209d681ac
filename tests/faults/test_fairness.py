"""Limits that say why, a parse starved of CPU retried, and fair turns between users."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest

from tests.faults.stack import EventLog, FaultStack, WebUI, long_text
from tests.support.helpers import upload, wait_for_status, wait_until

FAULT_ENV = {
    "MAX_CHUNKS_PER_FILE": "30",
    "PARSE_TIMEOUT": "10",  # 10 s of CPU, 20 s of wall clock
    "MAX_UPLOAD_MB": "8",
    "JOB_MONITORING_INTERVAL": "1",
    "UNIT_LEASE_SECONDS": "4",
    "RECONCILE_INTERVAL": "1",
    "JOB_RETRY_DELAY": "1",
    "JOB_MAX_RETRIES": "2",
}
A_FILES = 200


@pytest.fixture(scope="module")
def web(fault_stack: FaultStack) -> WebUI:
    return fault_stack.start(workers=1)


def test_a_file_over_max_chunks_fails_at_once_with_its_reason(
    fault_stack: FaultStack, web: WebUI
) -> None:
    with EventLog(fault_stack.rc) as events, fault_stack.client(fault_stack.user()) as c:
        fid = upload(c, "long.txt", long_text(60, "too many")).json()["id"]
        body = wait_for_status(c, fid, timeout=60)
        time.sleep(0.3)
        seen = events.of(fid)
    assert body["status"] == "failed" and body["attempts"] == 1, body
    assert "more than the 30 one file may have" in body["error"], body["error"]
    assert "MAX_CHUNKS_PER_FILE" in body["error"] and "split it" in body["error"]
    assert body["segments_total"] == 0 and body["chunk_count"] == 0
    assert not any(e.get("stage") == "embed" for e in seen), seen  # nothing was embedded
    units = fault_stack.sql("SELECT kind, state FROM work_units WHERE file_id = :i",
                            i=uuid.UUID(fid))
    assert units == [("parse", "failed")]


def test_a_parse_starved_of_cpu_is_retried(fault_stack: FaultStack, web: WebUI) -> None:
    """The parser child is stopped (SIGSTOP: it gets no CPU, as on an overloaded node)
    until its wall-clock allowance runs out: not the document's fault, so the unit is
    retried, and the next attempt reads it."""
    (worker,) = fault_stack.live_workers()
    server = next(p for p in psutil.Process(worker.pid).children()
                  if "forkserver" in " ".join(p.cmdline()))
    stopped: list[psutil.Process] = []

    def stop_first_parser(done: threading.Event) -> None:
        while not done.is_set() and not stopped:
            for child in server.children():
                child.send_signal(signal.SIGSTOP)
                stopped.append(child)
                return
            time.sleep(0.002)

    data = long_text(5, "starved")
    done = threading.Event()
    catcher = threading.Thread(target=stop_first_parser, args=(done,), daemon=True)
    catcher.start()
    with EventLog(fault_stack.rc) as events, fault_stack.client(fault_stack.user()) as c:
        try:
            fid = upload(c, "tides.txt", data).json()["id"]
            wait_until(lambda: stopped, 30, "the parser child to be caught")
            body = wait_for_status(c, fid, timeout=120)
        finally:
            done.set()
            catcher.join(5)
        seen = events.of(fid)
    assert body["status"] == "done", body
    assert body["attempts"] == 2, body
    retrying = [e for e in seen if e["status"] == "queued"]
    assert retrying and "busy" in retrying[0]["error"], seen
    assert f"file.attempt_failed file_id={fid} final=False reason=ParserOutOfWallTime" in worker.log()


def test_one_users_backlog_does_not_hold_up_another(fault_stack: FaultStack, web: WebUI) -> None:
    """A queues 200 files, then B uploads one; one worker. Units go out in turns across
    owners, RQ holds one unit per worker: when B's file arrives, at most one of A's
    units is running and one waits in RQ; B's parse goes next, then one of A's (a
    turn), then B's segment. So at most 3 of A's units finish between B's upload and B's
    file being done (+1 for one that was finishing as B uploaded), whatever A's backlog."""
    a, b = fault_stack.user("a"), fault_stack.user("b")
    with EventLog(fault_stack.rc) as events:
        with fault_stack.client(a) as ca, ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(
                lambda i: upload(ca, f"a{i}.txt", f"A's note {i} {uuid.uuid4()}".encode()),
                range(A_FILES)))
        assert all(r.status_code == 202 for r in answers)
        with fault_stack.client(b) as cb:
            mark = len(events.events)
            fid = upload(cb, "b.txt", f"B's only file {uuid.uuid4()}".encode()).json()["id"]
            assert wait_for_status(cb, fid, timeout=120)["status"] == "done"
            time.sleep(0.3)
        log = list(events.events)
    b_done = next(n for n, e in enumerate(log) if e["file_id"] == fid and e["status"] == "done")
    between = log[mark:b_done]
    a_units = [e for e in between if e["owner_id"] == a.id and _unit_finished(e)]
    assert len(a_units) <= 4, [(e["status"], e.get("stage")) for e in between]
    a_done = sum(1 for e in log[:b_done] if e["owner_id"] == a.id and e["status"] == "done")
    assert a_done <= A_FILES // 2, f"B waited for {a_done} of A's files"  # not FIFO


def _unit_finished(event: dict[str, Any]) -> bool:
    """A parse unit ends with an `embed` event, a file's last segment with `done`."""
    return event["status"] == "done" or (event["status"] == "processing"
                                         and event.get("stage") == "embed")
