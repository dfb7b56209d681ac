"""Hostile files through the real API, webui and worker.

Each must end `failed` with a reason a person understands (or `done` where
there is honest text), within a time bound, failed at once rather than
retried, with the worker alive and its memory back to normal afterwards. A
file the webui's upload-time type check refuses (4xx with a detail) counts
as handled too, where the same reason is given there.
"""

from __future__ import annotations

import re
import time
import uuid

import httpx
import psutil
import pytest
from sqlalchemy import Engine, text

from shared.settings import Settings
from tests.security.hostile import CASES, PASSWD_LINE, Case
from tests.support.helpers import upload, wait_for_status
from tests.support.stack import Stack, make_user

FINAL_WITHIN_S = 60
"""Upload to `done`/`failed`; the worker's parse limit in the suite is 30 s."""
RSS_SLACK_MB = 150
UPLOAD_REFUSALS = {400, 415}
"""What the webui answers when it refuses a file at upload (empty; type by magic bytes)."""


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _parser_server(worker_pid: int) -> psutil.Process:
    """The worker's multiprocessing forkserver: every parser child is forked from it."""
    for child in psutil.Process(worker_pid).children():
        if "multiprocessing.forkserver" in " ".join(child.cmdline()):
            return child
    raise AssertionError("the worker has no parser forkserver")


def _chunks(db_engine: Engine, file_id: str) -> list[str]:
    with db_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT text FROM chunks WHERE file_id = :f ORDER BY idx"), {"f": file_id}
        )
        return [r.text for r in rows]


@pytest.fixture(scope="module")
def baseline_rss(stack: Stack, db_engine: Engine) -> int:
    """Worker RSS before the batch, after one normal job warmed it up (the first
    embedding allocates for good)."""
    user = make_user(db_engine, "hostile-warmup")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {user.key}"},
                      timeout=30) as c:
        r = upload(c, "warmup.txt", f"warm-up document {uuid.uuid4()}\n".encode() * 50)
        assert r.status_code == 202, r.text
        assert wait_for_status(c, r.json()["id"], timeout=FINAL_WITHIN_S)["status"] == "done"
    return _rss(stack.worker.pid)


def _assert_worker_alive(stack: Stack) -> None:
    assert stack.worker.popen.poll() is None, f"worker died:\n{stack.worker.log()[-3000:]}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_file(
    case: Case, client: httpx.Client, stack: Stack, db_engine: Engine, baseline_rss: int
) -> None:
    data = case.build()
    assert len(data) < 2 * 1024 * 1024 - 4096, f"{case.id} is {len(data)} bytes: over MAX_UPLOAD_MB"
    started = time.monotonic()
    r = upload(client, case.name, data)

    if r.status_code in UPLOAD_REFUSALS:
        assert case.refusable, f"{case.id}: refused at upload ({r.status_code}): {r.text}"
        detail = r.json()["detail"]
        assert case.reason is not None and re.search(case.reason, detail), detail
        return
    assert r.status_code == 202, r.text
    file_id = r.json()["id"]
    body = wait_for_status(client, file_id, timeout=FINAL_WITHIN_S)
    elapsed = time.monotonic() - started
    assert elapsed < FINAL_WITHIN_S

    chunks = _chunks(db_engine, file_id)
    assert not any(PASSWD_LINE in chunk for chunk in chunks)  # never an XXE's payload
    if case.reason is None:
        assert body["status"] == "done", body
        stored = "\n".join(chunks)
        for phrase in case.text:
            assert phrase in stored, (phrase, stored[:500])
        assert "\x00" not in stored and "\ufffd" not in stored
    else:
        assert body["status"] == "failed", body
        assert re.search(case.reason, body["error"] or ""), body["error"]
        assert chunks == [] and body["chunk_count"] == 0
        assert PASSWD_LINE not in body["error"]
    # Rejected at once as a property of the bytes: not a crash retried JOB_MAX_RETRIES times.
    assert body["attempts"] == 1, body
    _assert_worker_alive(stack)


def test_names_with_nul_and_dot_dot_are_cleaned_and_bytes_stored_under_a_server_id(
    client: httpx.Client, stack: Stack, db_engine: Engine, settings: Settings
) -> None:
    """Raw multipart, so the NUL byte really reaches the server (httpx would
    percent-encode it): the display name is cleaned, the bytes live under a
    server-chosen key, and nothing is written outside UPLOAD_DIR."""
    cases = {
        b"../../etc/passwd": "passwd",
        b"..\\..\\..\\windows\\system32\\evil.txt": "evil.txt",
        b"report\x00.txt": "report.txt",
        b"../": "unnamed",
    }
    for raw_name, expected in cases.items():
        payload = f"name test {uuid.uuid4()}\n".encode()
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="' + raw_name + b'"\r\n'
            + b"Content-Type: text/plain\r\n\r\n" + payload + f"\r\n--{boundary}--\r\n".encode()
        )
        r = client.post("/api/v1/files", content=body,
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 202, (raw_name, r.text)
        file_id = r.json()["id"]
        assert r.json()["filename"] == expected, raw_name
        assert client.get(f"/api/v1/files/{file_id}").json()["filename"] == expected
        with db_engine.connect() as conn:
            key = conn.execute(text("SELECT storage_key FROM files WHERE id = :f"),
                               {"f": file_id}).scalar_one()
        assert re.fullmatch(r"[0-9a-f]{32}", key)
        assert (settings.upload_dir / key[:2] / key).read_bytes() == payload
        download = client.get(f"/api/v1/files/{file_id}/content")
        assert download.status_code == 200 and download.content == payload
        disposition = download.headers["content-disposition"]
        assert "/" not in disposition and "\\" not in disposition and "\x00" not in disposition
        assert wait_for_status(client, file_id, timeout=FINAL_WITHIN_S)["status"] == "done"
    root = settings.upload_dir
    assert not any("passwd" in p.name or "evil" in p.name for p in root.rglob("*"))
    assert not (root.parent / "etc").exists() and not (root.parent.parent / "etc").exists()


def test_worker_survives_the_batch_with_memory_back_to_normal(
    stack: Stack, baseline_rss: int, client: httpx.Client
) -> None:
    """Runs after the cases above (file order): same worker process, RSS within
    RSS_SLACK_MB of before, no parser child left behind, and it still works."""
    _assert_worker_alive(stack)
    r = upload(client, "after.txt", f"after the hostile batch {uuid.uuid4()}\n".encode())
    assert r.status_code == 202, r.text
    assert wait_for_status(client, r.json()["id"], timeout=FINAL_WITHIN_S)["status"] == "done"
    grown_mb = (_rss(stack.worker.pid) - baseline_rss) / (1024 * 1024)
    assert grown_mb < RSS_SLACK_MB, f"worker RSS grew by {grown_mb:.0f} MB over the batch"
    leftovers = _parser_server(stack.worker.pid).children()
    assert leftovers == [], f"parser children outlived their jobs: {leftovers}"
