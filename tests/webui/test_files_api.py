"""The files API against the running webui: status codes, bodies, and what is left behind."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from sqlalchemy import Engine, text

from shared.settings import Settings
from tests.support.helpers import upload, wait_for_status
from tests.support.samples import make_pdf
from tests.support.stack import Stack, make_user


def _stored_files(settings: Settings) -> set[Path]:
    return {p for p in settings.upload_dir.rglob("*") if p.is_file()}


def test_upload_returns_202_with_the_queued_file(client: httpx.Client) -> None:
    r = upload(client, "hello.txt", f"hello {uuid.uuid4()}".encode(), "text/plain")
    assert r.status_code == 202
    body = r.json()
    assert body["filename"] == "hello.txt"
    assert body["status"] in {"queued", "processing", "done"}
    assert body["size_bytes"] > 0 and len(body["sha256"]) == 64


def test_same_bytes_twice_give_one_file(client: httpx.Client, db_engine: Engine) -> None:
    data = f"dedup me {uuid.uuid4()}".encode()
    first = upload(client, "a.txt", data)
    second = upload(client, "b.txt", data)
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    with db_engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM files WHERE id = :i"),
                         {"i": first.json()["id"]}).scalar()
    assert n == 1


def test_too_large_is_413_and_leaves_nothing(
    client: httpx.Client, settings: Settings, db_engine: Engine
) -> None:
    before = _stored_files(settings)
    with db_engine.connect() as conn:
        rows_before = conn.execute(text("SELECT count(*) FROM files")).scalar()
    big = b"x" * (settings.max_upload_bytes + 1024)
    r = upload(client, "big.txt", big)
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]
    assert _stored_files(settings) == before
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM files")).scalar() == rows_before


def test_missing_or_bad_key_is_401(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url) as anon:
        r = anon.get("/api/v1/files")
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized"
        r = anon.get("/api/v1/files", headers={"Authorization": "Bearer slk_000000000000_nope"})
        assert r.status_code == 401


def test_bad_requests_get_readable_4xx(client: httpx.Client) -> None:
    r = client.post("/api/v1/files", content=b"not multipart", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/api/v1/files", content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx",
                    headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_upload"
    assert r.json()["detail"].startswith("the upload is not valid multipart")  # a sentence
    r = client.post("/api/v1/files", files={"other": ("x.txt", b"abc")})
    assert r.status_code == 400 and "file" in r.json()["detail"]
    r = upload(client, "empty.txt", b"")
    assert r.status_code == 400 and r.json()["code"] == "empty_file"
    r = client.get("/api/v1/files/not-a-uuid")
    assert r.status_code == 422 and r.json()["detail"]
    r = client.post("/api/v1/search", json={"query": "", "top_k": 5})
    assert r.status_code == 422 and "query" in r.json()["detail"]
    r = client.post("/api/v1/search", json={"query": "x", "top_k": 100_000})
    assert r.status_code == 422


def test_list_filters_and_paginates(client: httpx.Client) -> None:
    ids = [upload(client, f"p{i}.txt", f"page {i} {uuid.uuid4()}".encode()).json()["id"]
           for i in range(3)]
    for i in ids:
        wait_for_status(client, i)
    page = client.get("/api/v1/files", params={"limit": 2, "offset": 0}).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    rest = client.get("/api/v1/files", params={"limit": 2, "offset": 2}).json()
    assert len(rest["items"]) == 1
    assert {f["id"] for f in page["items"] + rest["items"]} == set(ids)
    done = client.get("/api/v1/files", params={"status": "done"}).json()
    assert done["total"] == 3
    assert client.get("/api/v1/files", params={"status": "failed"}).json()["total"] == 0
    assert client.get("/api/v1/files", params={"status": "bogus"}).status_code == 422


def test_content_returns_original_bytes_with_safe_name(client: httpx.Client) -> None:
    data = f"original bytes {uuid.uuid4()}".encode()
    fid = upload(client, "Résumé notes.txt", data).json()["id"]
    r = client.get(f"/api/v1/files/{fid}/content")
    assert r.status_code == 200
    assert r.content == data
    assert "filename*=utf-8''R%C3%A9sum%C3%A9%20notes.txt" in r.headers["content-disposition"]


def test_delete_removes_row_chunks_and_bytes(
    client: httpx.Client, settings: Settings, db_engine: Engine
) -> None:
    fid = upload(client, "gone.txt", f"soon gone {uuid.uuid4()}".encode()).json()["id"]
    wait_for_status(client, fid)
    with db_engine.connect() as conn:
        key = conn.execute(text("SELECT storage_key FROM files WHERE id=:i"), {"i": fid}).scalar()
    assert any(p.name == key for p in _stored_files(settings))
    assert client.delete(f"/api/v1/files/{fid}").status_code == 204
    assert client.get(f"/api/v1/files/{fid}").status_code == 404
    assert client.delete(f"/api/v1/files/{fid}").status_code == 404
    with db_engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM chunks WHERE file_id=:i"), {"i": fid}).scalar()
    assert n == 0
    assert not any(p.name == key for p in _stored_files(settings))


def test_retry_only_for_failed_files(client: httpx.Client) -> None:
    fid = upload(client, "ok.txt", f"fine {uuid.uuid4()}".encode()).json()["id"]
    wait_for_status(client, fid)
    r = client.post(f"/api/v1/files/{fid}/retry")
    assert r.status_code == 409 and "only failed" in r.json()["detail"]


def test_a_name_that_lies_about_the_type_is_refused_at_upload(
    client: httpx.Client, settings: Settings
) -> None:
    before = _stored_files(settings)
    r = upload(client, "invoice.pdf", b"MZ\x90\x00" + uuid.uuid4().bytes * 64)
    assert r.status_code == 415
    assert "not a PDF" in r.json()["detail"]
    assert _stored_files(settings) == before


def test_document_without_text_fails_with_reason_and_can_be_retried(client: httpx.Client) -> None:
    r = upload(client, "scan.pdf", make_pdf([[], []]) + f"%{uuid.uuid4()}\n".encode())
    assert r.status_code == 202
    body = wait_for_status(client, r.json()["id"])
    assert body["status"] == "failed"
    assert "no extractable text" in body["error"].lower() or "no text" in body["error"].lower()
    assert body["attempts"] == 1  # a permanent problem is not retried pointlessly
    r = client.post(f"/api/v1/files/{body['id']}/retry")
    assert r.status_code == 202 and r.json()["status"] == "queued"
    again = wait_for_status(client, body["id"])
    assert again["status"] == "failed" and again["attempts"] == 1


def test_another_users_file_is_invisible(client: httpx.Client, stack: Stack, db_engine: Engine) -> None:
    secret = f"private walrus ledger {uuid.uuid4()}"
    fid = upload(client, "mine.txt", secret.encode()).json()["id"]
    wait_for_status(client, fid)
    other = make_user(db_engine, "other")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {other.key}"}) as c:
        assert c.get(f"/api/v1/files/{fid}").status_code == 404
        assert c.get(f"/api/v1/files/{fid}/content").status_code == 404
        assert c.post(f"/api/v1/files/{fid}/retry").status_code == 404
        assert c.delete(f"/api/v1/files/{fid}").status_code == 404
        assert c.get("/api/v1/files").json()["total"] == 0
        hits = c.post("/api/v1/search", json={"query": secret, "top_k": 10}).json()["hits"]
        assert hits == []
        hits = c.post("/api/v1/search", json={"query": secret, "file_ids": [fid]}).json()["hits"]
        assert hits == []
    # and the owner still has it
    assert client.get(f"/api/v1/files/{fid}").json()["status"] == "done"


def test_health_endpoints(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.url}/readyz").json()
    assert ready["checks"] == {"database": "ok", "redis": "ok"}
    assert httpx.get(f"{stack.url}/openapi.json").status_code == 200
    assert "http_requests_total" in httpx.get(stack.webui_metrics_url).text
    # Not on the API port (the one the Route exposes).
    assert httpx.get(f"{stack.url}/metrics").status_code == 404
