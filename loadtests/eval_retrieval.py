"""Retrieval quality per embedding backend, through Sluice's own pipeline (`make eval`).

The labelled set (loadtests/data/retrieval_eval.jsonl, built from stdlib
docstrings by build_eval_set.py): ~70 documents and ~300 queries, each query a
docstring's summary sentence whose answer is the rest of that docstring (the
summary itself is not in the corpus). Per backend (torch, onnx, onnx-int8):

1. chunk every document with the worker's Chunker (CHUNK_SIZE/CHUNK_OVERLAP, the
   model's tokenizer) — a chunk is *relevant* to a query when it holds at least
   half of the answer passage or the passage fills at least half of it;
2. embed the chunks as the worker does (EMBED_BATCH_SIZE, embed_threads) and the
   queries as the webui does (one at a time);
3. store them with the worker's `replace_chunks` into embedded PostgreSQL +
   pgvector (one user per backend, all in the one HNSW index), and
4. query with the webui's search SQL (owner filter, `hnsw.ef_search`, iterative
   scan) at several ef_search values, and exactly (index scans off).

The labelled set is extended with generated exact-identifier queries and off-topic
questions (identifier_set.py); the tables above count the labelled queries only.
Then vector-only, text-only and hybrid search side by side through the webui's SQL,
with the calibration fit and the threshold table (eval_modes.py).

Reported: recall@10 (share of queries with a relevant chunk in the top 10),
MRR@10, and the HNSW top-10's overlap with the exact top-10 ("HNSW recall"),
first over the eval rows alone, then with N synthetic distractor chunks of
other users in the same index (`--distractors`, default 50k: near-duplicates
of the eval chunks, the hard case for a filtered HNSW search). Also a numpy
cross-check: int8 queries against fp32 chunks and vice versa (why search
refuses to mix them).

    .venv/bin/python loadtests/eval_retrieval.py [--backends torch,onnx,onnx-int8]
        [--ef 20,40,100,200] [--distractors 50000] [--json out.json] [--no-cache]

Embeddings are cached in loadtests/.corpus/ (keyed by texts, backend and graph).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from eval_modes import compare, print_modes

from shared.embedding import BACKENDS, embed_threads, model_path, space_of
from shared.encoders import load_embedder
from shared.settings import Settings, load_settings

log = logging.getLogger("loadtest.eval")
DATA = Path(__file__).resolve().parent / "data" / "retrieval_eval.jsonl"
CACHE = Path(__file__).resolve().parent / ".corpus"
K = 10


@dataclass
class EvalSet:
    docs: list[dict[str, Any]]
    queries: list[dict[str, Any]]


@dataclass
class Chunked:
    doc_ids: list[str]  # per chunk
    idx: list[int]
    texts: list[str]
    token_counts: list[int]
    relevant: list[set[int]]  # per query: chunk numbers
    chunk_objs: list[Any] = field(default_factory=list)


def load_set(path: Path = DATA) -> EvalSet:
    """The labelled set plus the generated exact-identifier set (identifier_set.py)."""
    from identifier_set import identifier_rows, offtopic_rows

    docs, queries = [], []
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in lines + identifier_rows() + offtopic_rows():
        if row["type"] == "doc":
            docs.append(row)
        elif row["type"] == "query":
            queries.append({"set": "labelled", **row})
    return EvalSet(docs, queries)


def chunk_set(es: EvalSet, settings: Settings) -> Chunked:
    """Chunk with the worker's Chunker and label the chunks relevant to each query."""
    from worker.pipeline.chunk import Chunker

    chunker = Chunker(model_path(settings) / "tokenizer.json", chunk_size=settings.chunk_size,
                      overlap=settings.chunk_overlap, model_max=256)
    out = Chunked([], [], [], [], [])
    spans: dict[str, list[tuple[int, int, int]]] = {}  # doc -> (start, end, chunk number)
    for doc in es.docs:
        text = doc["text"]
        pos = 0
        for i, c in enumerate(chunker.split(text, "text")):
            start = text.find(c.text, pos)
            if start < 0:
                start = text.find(c.text)
            if start < 0:
                raise RuntimeError(f"chunk not found in {doc['id']}")
            pos = start + 1
            spans.setdefault(doc["id"], []).append((start, start + len(c.text), len(out.texts)))
            out.doc_ids.append(doc["id"])
            out.idx.append(i)
            out.texts.append(c.text)
            out.token_counts.append(c.token_count)
            out.chunk_objs.append(c)
    for q in es.queries:
        if q.get("doc") is None:  # an off-topic query: nothing in the corpus answers it
            out.relevant.append(set())
            continue
        p0, p1 = int(q["start"]), int(q["end"])
        rel = set()
        for c0, c1, n in spans[q["doc"]]:
            overlap = min(p1, c1) - max(p0, c0)
            if overlap > 0 and overlap >= 0.5 * min(p1 - p0, c1 - c0):
                rel.add(n)
        if not rel:
            raise RuntimeError(f"query {q['id']} has no relevant chunk")
        out.relevant.append(rel)
    return out


def embed_all(backend: str, settings: Settings, chunks: list[str], queries: list[str],
              use_cache: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(chunk vectors, query vectors, facts): chunks in EMBED_BATCH_SIZE batches, queries one by one."""
    s = settings.model_copy(update={"embedding_backend": backend})
    # "grouped": encode batches texts by length since issue 19, which moves int8 vectors.
    key = hashlib.sha256(json.dumps([backend, s.embed_batch_size, "grouped", chunks, queries]
                                    ).encode())
    from shared.embedding_onnx import fingerprint

    if backend != "torch":
        key.update(fingerprint(model_path(s)).encode())
    cache = CACHE / f"eval-emb-{backend}-{key.hexdigest()[:16]}.npz"
    if use_cache and cache.exists():
        data = np.load(cache)
        return data["chunks"], data["queries"], json.loads(str(data["facts"]))
    threads = embed_threads(s)
    embedder = load_embedder(s, threads)
    embedder.warm_up()
    t = time.perf_counter()
    cv = embedder.encode(chunks, batch_size=s.embed_batch_size)
    chunk_s = time.perf_counter() - t
    # Queries (encoded one at a time, like the webui) do not depend on CHUNK_SIZE: cached
    # on their own, so a sweep over chunk sizes encodes them once per backend.
    qkey = hashlib.sha256(json.dumps([backend, queries]).encode())
    if backend != "torch":
        qkey.update(fingerprint(model_path(s)).encode())
    qcache = CACHE / f"eval-queries-{backend}-{qkey.hexdigest()[:16]}.npz"
    t = time.perf_counter()
    queries_cached = use_cache and qcache.exists()
    if queries_cached:
        qv = np.load(qcache)["queries"]
    else:
        qv = np.stack([embedder.encode_query(q) for q in queries])
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(qcache, queries=qv)
    query_s = time.perf_counter() - t
    facts = {"threads": threads, "chunks_per_s": len(chunks) / chunk_s,
             "query_ms": float("nan") if queries_cached else 1000 * query_s / len(queries),
             "load_s": embedder.load_seconds,
             "loadavg_1m": os.getloadavg()[0]}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, chunks=cv, queries=qv, facts=json.dumps(facts))
    return cv, qv, facts


SETS: list[str] = []  # per query: "labelled" or "identifier" (set by run)


def metrics(ranked: list[list[int]], relevant: list[set[int]]) -> tuple[float, float]:
    """(recall@K: a relevant chunk in the top K, MRR@K) over the labelled queries."""
    from eval_modes import subset_metrics

    return subset_metrics(ranked, relevant, SETS or ["labelled"] * len(relevant), "labelled", K)


def exact_numpy(qv: np.ndarray, cv: np.ndarray) -> list[list[int]]:
    scores = qv @ cv.T
    return [list(np.argsort(-row, kind="stable")[:K]) for row in scores]


class Store:
    """Embedded Postgres (via loadtests/stack.py), migrated; eval rows written by the worker's code."""

    def __init__(self, root: Path):
        from sqlalchemy import text
        from stack import Servers

        self.text = text
        self.servers = Servers(root, max_connections=20)
        self.servers.start()
        self.settings = self.servers.settings(worker_db_pool_size=2, db_statement_timeout_ms=0)
        from shared.db import create_worker_engine, sync_session_factory

        self.engine = create_worker_engine(self.settings, "cli")
        self.sessions = sync_session_factory(self.engine)

    def add_backend(self, backend: str, ch: Chunked, vectors: np.ndarray) -> uuid.UUID:
        """One user per backend; one file per document; chunks via replace_chunks."""
        from shared.accounts import ensure_user
        from shared.models import File, FileStatus
        from worker.pipeline.store import replace_chunks

        with self.sessions() as session, session.begin():
            user = ensure_user(session, f"eval-{backend}@eval.invalid")
            by_doc: dict[str, list[int]] = {}
            for n, d in enumerate(ch.doc_ids):
                by_doc.setdefault(d, []).append(n)
            for d, ns in by_doc.items():
                f = File(owner_id=user.id, filename=f"{d}.txt", size_bytes=1, sha256=uuid.uuid4().hex,
                         storage_key=uuid.uuid4().hex, status=FileStatus.done.value,
                         embedding_model="all-MiniLM-L6-v2", embedding_backend=backend,
                         chunk_count=len(ns))
                session.add(f)
                session.flush()
                replace_chunks(session, file_id=f.id, owner_id=user.id,
                               chunks=[ch.chunk_objs[n] for n in ns], vectors=vectors[ns],
                               embedding_backend=backend)
            return user.id

    def add_distractors(self, n: int, base: np.ndarray, texts: list[str]) -> float:
        """n near-duplicates of the eval chunks (seed_chunks.synthetic: blends of two real
        vectors plus noise) owned by 50 other users; binary COPY with the HNSW index
        dropped, then rebuilt with its own definition (as a bulk import would)."""
        import psycopg
        from pgvector.psycopg import register_vector
        from seed_chunks import CHUNKS_PER_FILE, synthetic

        from shared.accounts import ensure_user

        t0 = time.perf_counter()
        with self.sessions() as session, session.begin():
            owners = [ensure_user(session, f"distractor-{i:02d}@eval.invalid").id for i in range(50)]
        d_texts, d_vecs = synthetic(n, [t[:300] for t in texts], base)
        files = [(uuid.uuid4(), owners[k % len(owners)])
                 for k in range((n + CHUNKS_PER_FILE - 1) // CHUNKS_PER_FILE)]
        with psycopg.connect(self.servers.pg.url, autocommit=True) as conn:
            register_vector(conn)
            with conn.cursor().copy(
                "COPY files (id, owner_id, filename, size_bytes, sha256, storage_key, status, "
                "kind, chunk_count, embedding_model, embedding_backend, finished_at) FROM STDIN"
            ) as copy:
                for k, (fid, owner) in enumerate(files):
                    copy.write_row((fid, owner, f"distractor-{k:05d}.txt", 1, fid.hex + fid.hex,
                                    fid.hex, "done", "text", CHUNKS_PER_FILE, "all-MiniLM-L6-v2",
                                    "torch", "now"))
            row = conn.execute(
                "SELECT pg_get_indexdef('ix_chunks_embedding_hnsw'::regclass)").fetchone()
            assert row is not None
            conn.execute("DROP INDEX ix_chunks_embedding_hnsw")
            with conn.cursor().copy(
                "COPY chunks (file_id, owner_id, idx, text, token_count, embedding) "
                "FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["uuid", "uuid", "int4", "text", "int4", "vector"])
                for k in range(n):
                    fid, owner = files[k // CHUNKS_PER_FILE]
                    copy.write_row((fid, owner, k % CHUNKS_PER_FILE, d_texts[k], 64, d_vecs[k]))
            conn.execute("SET maintenance_work_mem = '512MB'")
            conn.execute(row[0])
            conn.execute("ANALYZE files")
            conn.execute("ANALYZE chunks")
        return time.perf_counter() - t0

    def search(self, owner: uuid.UUID, backends: list[str], qv: np.ndarray, ef: int | None,
               queries: list[str] | None = None, mode: str = "vector",
               ) -> tuple[list[list[int]], list[float], list[list[tuple[float, bool]]]]:
        """The webui's search SQL (webui/search.py) for each query: chunk ids of the top K,
        ms per query, and per hit (cosine, matched by the text half) for calibration.

        ef None: exact (no index scans: the distance sort runs over the owner's rows).
        Otherwise the HNSW index scan at that ef_search, with the webui's iterative
        scan, forced (seq scan and bitmap scan off) so the index itself is measured
        whatever the planner would pick for this user's row count — in vector mode;
        the text half needs its GIN index (a bitmap scan), so other modes run with the
        planner's choice. Custom plans every time: psycopg prepares a statement after 5
        runs, and a cached generic plan would ignore these settings.
        """
        from webui.search import CANDIDATES_MIN, TEXT_SCAN_MAX, hybrid_sql, own_scope
        from webui.search_rank import HEADLINE_OPTIONS, RRF_K

        sql = self.text(hybrid_sql(mode, own_scope(owner), False))
        knobs = ["plan_cache_mode = force_custom_plan"]
        if ef is None:
            knobs.append("enable_indexscan = off")
        else:
            knobs += [f"hnsw.ef_search = {int(ef)}", "hnsw.iterative_scan = strict_order"]
            if mode == "vector":
                knobs += ["enable_seqscan = off", "enable_bitmapscan = off"]
        out, ms, feats = [], [], []
        texts = queries or [""] * len(qv)
        with self.engine.connect() as conn:
            for q, qt in zip(qv, texts, strict=True):
                t = time.perf_counter()
                with conn.begin():
                    for knob in knobs:
                        conn.execute(self.text(f"SET LOCAL {knob}"))
                    rows = conn.execute(sql, {
                        "vec": str(q.tolist()), "owner": owner, "k": K, "backends": backends,
                        "query": qt, "cfg": self.settings.search_text_config,
                        "n": CANDIDATES_MIN, "text_scan": TEXT_SCAN_MAX, "rrf_k": RRF_K,
                        "hl": HEADLINE_OPTIONS}).all()
                ms.append((time.perf_counter() - t) * 1000)
                out.append([r.id for r in rows])
                feats.append([(float(r.similarity), r.tr is not None) for r in rows])
        return out, ms, feats

    def chunk_numbers(self, owner: uuid.UUID, ch: Chunked) -> dict[int, int]:
        """chunk id in the DB -> chunk number in `ch`."""
        pos = {(d, i): n for n, (d, i) in enumerate(zip(ch.doc_ids, ch.idx, strict=True))}
        with self.engine.connect() as conn:
            rows = conn.execute(self.text(
                "SELECT c.id, f.filename, c.idx FROM chunks c JOIN files f ON f.id = c.file_id "
                "WHERE c.owner_id = :o"), {"o": owner}).all()
        return {r.id: pos[(r.filename.removesuffix(".txt"), r.idx)] for r in rows}

    def close(self) -> None:
        self.engine.dispose()
        self.servers.stop()


def overlap_at_k(a: list[list[int]], b: list[list[int]]) -> float:
    return statistics.fmean(len(set(x[:K]) & set(y[:K])) / max(len(y[:K]), 1)
                            for x, y in zip(a, b, strict=True))


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    es = load_set()
    ch = chunk_set(es, settings)
    queries = [q["query"] for q in es.queries]
    SETS[:] = [q["set"] for q in es.queries]
    print(f"eval set: {len(es.docs)} documents -> {len(ch.texts)} chunks "
          f"(CHUNK_SIZE={settings.chunk_size}, overlap {settings.chunk_overlap}); "
          f"{len(queries)} queries; relevant chunks per query: "
          f"{statistics.fmean(len(r) for r in ch.relevant if r):.2f}")
    backends = args.backends.split(",")
    vecs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    report: dict[str, Any] = {"chunks": len(ch.texts), "queries": len(queries), "backends": {},
                              "loadavg_start": os.getloadavg()}
    for b in backends:
        cv, qv, facts = embed_all(b, settings, ch.texts, queries, use_cache=not args.no_cache)
        vecs[b] = (cv, qv)
        report["backends"][b] = {"embed": facts}
        print(f"  {b:9} embedded: {facts['chunks_per_s']:.1f} chunks/s at {facts['threads']} threads "
              f"(load avg {facts['loadavg_1m']:.1f}), query {facts['query_ms']:.1f} ms")

    # Agreement between backends on the same chunks.
    ref = "torch" if "torch" in vecs else backends[0]
    for b in backends:
        cos = (vecs[b][0] * vecs[ref][0]).sum(axis=1)
        report["backends"][b]["cosine_vs_" + ref] = {"min": float(cos.min()), "mean": float(cos.mean())}

    # Exact retrieval in numpy, including crossed spaces (query backend x chunk backend).
    cross: dict[str, dict[str, float]] = {}
    for qb in backends:
        for cb in backends:
            r, m = metrics(exact_numpy(vecs[qb][1], vecs[cb][0]), ch.relevant)
            cross[f"{qb} queries / {cb} chunks"] = {"recall@10": r, "mrr@10": m}
    report["numpy_exact"] = cross

    efs = [int(e) for e in args.ef.split(",")]
    with tempfile.TemporaryDirectory(prefix="sluice-eval-") as tmp:
        os.chmod(tmp, 0o755)  # the embedded server may run as another user
        store = Store(Path(tmp))
        try:
            owners = {b: store.add_backend(b, ch, vecs[b][0]) for b in backends}
            maps = {b: store.chunk_numbers(owners[b], ch) for b in backends}
            phases = [("eval rows only", 0)]
            if args.distractors:
                phases.append((f"+{args.distractors} distractor rows of 50 other users",
                               args.distractors))
            report["pgvector"] = {}
            for label, n in phases:
                if n:
                    base = np.concatenate([vecs[b][0] for b in backends])
                    took = store.add_distractors(n, base, ch.texts * len(backends))
                    print(f"  added {n} distractors and rebuilt the HNSW index in {took:.0f} s")
                phase: dict[str, Any] = {}
                for b in backends:
                    compat = [x for x in BACKENDS if x == b or {x, b} <= {"torch", "onnx"}]
                    exact_ids, exact_ms, _ = store.search(owners[b], compat, vecs[b][1], None)
                    exact_n = [[maps[b][i] for i in top] for top in exact_ids]
                    r, m = metrics(exact_n, ch.relevant)
                    row: dict[str, Any] = {
                        "exact": {"recall@10": r, "mrr@10": m, "p50_ms": statistics.median(exact_ms)},
                    }
                    for ef in efs:
                        ids, ms, _ = store.search(owners[b], compat, vecs[b][1], ef)
                        ranked = [[maps[b][i] for i in top] for top in ids]
                        r, m = metrics(ranked, ch.relevant)
                        row[f"ef{ef}"] = {
                            "recall@10": r, "mrr@10": m,
                            "hnsw_recall@10": overlap_at_k(ids, exact_ids),
                            "p50_ms": statistics.median(ms), "p95_ms": float(np.percentile(ms, 95)),
                        }
                    phase[b] = row
                report["pgvector"][label] = phase
                # Vector, text and hybrid side by side at the webui's ef_search.
                report.setdefault("modes", {})[label] = {
                    b: compare(store, owners[b], [x for x in BACKENDS if space_of(x) == space_of(b)],
                               vecs[b][1], queries, maps[b], ch.relevant, SETS,
                               settings.hnsw_ef_search)
                    for b in backends}
        finally:
            store.close()
    report["loadavg_end"] = os.getloadavg()
    print_report(report, efs)
    return report


def print_report(report: dict[str, Any], efs: list[int]) -> None:
    b0 = next(iter(report["backends"]))
    print("\nAgreement with torch on the eval chunks (cosine):")
    for b, r in report["backends"].items():
        c = next(v for k, v in r.items() if k.startswith("cosine_vs_"))
        print(f"  {b:9} min {c['min']:.5f}  mean {c['mean']:.5f}")
    print("\nExact search (numpy), recall@10 / MRR@10, query backend x chunk backend:")
    for k, v in report["numpy_exact"].items():
        print(f"  {k:36} {v['recall@10']:.3f} / {v['mrr@10']:.3f}")
    for label, phase in report.get("pgvector", {}).items():
        print(f"\npgvector, the webui's search SQL — {label}:")
        print(f"  {'backend':9} {'search':12} {'R@10':>6} {'MRR@10':>7} {'HNSW-R@10':>10} "
              f"{'p50 ms':>7} {'p95 ms':>7}")
        for b, row in phase.items():
            ex = row["exact"]
            print(f"  {b:9} {'exact':12} {ex['recall@10']:6.3f} {ex['mrr@10']:7.3f} {'':>10} "
                  f"{ex['p50_ms']:7.1f}")
            for ef in efs:
                h = row[f"ef{ef}"]
                print(f"  {b:9} {f'hnsw ef={ef}':12} {h['recall@10']:6.3f} {h['mrr@10']:7.3f} "
                      f"{h['hnsw_recall@10']:10.3f} {h['p50_ms']:7.1f} {h['p95_ms']:7.1f}")
    for label, per_backend in report.get("modes", {}).items():
        for b, res in per_backend.items():
            print_modes(label, b, res)
    print(f"\n(load average at start {report['loadavg_start'][0]:.1f}, at end "
          f"{report['loadavg_end'][0]:.1f}; {report['chunks']} chunks, {report['queries']} queries; "
          f"first backend {b0})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--ef", default="40,100,200,400")
    p.add_argument("--distractors", type=int, default=50_000)
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--no-cache", action="store_true", help="re-embed even if cached")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
