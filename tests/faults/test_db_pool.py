"""The webui's database pool runs out: clean 503s, never 500s, and nothing stays checked out.

How "checked out" is measured: the webui exposes no pool gauge the tests can read,
so (1) `pg_stat_activity` must show its connections (application_name sluice-webui)
`idle`, never `active` / `idle in transaction`, and no more than the pool allows,
and (2) with a pool of ONE connection, a run of sequential requests must all answer
200: a single leaked checkout would turn every one of them into a 503.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import text

from tests.faults.stack import FaultStack, WebUI, unavailable
from tests.support.helpers import upload, wait_until
from tests.support.stack import ApiUser

FAULT_ENV = {
    "DATABASE_POOL_SIZE": "1",
    "DATABASE_POOL_MAX_OVERFLOW": "0",
    "DATABASE_POOL_TIMEOUT": "1",
    "MAX_UPLOAD_MB": "40",
}
BOUNDARY = "sluice-slow-upload"


@pytest.fixture(scope="module")
def web(fault_stack: FaultStack) -> WebUI:
    return fault_stack.start_webui()  # no worker: nothing here needs one


def _pool_is_back(fault_stack: FaultStack, client: httpx.Client) -> None:
    s = fault_stack.settings
    wait_until(lambda: set(fault_stack.connections("webui")) <= {"idle"}, 30,
               "webui connections to be idle")
    assert sum(fault_stack.connections("webui").values()) <= (
        s.database_pool_size + s.database_pool_max_overflow)
    for _ in range(10):
        r = client.get("/api/v1/files")
        assert r.status_code == 200, r.text


def test_requests_get_a_clean_503_when_the_pool_is_exhausted(
    fault_stack: FaultStack, web: WebUI
) -> None:
    """Postgres turns slow (here: a lock held on `files`, as a migration or a long
    transaction would): the one request that got the connection waits with it; the
    others time out on the pool after DATABASE_POOL_TIMEOUT and get a clean 503."""
    user = fault_stack.user()
    n = 12

    def list_files(_: int) -> httpx.Response:
        with fault_stack.client(user, web, timeout=60) as c:
            return c.get("/api/v1/files")

    with fault_stack.db.connect() as locker, ThreadPoolExecutor(n) as pool:
        locker.execute(text("LOCK TABLE files IN ACCESS EXCLUSIVE MODE"))
        futures = [pool.submit(list_files, i) for i in range(n)]
        wait_until(lambda: sum(f.done() for f in futures) >= n - 1, 60,
                   "all but the request holding the connection to be answered")
        assert fault_stack.connections("webui").get("active") == 1  # waiting on the lock
        locker.rollback()
        answers = [f.result() for f in futures]
    codes = Counter(r.status_code for r in answers)
    assert codes == {200: 1, 503: n - 1}, [(r.status_code, r.text[:200]) for r in answers]
    assert all(unavailable(r) for r in answers if r.status_code == 503)
    assert "busy" in next(r for r in answers if r.status_code == 503).json()["detail"]
    with fault_stack.client(user, web) as client:
        _pool_is_back(fault_stack, client)


def test_concurrent_searches_under_a_tiny_pool_never_fail_with_500(
    fault_stack: FaultStack, web: WebUI
) -> None:
    """30 searches at once against a pool of one connection. Query encoding (micro-batched)
    happens before the search takes a connection, so most succeed; whoever waits
    past DATABASE_POOL_TIMEOUT gets a clean 503. Never a 500, and nothing stays
    checked out."""
    user = fault_stack.user()
    query = " ".join(f"estuary{i}" for i in range(400))[:2000]

    def search(_: int) -> httpx.Response:
        with fault_stack.client(user, web, timeout=60) as c:
            return c.post("/api/v1/search", json={"query": query, "top_k": 5})

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(search, range(30)))
    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {200, 503} and codes[200] > 0, [r.text[:200] for r in answers]
    assert all(unavailable(r) for r in answers if r.status_code == 503)
    with fault_stack.client(user, web) as client:
        _pool_is_back(fault_stack, client)


def _slow_body(started: threading.Event, pieces: int, pause: float) -> Iterator[bytes]:
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
           f"filename=\"slow.txt\"\r\nContent-Type: text/plain\r\n\r\n").encode()
    for i in range(pieces):
        if i == 2:
            started.set()
        time.sleep(pause)
        yield f"slowly arriving line {i} {time.monotonic_ns()}\n".encode()
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_a_slow_upload_does_not_hold_a_database_connection(
    fault_stack: FaultStack, web: WebUI
) -> None:
    user: ApiUser = fault_stack.user()
    started = threading.Event()
    result: list[httpx.Response] = []

    def slow_upload() -> None:
        with fault_stack.client(user, web, timeout=60) as c:
            result.append(c.post(
                "/api/v1/files", content=_slow_body(started, pieces=10, pause=0.4),
                headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}))

    uploader = threading.Thread(target=slow_upload, daemon=True)
    uploader.start()
    try:
        assert started.wait(30)
        with fault_stack.client(user, web) as client:
            # While the body trickles in (~3 s more), the only connection must be free.
            while uploader.is_alive() and not result:
                r = client.get("/api/v1/files")
                assert r.status_code == 200, f"a slow upload holds the connection: {r.text}"
                time.sleep(0.2)
    finally:
        uploader.join(60)
    assert result and result[0].status_code == 202, result and result[0].text
    with fault_stack.client(user, web) as client:
        _pool_is_back(fault_stack, client)


def test_a_slow_download_does_not_hold_a_database_connection(
    fault_stack: FaultStack, web: WebUI
) -> None:
    user = fault_stack.user()
    data = f"{uuid.uuid4()}\n".encode() + (b"x" * 1023 + b"\n") * 30 * 1024  # 30 MB
    with fault_stack.client(user, web) as client:
        r = upload(client, "big.txt", data)
        assert r.status_code == 202, r.text
        fid = r.json()["id"]
        with fault_stack.client(user, web, timeout=60) as slow, \
                slow.stream("GET", f"/api/v1/files/{fid}/content") as download:
            assert download.status_code == 200
            pieces = download.iter_bytes(64 * 1024)
            next(pieces)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # a slow reader: the response keeps streaming
                next(pieces)
                r = client.get("/api/v1/files")
                assert r.status_code == 200, f"a slow download holds the connection: {r.text}"
                time.sleep(0.2)
        _pool_is_back(fault_stack, client)
