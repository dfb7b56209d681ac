"""Bulk-load N chunks for one "bulk" user, so searches run against a table of 100k+ rows.

Vectors look like real data: about 1,500 real sentences from the corpus are
embedded with the service's own model (cached in .corpus/), and each synthetic
chunk is a noisy blend of two of them, renormalised (cosine to its main
sentence ≈ 0.8-0.95), so HNSW sees clusters and a continuum as with real text,
not uniform random vectors (the worst case for HNSW). Rows go in with binary
COPY with the HNSW index dropped, then the index is rebuilt with the same
definition and the tables are analysed, as one would for a bulk import.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

log = logging.getLogger("loadtest.seed")
CHUNKS_PER_FILE = 100


def base_vectors(sentences: list[str], cache: Path) -> np.ndarray:
    """Embeddings of `sentences` with the service's model (cached on disk)."""
    if cache.exists():
        vecs = np.load(cache)
        if len(vecs) == len(sentences):
            return vecs
    from shared.embedding import Embedder, model_path
    from shared.settings import load_settings

    started = time.perf_counter()
    embedder = Embedder(model_path(load_settings()), threads=2)
    vecs = embedder.encode(sentences, batch_size=64)
    np.save(cache, vecs)
    log.info("seed.base_vectors n=%d %.1fs", len(vecs), time.perf_counter() - started)
    return vecs


def synthetic(n: int, sentences: list[str], base: np.ndarray, seed: int = 7
              ) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(base), n)
    j = rng.integers(0, len(base), n)
    w = rng.uniform(0.6, 1.0, (n, 1)).astype(np.float32)
    sigma = rng.uniform(0.015, 0.035, (n, 1)).astype(np.float32)
    vecs = w * base[i] + (1 - w) * base[j] + sigma * rng.standard_normal(base[i].shape,
                                                                        dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    texts = [f"{sentences[a]} {sentences[b]}" for a, b in zip(i, j, strict=True)]
    return texts, vecs.astype(np.float32)


def seed(url: str, owner_id: str | list[str], n: int, sentences: list[str], base: np.ndarray
         ) -> dict[str, Any]:
    """Insert n chunks (in files of 100) owned by owner_id (files dealt round robin when
    several owners are given); rebuild the HNSW index."""
    owners = [owner_id] if isinstance(owner_id, str) else owner_id
    facts: dict[str, Any] = {"chunks": n}
    t0 = time.perf_counter()
    texts, vecs = synthetic(n, sentences, base)
    facts["generate_s"] = time.perf_counter() - t0
    file_ids = [uuid.uuid4() for _ in range((n + CHUNKS_PER_FILE - 1) // CHUNKS_PER_FILE)]
    with psycopg.connect(url, autocommit=True, application_name="sluice-loadtest-seed") as conn:
        register_vector(conn)
        t = time.perf_counter()
        with conn.cursor().copy(
            "COPY files (id, owner_id, filename, size_bytes, sha256, storage_key, status, kind, "
            "chunk_count, embedding_model, finished_at) FROM STDIN"
        ) as copy:
            for k, fid in enumerate(file_ids):
                copy.write_row((fid, owners[k % len(owners)], f"bulk-{k:05d}.txt", 100_000, fid.hex + fid.hex,
                                fid.hex, "done", "text", CHUNKS_PER_FILE, "all-MiniLM-L6-v2",
                                "now"))
        row = conn.execute("SELECT pg_get_indexdef('ix_chunks_embedding_hnsw'::regclass)").fetchone()
        assert row is not None
        index_def = row[0]
        conn.execute("DROP INDEX ix_chunks_embedding_hnsw")
        with conn.cursor().copy(
            "COPY chunks (file_id, owner_id, idx, text, token_count, embedding) "
            "FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["uuid", "uuid", "int4", "text", "int4", "vector"])
            owner_ids = [uuid.UUID(o) for o in owners]
            for k in range(n):
                f = k // CHUNKS_PER_FILE
                copy.write_row((file_ids[f], owner_ids[f % len(owners)], k % CHUNKS_PER_FILE,
                                texts[k], 64, vecs[k]))
        facts["copy_s"] = time.perf_counter() - t
        t = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(index_def)
        facts["index_s"] = time.perf_counter() - t
        facts["index_def"] = index_def
        t = time.perf_counter()
        conn.execute("ANALYZE files")
        conn.execute("ANALYZE chunks")
        facts["analyze_s"] = time.perf_counter() - t
        sizes = conn.execute(
            "SELECT pg_total_relation_size('chunks'), "
            "pg_relation_size('ix_chunks_embedding_hnsw')").fetchone()
        assert sizes is not None
        facts["table_mb"], facts["index_mb"] = sizes[0] / 1e6, sizes[1] / 1e6
    facts["total_s"] = time.perf_counter() - t0
    log.info("seed.done %s", {k: round(v, 1) if isinstance(v, float) else v
                              for k, v in facts.items()})
    return facts
