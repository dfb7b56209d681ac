"""Two users, every endpoint, every verb: each user's ids tried by the other.
Nothing leaks (404, never 403 with details), nothing changes."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.support.helpers import upload, wait_for_status
from tests.support.samples import make_pdf
from tests.support.stack import ApiUser, Stack, make_user


def _client(stack: Stack, user: ApiUser) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {user.key}"},
                        timeout=30)


@pytest.fixture(scope="module")
def owners(stack: Stack, db_engine: Engine) -> dict[str, Any]:
    """User A with a done and a failed file; user B with a done file."""
    a, b = make_user(db_engine, "alice"), make_user(db_engine, "bob")
    with _client(stack, a) as ca, _client(stack, b) as cb:
        a_done = upload(ca, "a.txt", f"alice secret heron ledger {uuid.uuid4()}".encode()).json()["id"]
        a_failed = upload(ca, "scan.pdf", make_pdf([[]]) + uuid.uuid4().hex.encode()).json()["id"]
        b_done = upload(cb, "b.txt", f"bob secret otter ledger {uuid.uuid4()}".encode()).json()["id"]
        snapshots = {
            a_done: wait_for_status(ca, a_done), a_failed: wait_for_status(ca, a_failed),
            b_done: wait_for_status(cb, b_done),
        }
    assert snapshots[a_failed]["status"] == "failed"
    return {"a": a, "b": b, "a_done": a_done, "a_failed": a_failed, "b_done": b_done,
            "snapshots": snapshots}


ATTEMPTS = [
    ("GET", "/api/v1/files/{id}"),
    ("GET", "/api/v1/files/{id}/content"),
    ("POST", "/api/v1/files/{id}/retry"),
    ("DELETE", "/api/v1/files/{id}"),
    ("PUT", "/api/v1/files/{id}"),
    ("PATCH", "/api/v1/files/{id}"),
]


@pytest.mark.parametrize(("attacker", "victim_file"), [
    ("b", "a_done"), ("b", "a_failed"), ("a", "b_done"),
])
@pytest.mark.parametrize(("method", "path"), ATTEMPTS)
def test_other_users_ids_answer_404_and_change_nothing(
    stack: Stack, owners: dict[str, Any], attacker: str, victim_file: str, method: str, path: str
) -> None:
    fid = owners[victim_file]
    with _client(stack, owners[attacker]) as c:
        r = c.request(method, path.format(id=fid))
    if method in ("PUT", "PATCH"):
        assert r.status_code == 405  # no such verb for anyone
    else:
        assert r.status_code == 404, r.text
        assert r.json() == {"detail": "file not found", "code": "not_found"}
    owner = "a" if victim_file.startswith("a_") else "b"
    with _client(stack, owners[owner]) as c:
        now = c.get(f"/api/v1/files/{fid}").json()
    before = owners["snapshots"][fid]
    assert {k: now[k] for k in ("status", "attempts", "chunk_count", "updated_at")} == \
        {k: before[k] for k in ("status", "attempts", "chunk_count", "updated_at")}


@pytest.mark.parametrize(("attacker", "victim", "phrase"), [
    ("b", "a_done", "alice secret heron ledger"), ("a", "b_done", "bob secret otter ledger"),
])
def test_search_and_lists_never_show_other_users_data(
    stack: Stack, owners: dict[str, Any], attacker: str, victim: str, phrase: str
) -> None:
    with _client(stack, owners[attacker]) as c:
        files = c.get("/api/v1/files", params={"limit": 200}).json()["items"]
        assert owners[victim] not in {f["id"] for f in files}
        for body in ({"query": phrase, "top_k": 50},
                     {"query": phrase, "top_k": 50, "file_ids": [owners[victim]]}):
            hits = c.post("/api/v1/search", json=body).json()["hits"]
            assert owners[victim] not in {h["file_id"] for h in hits}
            assert all("secret" not in h["text"] or h["file_id"] != owners[victim] for h in hits)


def test_admin_api_is_invisible_to_non_admins(stack: Stack, owners: dict[str, Any]) -> None:
    with _client(stack, owners["b"]) as c:
        for method, path in [("GET", "/api/v1/admin/users"), ("GET", "/api/v1/admin/files"),
                             ("POST", "/api/v1/admin/users"),
                             ("GET", f"/api/v1/admin/users/{owners['a'].id}/keys"),
                             ("POST", f"/api/v1/admin/users/{owners['a'].id}/keys"),
                             ("PATCH", f"/api/v1/admin/users/{owners['a'].id}"),
                             ("DELETE", f"/api/v1/admin/keys/{uuid.uuid4()}")]:
            r = c.request(method, path, json={} if method in ("POST", "PATCH") else None)
            assert r.status_code == 404, (method, path, r.status_code)


def test_owner_filter_keeps_top_k_full(stack: Stack, db_engine: Engine) -> None:
    """Many other users' near-identical chunks must not crowd out the caller's own hits
    (pgvector's iterative scan keeps walking the index until top_k rows pass the filter)."""
    crowd = make_user(db_engine, "crowd")
    me = make_user(db_engine, "me")
    with _client(stack, crowd) as c:
        ids = [upload(c, f"c{i}.txt", f"canal lock maintenance schedule {i} {uuid.uuid4()}".encode())
               .json()["id"] for i in range(30)]
        for fid in ids:
            wait_for_status(c, fid)
    with _client(stack, me) as c:
        mine = [upload(c, f"m{i}.txt", f"canal lock maintenance notes {i} {uuid.uuid4()}".encode())
                .json()["id"] for i in range(12)]
        for fid in mine:
            wait_for_status(c, fid)
        hits = c.post("/api/v1/search", json={"query": "canal lock maintenance", "top_k": 10}).json()["hits"]
    assert len(hits) == 10
    assert {h["file_id"] for h in hits} <= set(mine)
