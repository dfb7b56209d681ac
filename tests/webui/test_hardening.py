"""Issue 12 against the real webui process (uvicorn): writes visible before their 2xx,
authentication before the body, metrics off the API port, event-stream caps, a
client that goes away mid-upload, and 100 uploads at once from one client."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import Engine, text

from tests.support.helpers import upload
from tests.support.stack import ApiUser, Stack, make_user


def _admin(db_engine: Engine) -> dict[str, str]:
    admin = make_user(db_engine, "admin")
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE users SET is_admin = true WHERE id = :i"), {"i": admin.id})
    return {"Authorization": f"Bearer {admin.key}"}


def test_admin_writes_take_effect_before_their_answer(stack: Stack, db_engine: Engine) -> None:
    """Before: the session committed after the response was sent, and a new key was
    refused about 1 time in 4 right after its 201."""
    target = make_user(db_engine, "target")
    refused = []
    with httpx.Client(base_url=stack.url, headers=_admin(db_engine), timeout=30) as admin, \
            httpx.Client(base_url=stack.url, timeout=30) as user:
        for _ in range(50):
            made = admin.post(f"/api/v1/admin/users/{target.id}/keys", json={"name": "now"})
            assert made.status_code == 201
            r = user.get("/api/v1/me", headers={"Authorization": f"Bearer {made.json()['key']}"})
            if r.status_code != 200:
                refused.append(r.status_code)
        assert refused == []

        key = made.json()
        assert admin.delete(f"/api/v1/admin/keys/{key['id']}").status_code == 200
        r = user.get("/api/v1/me", headers={"Authorization": f"Bearer {key['key']}"})
        assert r.status_code == 401 and "revoked" in r.json()["detail"]

        other = make_user(db_engine, "disabled")
        assert admin.patch(f"/api/v1/admin/users/{other.id}",
                           json={"is_active": False}).status_code == 200
        r = user.get("/api/v1/me", headers={"Authorization": f"Bearer {other.key}"})
        assert r.status_code == 401 and "disabled" in r.json()["detail"]


def _raw_request(url: str, head: str, body: bytes = b"", wait: float = 5) -> bytes:
    """Send `head` (and `body`) on a plain socket; what the server answers within `wait` s."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        deadline = time.monotonic() + wait
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        return data


def test_anonymous_body_is_refused_before_it_is_read(stack: Stack) -> None:
    """Before: an anonymous POST declaring 100 MB made the server wait for all of it."""
    head = ("POST /api/v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000000\r\n\r\n")
    started = time.monotonic()
    answer = _raw_request(stack.url, head, b'{"query": "', wait=5)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert time.monotonic() - started < 3


def test_non_upload_bodies_are_capped(client: httpx.Client) -> None:
    big = {"query": "x", "file_ids": [str(uuid.uuid4()) for _ in range(9000)]}  # ~350 KB
    r = client.post("/api/v1/search", json=big)
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "body_too_large" and "larger than" in r.json()["detail"]


def test_metrics_are_labelled_by_route_and_not_on_the_api_port(
    stack: Stack, client: httpx.Client
) -> None:
    """Before: /api/v1/files/<random>/ (307) added a series per raw path, on a public port."""
    probes = [uuid.uuid4().hex for _ in range(20)]
    for probe in probes:
        httpx.get(f"{stack.url}/api/v1/files/{probe}/")
        client.get(f"/api/v1/files/{probe}/")
        client.get(f"/no-such-{probe}")
    assert client.get("/metrics").status_code == 404
    exposed = httpx.get(stack.webui_metrics_url).text
    assert not [p for p in probes if p in exposed]
    handlers = set(re.findall(r'http_requests_total\{[^}]*handler="([^"]*)"', exposed))
    assert "none" in handlers
    assert not [h for h in handlers if re.search(r"[0-9a-f]{32}", h)]


def test_event_streams_are_capped_per_user(stack: Stack, db_engine: Engine) -> None:
    user, other = make_user(db_engine, "streams"), make_user(db_engine, "streams2")
    cap = 50  # EVENT_STREAMS_PER_USER in the suite's environment

    async def scenario() -> tuple[int, str, int, int]:
        limits = httpx.Limits(max_connections=cap + 10)
        async with httpx.AsyncClient(base_url=stack.url, limits=limits,
                                     timeout=httpx.Timeout(30, read=None)) as c:
            hdr = {"Authorization": f"Bearer {user.key}"}
            streams = [c.stream("GET", "/api/v1/events", headers=hdr) for _ in range(cap)]
            opened = [await s.__aenter__() for s in streams]
            assert all(r.status_code == 200 for r in opened)
            over = await c.get("/api/v1/events", headers=hdr)
            async with c.stream("GET", "/api/v1/events",
                                headers={"Authorization": f"Bearer {other.key}"}) as r:
                other_status = r.status_code
            await streams[0].__aexit__(None, None, None)
            await asyncio.sleep(0.5)
            async with c.stream("GET", "/api/v1/events", headers=hdr) as r:
                again = r.status_code
            for s in streams[1:]:
                await s.__aexit__(None, None, None)
            return over.status_code, over.json()["detail"], other_status, again

    over, detail, other_status, again = asyncio.run(scenario())
    assert over == 429 and "event streams" in detail
    assert other_status == 200 and again == 200


def test_client_gone_mid_upload_is_a_4xx(stack: Stack, user: ApiUser) -> None:
    boundary = "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\""
            f"\r\nContent-Type: text/plain\r\n\r\n").encode() + b"half of it"
    head = (f"POST /api/v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: 100000\r\n\r\n")
    host, port = stack.url.removeprefix("http://").split(":")
    before = stack.webui.log().count('"POST /api/v1/files HTTP/1.1" 5')
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + part)
        time.sleep(0.5)
    time.sleep(1.0)
    metrics = httpx.get(stack.webui_metrics_url).text
    assert re.search(r'http_requests_total\{handler="/api/v1/files",method="POST",'
                     r'status="4xx"\}', metrics), metrics[:2000]
    assert stack.webui.log().count('"POST /api/v1/files HTTP/1.1" 5') == before
    assert "client_closed_request" not in metrics  # codes are not labels


def test_a_client_that_follows_retry_after_gets_every_file_in(
    stack: Stack, db_engine: Engine
) -> None:
    """Before: 100 uploads at once, 429 with Retry-After equal to the keep-alive timeout,
    and 1-3 uploads per run lost to a ReadError on a connection the server had closed."""
    user = make_user(db_engine, "burst")
    hdr = {"Authorization": f"Bearer {user.key}"}

    async def one(c: httpx.AsyncClient, i: int, refusals: list[int]) -> str:
        data = f"burst file {i} {uuid.uuid4()}\n".encode()
        while True:
            r = await c.post("/api/v1/files", headers=hdr, files={"file": (f"f{i}.txt", data)})
            # 429 (over the per-user limit) and 503 (pool busy on an overloaded machine) both
            # carry Retry-After; a well-behaved client waits as told and tries again.
            if r.status_code not in (429, 503):
                assert r.status_code == 202, r.text
                return str(r.json()["id"])
            assert "Retry-After" in r.headers, r.text
            refusals.append(i)
            await asyncio.sleep(float(r.headers["Retry-After"]))

    async def scenario() -> tuple[list[str], list[int], dict[str, Any]]:
        refusals: list[int] = []
        async with httpx.AsyncClient(base_url=stack.url, timeout=60,
                                     limits=httpx.Limits(max_connections=100)) as c:
            ids = await asyncio.gather(*(one(c, i, refusals) for i in range(100)))
            status = (await c.post("/api/v1/files/status", headers=hdr,
                                   json={"ids": [*ids, str(uuid.uuid4())]})).json()
            # Their jobs become no-ops: the suite's one worker is not left a backlog.
            for fid in ids:
                assert (await c.delete(f"/api/v1/files/{fid}", headers=hdr)).status_code == 204
        return list(ids), refusals, status

    ids, refusals, status = asyncio.run(scenario())
    assert len(set(ids)) == 100
    assert {f["id"] for f in status["items"]} == set(ids)
    assert len(status["missing"]) == 1
    print(f"429 refusals followed: {len(refusals)}")


def test_batch_status_shows_only_your_files(stack: Stack, client: httpx.Client,
                                            db_engine: Engine) -> None:
    mine = upload(client, "mine.txt", f"mine {uuid.uuid4()}".encode()).json()["id"]
    other = make_user(db_engine, "nosy")
    with httpx.Client(base_url=stack.url,
                      headers={"Authorization": f"Bearer {other.key}"}) as c:
        r = c.post("/api/v1/files/status", json={"ids": [mine]})
    assert r.status_code == 200 and r.json() == {"items": [], "missing": [mine]}


_FAIL_AT_COMMIT = """
CREATE OR REPLACE FUNCTION sluice_test_fail_at_commit() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'refused at commit (test)'; END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS sluice_test_fail_at_commit ON api_keys;
CREATE CONSTRAINT TRIGGER sluice_test_fail_at_commit AFTER INSERT ON api_keys
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = 'fail-at-commit')
EXECUTE FUNCTION sluice_test_fail_at_commit();
"""


def test_a_failed_commit_is_never_a_2xx(stack: Stack, db_engine: Engine) -> None:
    """A deferred constraint fails only at COMMIT. Before: the commit ran after the
    response was sent, so the client had its 201 for a key that never existed."""
    target = make_user(db_engine, "failcommit")
    with db_engine.begin() as conn:
        conn.exec_driver_sql(_FAIL_AT_COMMIT)
    try:
        with httpx.Client(base_url=stack.url, headers=_admin(db_engine), timeout=30) as admin:
            r = admin.post(f"/api/v1/admin/users/{target.id}/keys", json={"name": "fail-at-commit"})
            assert r.status_code == 500, r.text
            assert r.json()["code"] == "internal_error" and "try again" in r.json()["detail"]
            assert "refused at commit" not in r.text  # the detail is in the log, not the answer
            assert r.json()["incident"] in stack.webui.log()
            keys = admin.get(f"/api/v1/admin/users/{target.id}/keys").json()
            assert [k["name"] for k in keys] == ["test"]
    finally:
        with db_engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS sluice_test_fail_at_commit ON api_keys")


def test_a_large_upload_refused_for_slots_gets_its_429_not_a_reset(
    stack: Stack, db_engine: Engine
) -> None:
    """The refusal comes before the body is read. The client must still read the 429,
    not a connection reset, even when it has megabytes left to send."""
    user = make_user(db_engine, "bigrefused")
    hdr = {"Authorization": f"Bearer {user.key}"}
    boundary = "slowb0undary"
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"s.txt\"\r\nContent-Type: text/plain\r\n\r\n").encode()
        yield f"slow {uuid.uuid4()}".encode()
        await release.wait()
        yield f"\r\n--{boundary}--\r\n".encode()

    async def scenario() -> list[str]:
        slow_hdr = {**hdr, "Content-Type": f"multipart/form-data; boundary={boundary}"}
        outcomes = []
        async with httpx.AsyncClient(base_url=stack.url, timeout=60,
                                     limits=httpx.Limits(max_connections=30)) as c:
            holders = [asyncio.create_task(c.post("/api/v1/files", headers=slow_hdr,
                                                  content=slow_body())) for _ in range(8)]
            await asyncio.sleep(1.5)  # all 8 slots (UPLOADS_IN_FLIGHT_PER_USER) taken
            big = b"big refused upload line\n" * 75_000  # 1.8 MB
            for _ in range(10):
                try:
                    r = await c.post("/api/v1/files", headers=hdr, files={"file": ("b.txt", big)})
                    outcomes.append(str(r.status_code))
                except httpx.TransportError as err:
                    outcomes.append(type(err).__name__)
            release.set()
            held = [await h for h in holders]
            assert [r.status_code for r in held] == [202] * 8
            for r in held:
                await c.delete(f"/api/v1/files/{r.json()['id']}", headers=hdr)
        return outcomes

    assert asyncio.run(scenario()) == ["429"] * 10
