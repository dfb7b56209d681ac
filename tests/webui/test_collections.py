"""Collections: create, rename, list with counts, membership (a file in several),
delete with and without its files, uploads that name a collection, bad input."""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import pytest

from tests.support.helpers import upload, wait_for_status


def _new(client: httpx.Client, name: str | None = None) -> dict[str, Any]:
    r = client.post("/api/v1/collections", json={"name": name or f"c-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()  # a collection, as JSON
    return body


def _files(client: httpx.Client, n: int) -> list[str]:
    ids = [upload(client, f"f{i}.txt", f"collection file {i} {uuid.uuid4()}".encode()).json()["id"]
           for i in range(n)]
    for fid in ids:
        assert wait_for_status(client, fid)["status"] == "done"
    return ids


def test_crud_membership_and_counts(client: httpx.Client) -> None:
    a, b = _new(client, "Manuals"), _new(client, "Invoices")
    assert a["role"] == "owner" and a["file_count"] == 0 and a["shared_with"] == 0
    f1, f2, f3 = _files(client, 3)
    r = client.post(f"/api/v1/collections/{a['id']}/files", json={"file_ids": [f1, f2]})
    assert r.status_code == 200, r.text
    assert r.json()["file_count"] == 2 and r.json()["chunk_count"] >= 2
    # A file may be in several collections; adding twice changes nothing.
    client.post(f"/api/v1/collections/{b['id']}/files", json={"file_ids": [f2, f3]})
    again = client.post(f"/api/v1/collections/{b['id']}/files", json={"file_ids": [f2]}).json()
    assert again["file_count"] == 2
    listed = {c["name"]: c for c in client.get("/api/v1/collections").json()["items"]}
    assert (listed["Manuals"]["file_count"], listed["Invoices"]["file_count"]) == (2, 2)
    members = client.get(f"/api/v1/collections/{b['id']}/files").json()
    assert {f["id"] for f in members["items"]} == {f2, f3} and members["total"] == 2

    renamed = client.patch(f"/api/v1/collections/{a['id']}", json={"name": "Handbooks"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Handbooks"
    clash = client.patch(f"/api/v1/collections/{a['id']}", json={"name": "Invoices"})
    assert clash.status_code == 409 and clash.json()["code"] == "exists"
    assert client.post("/api/v1/collections", json={"name": "Invoices"}).status_code == 409

    r = client.delete(f"/api/v1/collections/{b['id']}/files/{f2}")
    assert r.status_code == 204
    assert client.get(f"/api/v1/collections/{b['id']}").json()["file_count"] == 1
    assert client.delete(f"/api/v1/collections/{b['id']}/files/{f2}").status_code == 404

    # Deleting a collection keeps its files unless asked.
    assert client.delete(f"/api/v1/collections/{a['id']}").status_code == 204
    assert client.get(f"/api/v1/collections/{a['id']}").status_code == 404
    assert client.get(f"/api/v1/files/{f1}").status_code == 200
    assert client.delete(f"/api/v1/collections/{b['id']}?delete_files=true").status_code == 204
    assert client.get(f"/api/v1/files/{f3}").status_code == 404
    assert client.get(f"/api/v1/files/{f2}").status_code == 200  # was no longer in b


def test_upload_into_a_collection(client: httpx.Client) -> None:
    c = _new(client)
    data = f"uploaded straight into a collection {uuid.uuid4()}".encode()
    r = client.post("/api/v1/files", data={"collection_id": c["id"]},
                    files={"file": ("in.txt", io.BytesIO(data), "text/plain")})
    assert r.status_code == 202, r.text
    fid = r.json()["id"]
    members = client.get(f"/api/v1/collections/{c['id']}/files").json()["items"]
    assert [f["id"] for f in members] == [fid]
    # The same bytes again, naming another collection: the existing file joins it.
    other = _new(client)
    again = client.post("/api/v1/files", data={"collection_id": other["id"]},
                        files={"file": ("in.txt", io.BytesIO(data), "text/plain")})
    assert again.status_code == 200 and again.json()["id"] == fid
    assert client.get(f"/api/v1/collections/{other['id']}").json()["file_count"] == 1


def _fill(value: Any, subst: dict[str, str]) -> Any:
    """`{cid}`-style placeholders filled in, in strings, lists and dicts."""
    if isinstance(value, str):
        return value.format(**subst)
    if isinstance(value, list):
        return [_fill(v, subst) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, subst) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("POST", "/api/v1/collections", {"name": ""}, 422, "invalid_request"),
    ("POST", "/api/v1/collections", {"name": "   "}, 422, "invalid_request"),
    ("POST", "/api/v1/collections", {"name": "x" * 201}, 422, "invalid_request"),
    ("POST", "/api/v1/collections", {}, 422, "invalid_request"),
    ("GET", "/api/v1/collections/not-a-uuid", None, 422, "invalid_request"),
    ("GET", "/api/v1/collections/{missing}", None, 404, "not_found"),
    ("POST", "/api/v1/collections/{cid}/files", {"file_ids": []}, 422, "invalid_request"),
    ("POST", "/api/v1/collections/{cid}/files", {"file_ids": ["{missing}"]}, 404, "not_found"),
    ("POST", "/api/v1/collections/{cid}/shares", {"email": "nobody"}, 422, "invalid_request"),
    ("POST", "/api/v1/collections/{cid}/shares", {"email": "nobody@example.invalid"}, 404,
     "not_found"),
    ("POST", "/api/v1/search", {"query": "x", "collection_ids": ["{missing}"]}, 404, "not_found"),
])
def test_bad_input_answers_4xx_with_a_reason(
    client: httpx.Client, method: str, path: str, body: Any, status: int, code: str
) -> None:
    subst = {"cid": _new(client)["id"], "missing": str(uuid.uuid4())}
    r = client.request(method, _fill(path, subst), json=_fill(body, subst))
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["detail"]


def test_upload_naming_a_bad_collection_is_refused_and_leaves_nothing(client: httpx.Client) -> None:
    before = client.get("/api/v1/files").json()["total"]
    for value, status in [("nope", 422), (str(uuid.uuid4()), 404)]:
        r = client.post("/api/v1/files", data={"collection_id": value},
                        files={"file": ("x.txt", io.BytesIO(uuid.uuid4().hex.encode()), "text/plain")})
        assert r.status_code == status, r.text
        assert r.json()["detail"]
    assert client.get("/api/v1/files").json()["total"] == before


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/collections", {"name": "nul\u0000byte"}),
    ("/api/v1/collections", {"name": "bell\u0007"}),
    ("/api/v1/search", {"query": "nul\u0000byte"}),
])
def test_control_characters_are_refused_not_a_500(
    client: httpx.Client, path: str, body: dict[str, str]
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert "control characters" in r.json()["detail"]
