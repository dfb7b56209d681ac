"""The external knowledge source: view `openwebui_chunks` (migrations 0005, 0007) read by the
role `sluice openwebui setup` makes, with Open WebUI's own SELECT (retrieval/external.py,
_retrieve_pgvector, open-webui 0.12.4): only exported collections, right rows by
distance, and the role reads nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from pgvector import Vector
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.rows import dict_row
from sqlalchemy import Engine, text

from shared.db import sync_session_factory
from shared.embedding import space_of
from shared.ops.openwebui import SOURCE_CONFIG, reader_dsn, setup_role
from shared.settings import Settings
from tests.support.helpers import upload, wait_for_status

ROLE = "sluice_openwebui_test"


@pytest.fixture(scope="module")
def reader(db_engine: Engine, settings: Settings) -> str:
    with sync_session_factory(db_engine)() as session, session.begin():
        password = setup_role(session, ROLE)
    return reader_dsn(settings.database_url, ROLE, password)


def _open_webui_select(dsn: str, collection: str, vector: list[float], k: int
                       ) -> list[dict[str, Any]]:
    """Open WebUI's query, composed as it composes it, with the printed source config."""
    c = SOURCE_CONFIG
    with psycopg.connect(dsn, row_factory=dict_row, connect_timeout=30) as conn:
        register_vector(conn)
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("""
                    SELECT {document_id} AS id,
                           {content} AS content,
                           {metadata} AS metadata,
                           {vector_column} <=> %s AS distance
                    FROM {table_name}
                    WHERE {collection} = %s
                    ORDER BY distance ASC
                    LIMIT %s
                    """).format(
                    document_id=sql.Identifier(c["document_id_field"]),
                    content=sql.Identifier(c["content_field"]),
                    metadata=sql.Identifier(c["metadata_field"]),
                    vector_column=sql.Identifier(c["vector_field"]),
                    table_name=sql.Identifier(c["table_name"]),
                    collection=sql.Identifier(c["collection_field"]),
                ),
                (Vector(vector), collection, k),
            )
            return list(cur.fetchall())


def _collection(client: httpx.Client, texts: dict[str, str]) -> tuple[str, dict[str, str]]:
    cid = client.post("/api/v1/collections", json={"name": f"kb-{uuid.uuid4().hex[:8]}"}).json()["id"]
    files = {}
    for name, body in texts.items():
        fid = upload(client, name, body.encode()).json()["id"]
        assert wait_for_status(client, fid)["status"] == "done"
        files[name] = fid
    r = client.post(f"/api/v1/collections/{cid}/files", json={"file_ids": list(files.values())})
    assert r.status_code == 200, r.text
    return cid, files


def _vector(client: httpx.Client, query: str) -> list[float]:
    r = client.post("/v1/embeddings", json={"input": [query]})
    vector: list[float] = r.json()["data"][0]["embedding"]
    return vector


def test_only_exported_collections_by_distance(client: httpx.Client, reader: str) -> None:
    n = uuid.uuid4().hex
    shown, files = _collection(client, {
        "pumps.txt": f"Centrifugal pumps need priming before start. {n}",
        "bread.txt": f"Sourdough bread rises overnight in a warm kitchen. {n}",
    })
    hidden, _ = _collection(client, {"secret.txt": f"Centrifugal pumps secret notes. {n}"})
    assert client.patch(f"/api/v1/collections/{shown}", json={"exported": True}).status_code == 200

    q = _vector(client, "how do I prime a centrifugal pump?")
    rows = _open_webui_select(reader, shown, q, 5)
    assert [r["metadata"]["source"] for r in rows] == ["pumps.txt", "bread.txt"]
    assert rows[0]["distance"] < rows[1]["distance"]
    assert "priming" in rows[0]["content"]
    meta = rows[0]["metadata"]
    assert meta["collection_id"] == shown and meta["chunk_index"] == 0
    assert meta["sluice_file_id"] == files["pumps.txt"]
    assert _open_webui_select(reader, hidden, q, 5) == []  # not exported: invisible

    assert client.patch(f"/api/v1/collections/{shown}", json={"exported": False}).status_code == 200
    assert _open_webui_select(reader, shown, q, 5) == []  # withdrawn on the next query


def test_the_view_follows_the_active_space(client: httpx.Client, reader: str,
                                          db_engine: Engine) -> None:
    """Chunks outside the active embedding space (migration 0007) stay out of the view;
    once that space is the active one, they are the ones shown."""
    n = uuid.uuid4().hex
    cid, files = _collection(client, {"gears.txt": f"Helical gears run quieter than spur gears. {n}"})
    assert client.patch(f"/api/v1/collections/{cid}", json={"exported": True}).status_code == 200
    q = _vector(client, "which gears are quiet?")
    assert [r["metadata"]["source"] for r in _open_webui_select(reader, cid, q, 5)] == ["gears.txt"]

    file_id = files["gears.txt"]
    set_backend = text("UPDATE chunks SET embedding_backend = :b WHERE file_id = :f")
    set_space = text("INSERT INTO app_config (key, value) VALUES ('embedding.active_space', "
                     "to_jsonb(CAST(:s AS text))) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
    with db_engine.begin() as conn:
        active = conn.scalar(text("SELECT value FROM app_config WHERE key = 'embedding.active_space'"))
        backend = conn.scalar(text("SELECT min(embedding_backend) FROM chunks WHERE file_id = :f"),
                              {"f": file_id})
        assert space_of(backend) == (active or "fp32")
        other = "onnx" if space_of(backend) == "int8" else "onnx-int8"
        conn.execute(set_backend, {"b": other, "f": file_id})
    try:
        assert _open_webui_select(reader, cid, q, 5) == []  # outside the active space
        with db_engine.begin() as conn:
            conn.execute(set_space, {"s": space_of(other)})
        assert [r["metadata"]["source"] for r in _open_webui_select(reader, cid, q, 5)] == ["gears.txt"]
    finally:
        with db_engine.begin() as conn:
            conn.execute(set_backend, {"b": backend, "f": file_id})
            if active is None:
                conn.execute(text("DELETE FROM app_config WHERE key = 'embedding.active_space'"))
            else:
                conn.execute(set_space, {"s": active})


@pytest.mark.parametrize("statement", [
    "SELECT * FROM chunks LIMIT 1",
    "SELECT * FROM files LIMIT 1",
    "SELECT * FROM users LIMIT 1",
    "SELECT * FROM api_keys LIMIT 1",
    "SELECT * FROM collections LIMIT 1",
    "CREATE TABLE owui_probe (x int)",
    "CREATE TEMP TABLE owui_probe (x int)",
])
def test_the_role_reads_nothing_else(reader: str, statement: str) -> None:
    with psycopg.connect(reader) as conn, pytest.raises(psycopg.Error) as err:
        conn.execute(statement)
    denied = psycopg.errors.InsufficientPrivilege | psycopg.errors.ReadOnlySqlTransaction
    assert isinstance(err.value, denied), err.value


def test_settings_command_prints_what_open_webui_needs(env: dict[str, str], reader: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", "openwebui", "settings", "--url", "http://sluice:8000",
         "--role", ROLE], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for line in ("RAG_EMBEDDING_ENGINE=openai", "RAG_OPENAI_API_BASE_URL=http://sluice:8000/v1",
                 "CONTENT_EXTRACTION_ENGINE=external",
                 "EXTERNAL_DOCUMENT_LOADER_URL=http://sluice:8000",
                 '"path": "/api/v1/openwebui/tools.json"', '"provider": "pgvector"',
                 '"table_name": "openwebui_chunks"', '"collection_field": "collection"'):
        assert line in text, line
    assert f"{ROLE}:PASSWORD-FROM-SETUP@" in text  # `settings` never resets or shows one
