"""The real pool test: 100 searches at once against a webui whose pool is 5 + 3.

Queries are encoded (micro-batched) before a search takes a connection, and a
search holds its connection only for its SQL, so a small pool serves many
concurrent searches: none may answer 503 (DATABASE_POOL_TIMEOUT is the default
10 s), and p95 must stay within a bound derived from the benchmark.

The bound: loadtests/bench_search.py shows searches at high concurrency are
bound by the query encoder (README, "Search"), so a burst of N searches cannot
finish before N / (the encoder's batched rate); p95 may take at most twice that
(plus 1 s for the HTTP and SQL work), with the rate measured here, on this
machine, right before the burst, as the benchmark measures its ceiling. The old
order (each search holding a connection while queueing for a one-at-a-time
encoder) needs N / (the one-at-a-time rate) and times out on the pool.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from sqlalchemy import text

from shared.encoders import load_embedder
from shared.settings import Settings
from tests.faults.stack import FaultStack

FAULT_ENV = {
    "DATABASE_POOL_SIZE": "5",
    "DATABASE_POOL_MAX_OVERFLOW": "3",
}
CLIENTS = 100
BATCH = 16  # QUERY_BATCH_MAX's default


def _p95_bound(settings: Settings) -> float:
    """2 × the time the encoder needs for CLIENTS queries in batches, + 1 s."""
    embedder = load_embedder(settings, 1)
    embedder.warm_up()
    queries = [f"tide gauge reading {i}" for i in range(BATCH)]
    started = time.perf_counter()
    for _ in range(3):
        embedder.encode(queries, batch_size=BATCH)
    rate = 3 * BATCH / (time.perf_counter() - started)
    return 2 * CLIENTS / rate + 1.0


def _seed(fault_stack: FaultStack, owner: str, files: int = 5, chunks: int = 40) -> None:
    """Processed files straight into the tables (no worker needed to search them)."""
    rng = np.random.default_rng(5)
    with fault_stack.db.begin() as conn:
        for f in range(files):
            fid = uuid.uuid4()
            conn.execute(text(
                "INSERT INTO files (id, owner_id, filename, size_bytes, sha256, storage_key, "
                "status, kind, chunk_count, embedding_model, embedding_backend) VALUES "
                "(:id, :o, :n, 1, :s, :k, 'done', 'text', :c, 'all-MiniLM-L6-v2', :b)"),
                {"id": fid, "o": owner, "n": f"f{f}.txt", "s": fid.hex * 2, "k": fid.hex,
                 "c": chunks, "b": fault_stack.settings.embedding_backend})
            for i in range(chunks):
                v = rng.standard_normal(384)
                conn.execute(text(
                    "INSERT INTO chunks (file_id, owner_id, idx, text, token_count, embedding, "
                    "embedding_backend) VALUES (:f, :o, :i, :t, 20, CAST(:v AS vector), :b)"),
                    {"f": fid, "o": owner, "i": i, "t": f"harbour tide gauge note {f}-{i}",
                     "v": str((v / np.linalg.norm(v)).tolist()),
                     "b": fault_stack.settings.embedding_backend})


def test_a_hundred_concurrent_searches_on_a_pool_of_five_plus_three(
    fault_stack: FaultStack,
) -> None:
    web = fault_stack.start_webui()
    user = fault_stack.user("pool")
    _seed(fault_stack, user.id)
    bound = _p95_bound(fault_stack.settings)
    start = threading.Barrier(CLIENTS)

    def search(i: int) -> tuple[float, httpx.Response]:
        with fault_stack.client(user, web, timeout=60) as c:
            start.wait()
            t = time.perf_counter()
            r = c.post("/api/v1/search", json={"query": f"tide gauge reading {i}", "top_k": 5,
                                                "include_weak": True})
            return time.perf_counter() - t, r

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(search, range(CLIENTS)))
    codes = Counter(r.status_code for _, r in answers)
    assert codes == {200: CLIENTS}, [(r.status_code, r.text[:200]) for _, r in answers
                                     if r.status_code != 200][:5]
    p95 = float(np.percentile([t for t, _ in answers], 95))
    assert p95 < bound, f"p95 {p95:.2f} s over {bound:.2f} s"
    assert all(r.json()["hits"] for _, r in answers)
    # The encoder batched: fewer encoder calls than searches.
    metrics = httpx.get(f"{web.url}/metrics").text
    batches = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("sluice_query_batch_size_count"))
    assert batches < CLIENTS, f"{batches} encoder calls for {CLIENTS} searches"
