"""Sharing: owner, reader and stranger × every endpoint that touches a collection or
its files. Readers read and search; only the owner changes anything; everything not
shared answers 404 exactly like a missing id; revocation holds on the next request."""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.support.helpers import upload, wait_for_status
from tests.support.stack import ApiUser, Stack, make_user

PHRASE = "heron lighthouse ledger"


def _client(stack: Stack, user: ApiUser) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {user.key}"},
                        timeout=30)


@pytest.fixture(scope="module")
def people(stack: Stack, db_engine: Engine) -> dict[str, Any]:
    """An owner with two processed files; a reader; a stranger; an admin; a third person
    the owner may share with (never the stranger: that would make them a reader)."""
    owner, reader, stranger = (make_user(db_engine, n) for n in ("owner", "reader", "stranger"))
    third = make_user(db_engine, "third")
    admin = make_user(db_engine, "admin")
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE users SET is_admin = true WHERE id = :i"), {"i": admin.id})
    with _client(stack, owner) as c:
        files = [upload(c, f"s{i}.txt", f"{PHRASE} number {i} {uuid.uuid4()}".encode()).json()["id"]
                 for i in range(2)]
        for fid in files:
            assert wait_for_status(c, fid)["status"] == "done"
    return {"owner": owner, "reader": reader, "stranger": stranger, "admin": admin, "third": third,
            "files": files}


def _shared_collection(stack: Stack, people: dict[str, Any]) -> str:
    with _client(stack, people["owner"]) as c:
        cid = c.post("/api/v1/collections", json={"name": f"shared {uuid.uuid4()}"}).json()["id"]
        assert c.post(f"/api/v1/collections/{cid}/files",
                      json={"file_ids": people["files"]}).status_code == 200
        r = c.post(f"/api/v1/collections/{cid}/shares", json={"email": people["reader"].email})
        assert r.status_code == 201, r.text
    return str(cid)


# (method, path, body, expected status for owner / reader / stranger)
MATRIX = [
    ("GET", "/collections/{cid}", None, (200, 200, 404)),
    ("GET", "/collections/{cid}/files", None, (200, 200, 404)),
    ("PATCH", "/collections/{cid}", {"name": "renamed {nonce}"}, (200, 403, 404)),
    ("DELETE", "/collections/{cid}", None, (204, 403, 404)),
    ("DELETE", "/collections/{cid}?delete_files=true", None, (204, 403, 404)),
    ("POST", "/collections/{cid}/files", {"file_ids": ["{f0}"]}, (200, 403, 404)),
    ("DELETE", "/collections/{cid}/files/{f0}", None, (204, 403, 404)),
    ("GET", "/collections/{cid}/shares", None, (200, 403, 404)),
    ("POST", "/collections/{cid}/shares", {"email": "{third_email}"}, (201, 403, 404)),
    ("DELETE", "/collections/{cid}/shares/{reader_id}", None, (204, 403, 404)),
    ("GET", "/files/{f0}", None, (200, 200, 404)),
    ("GET", "/files/{f0}/content", None, (200, 200, 404)),
    ("DELETE", "/files/{f0}", None, (204, 404, 404)),
    ("POST", "/files/{f0}/retry", None, (409, 404, 404)),
    ("POST", "/search", {"query": PHRASE, "collection_ids": ["{cid}"]}, (200, 200, 404)),
    ("UPLOAD", "/files", None, (202, 403, 404)),
]


def _fill(value: Any, subst: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**subst)
    if isinstance(value, list):
        return [_fill(v, subst) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, subst) for k, v in value.items()}
    return value


def _state(stack: Stack, people: dict[str, Any], cid: str) -> Any:
    """What a caller could change, seen by the owner."""
    with _client(stack, people["owner"]) as c:
        coll = c.get(f"/api/v1/collections/{cid}").json()
        members = sorted(f["id"] for f in c.get(f"/api/v1/collections/{cid}/files").json()["items"])
        shares = sorted(s["reader_email"] for s in c.get(f"/api/v1/collections/{cid}/shares").json())
        files = [c.get(f"/api/v1/files/{f}").json() for f in people["files"]]
    return coll["name"], members, shares, [(f.get("status"), f.get("updated_at")) for f in files]


def _cases() -> list[Any]:
    """Every row for every caller, except the owner's deletions of files, which would
    consume the shared files (test_owner_file_deletion_through_the_matrix runs those)."""
    cases = []
    for method, path, body, expected in MATRIX:
        for who in ("owner", "reader", "stranger"):
            deletes_files = method == "DELETE" and (path.startswith("/files")
                                                    or "delete_files" in path)
            if who == "owner" and deletes_files:
                continue
            cases.append(pytest.param(who, method, path, body, expected,
                                      id=f"{who} {method} {path}"))
    return cases


@pytest.mark.parametrize(("who", "method", "path", "body", "expected"), _cases())
def test_sharing_matrix(
    stack: Stack, people: dict[str, Any], who: str, method: str, path: str, body: Any,
    expected: tuple[int, int, int],
) -> None:
    cid = _shared_collection(stack, people)
    subst = {"cid": cid, "f0": people["files"][0], "nonce": uuid.uuid4().hex[:6],
             "third_email": people["third"].email, "reader_id": people["reader"].id}
    before = _state(stack, people, cid)
    with _client(stack, people[who]) as c:
        if method == "UPLOAD":
            r = c.post("/api/v1/files", data={"collection_id": cid}, files={
                "file": ("new.txt", io.BytesIO(f"new {uuid.uuid4()}".encode()), "text/plain")})
        else:
            r = c.request(method, "/api/v1" + _fill(path, subst), json=_fill(body, subst))
    want = expected[("owner", "reader", "stranger").index(who)]
    assert r.status_code == want, (who, method, path, r.text)
    if want == 404:
        assert r.json()["code"] == "not_found"
    if want == 403:
        assert r.json()["code"] == "read_only"
    if who != "owner":
        assert _state(stack, people, cid) == before  # nobody but the owner changed anything
    if method == "POST" and path == "/search" and want == 200:
        assert {h["file_id"] for h in r.json()["hits"]} == set(people["files"])
        assert all(h["collection_ids"] == [cid] for h in r.json()["hits"])
    if method == "GET" and path.endswith("/content") and want == 200:
        assert PHRASE.encode() in r.content


def test_owner_file_deletion_through_the_matrix(stack: Stack, db_engine: Engine) -> None:
    """The owner's destructive rows of the matrix, on files of their own made for it."""
    owner, reader = make_user(db_engine, "owner"), make_user(db_engine, "reader")
    with _client(stack, owner) as c:
        fids = [upload(c, f"d{i}.txt", f"doomed {i} {uuid.uuid4()}".encode()).json()["id"]
                for i in range(2)]
        cid = c.post("/api/v1/collections", json={"name": "doomed"}).json()["id"]
        c.post(f"/api/v1/collections/{cid}/files", json={"file_ids": fids})
        c.post(f"/api/v1/collections/{cid}/shares", json={"email": reader.email})
        assert c.delete(f"/api/v1/files/{fids[0]}").status_code == 204
        assert c.get(f"/api/v1/collections/{cid}").json()["file_count"] == 1
        assert c.delete(f"/api/v1/collections/{cid}?delete_files=true").status_code == 204
        assert c.get(f"/api/v1/files/{fids[1]}").status_code == 404
    with _client(stack, reader) as c:
        assert c.get(f"/api/v1/files/{fids[1]}").status_code == 404
        assert c.get("/api/v1/collections").json()["items"] == []


def test_lists_and_default_search_scope(stack: Stack, people: dict[str, Any]) -> None:
    cid = _shared_collection(stack, people)
    with _client(stack, people["reader"]) as c:
        listed = {x["id"]: x for x in c.get("/api/v1/collections").json()["items"]}
        assert listed[cid]["role"] == "reader" and listed[cid]["owner_email"] == people["owner"].email
        assert listed[cid]["file_count"] == 2 and listed[cid]["shared_with"] == 0
        # Shared files are searched when the collection is named, never mixed into "my files".
        hits = c.post("/api/v1/search", json={"query": PHRASE, "top_k": 50}).json()["hits"]
        assert not {h["file_id"] for h in hits} & set(people["files"])
        assert people["files"][0] not in {f["id"] for f in c.get("/api/v1/files").json()["items"]}
    with _client(stack, people["stranger"]) as c:
        assert cid not in {x["id"] for x in c.get("/api/v1/collections").json()["items"]}


def test_revocation_takes_effect_on_the_next_request(
    stack: Stack, people: dict[str, Any], db_engine: Engine
) -> None:
    # A reader of this one collection only (the module's reader was given others).
    people = {**people, "reader": make_user(db_engine, "reader")}
    cid = _shared_collection(stack, people)
    f0 = people["files"][0]
    search = {"query": PHRASE, "collection_ids": [cid]}
    with _client(stack, people["reader"]) as reader, _client(stack, people["owner"]) as owner:
        assert reader.get(f"/api/v1/files/{f0}").status_code == 200
        assert reader.post("/api/v1/search", json=search).status_code == 200
        r = owner.delete(f"/api/v1/collections/{cid}/shares/{people['reader'].id}")
        assert r.status_code == 204
        assert reader.get(f"/api/v1/files/{f0}").status_code == 404
        assert reader.get(f"/api/v1/files/{f0}/content").status_code == 404
        assert reader.post("/api/v1/search", json=search).status_code == 404
        assert reader.get(f"/api/v1/collections/{cid}").status_code == 404
        assert cid not in {x["id"] for x in reader.get("/api/v1/collections").json()["items"]}
        # Revoking twice: the share is gone.
        again = owner.delete(f"/api/v1/collections/{cid}/shares/{people['reader'].id}")
        assert again.status_code == 404


def test_admins_see_who_shares_what(stack: Stack, people: dict[str, Any]) -> None:
    cid = _shared_collection(stack, people)
    with _client(stack, people["admin"]) as c:
        r = c.get("/api/v1/admin/shares", params={"limit": 500})
        assert r.status_code == 200
        row = next(s for s in r.json() if s["collection_id"] == cid)
        assert (row["owner_email"], row["reader_email"]) == (people["owner"].email,
                                                              people["reader"].email)
    for who in ("owner", "reader", "stranger"):
        with _client(stack, people[who]) as c:
            assert c.get("/api/v1/admin/shares").status_code == 404
