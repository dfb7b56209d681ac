"""Upload → queue → worker → pgvector → search, for every supported format."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.helpers import upload, wait_for_status
from tests.support.samples import ALL_KINDS, document_with_phrase

EXPECTED_KIND = {"txt": "text", "md": "markdown", "html": "html", "csv": "csv",
                 "json": "json", "pdf": "pdf", "docx": "docx"}


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_format_becomes_searchable(client: httpx.Client, kind: str) -> None:
    phrase = f"The {kind} otter archive stores heron migration logs"
    name, data = document_with_phrase(kind, phrase, uuid.uuid4().hex)
    r = upload(client, name, data)
    assert r.status_code == 202, r.text
    body = wait_for_status(client, r.json()["id"])
    assert body["status"] == "done", body
    assert body["kind"] == EXPECTED_KIND[kind]
    assert body["chunk_count"] >= 1
    assert body["attempts"] == 1

    hits = client.post("/api/v1/search", json={"query": phrase, "top_k": 5}).json()["hits"]
    top = hits[0]
    assert top["file_id"] == body["id"], hits
    assert "heron migration" in top["text"]
    assert top["score"] > 0.5


def test_search_can_be_limited_to_some_files(client: httpx.Client) -> None:
    ids = []
    for i in range(2):
        r = upload(client, f"f{i}.txt", f"kingfisher nesting report {i} {uuid.uuid4()}".encode())
        ids.append(wait_for_status(client, r.json()["id"])["id"])
    hits = client.post(
        "/api/v1/search", json={"query": "kingfisher nesting", "top_k": 10, "file_ids": [ids[1]]}
    ).json()["hits"]
    assert hits
    assert {h["file_id"] for h in hits} == {ids[1]}
