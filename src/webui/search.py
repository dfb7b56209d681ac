"""Search: hybrid ranking (Postgres full-text + pgvector, fused by reciprocal rank)
over what the caller may read: their own files, or collections they own or that
were shared with them. routes/search.py is the thin HTTP layer over `search`.

Order of work, so that a search never holds a pooled connection while it waits
for the query encoder: validate → encode (micro-batched, no DB) → one short
transaction for access checks and the query.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from shared.embedding import BACKENDS, LEGACY_BACKEND, compatible_backends, space_of
from shared.reembed import REEMBED_KEY
from webui.access import check_readable_collections
from webui.errors import ApiError
from webui.schemas import SearchGroup, SearchHit, SearchRequest, SearchResponse
from webui.search_rank import (
    HEADLINE_OPTIONS,
    RRF_K,
    matched,
    parse_headline,
    relevance,
    strength,
    text_query,
)
from webui.state import AppState

log = logging.getLogger("sluice.webui")

# Candidates taken from each half before fusion: deep enough that a passage ranked
# modestly by both halves can rise above one ranked first by only one.
CANDIDATES_MIN = 40
# The text half ranks at most this many matching rows (an arbitrary subset when a
# query matches more): ranking every match of a common word in a big corpus costs
# more than the whole rest of a search, and a word that common says little.
TEXT_SCAN_MAX = 5000


@dataclass
class Scope:
    """Which chunks a search may see: SQL on chunks `c` and files `f`, and its params."""
    chunks: str
    files: str
    params: dict[str, object]
    label: str  # for messages: whose files these are


def own_scope(owner: uuid.UUID) -> Scope:
    return Scope("c.owner_id = :owner", "f.owner_id = :owner", {"owner": owner}, "your files")


def collections_scope(collection_ids: list[uuid.UUID]) -> Scope:
    member = "(SELECT cf.file_id FROM collection_files cf WHERE cf.collection_id = ANY(:cids))"
    return Scope(f"c.file_id IN {member}", f"f.id IN {member}", {"cids": collection_ids},
                 "the files in these collections")


# The filters (scope, backend, file_ids) sit inside both halves: pgvector's
# iterative scan keeps walking the HNSW graph until enough rows pass them, and
# the text half is filtered before it is ranked, so other users' chunks never
# crowd out the caller's.
_VECTOR_HALF = """
SELECT id, row_number() OVER (ORDER BY dist, id) AS r FROM (
  SELECT c.id, c.embedding <=> CAST(:vec AS vector) AS dist
  FROM chunks c WHERE {where}
  ORDER BY c.embedding <=> CAST(:vec AS vector) LIMIT :n) v
"""
_TEXT_HALF = """
SELECT id, row_number() OVER (ORDER BY rank DESC, id) AS r FROM (
  SELECT m.id, ts_rank_cd(m.tsv, q.tq) AS rank FROM (
    SELECT c.id, c.tsv FROM chunks c, q WHERE c.tsv @@ q.tq AND {where} LIMIT :text_scan
  ) m, q ORDER BY rank DESC, m.id LIMIT :n) t
"""
_NONE = "SELECT NULL::bigint AS id, NULL::bigint AS r WHERE false"
# Highlights use the query's words OR-ed, so a passage found by meaning still shows
# whichever of the words it has; stop words never appear in a tsquery.
_HYBRID_SQL = """
WITH q AS (
  SELECT websearch_to_tsquery(CAST(:cfg AS regconfig), :query) AS tq,
         CAST(replace(CAST(websearch_to_tsquery(CAST(:cfg AS regconfig), :query) AS text),
                      ' & ', ' | ') AS tsquery) AS hq),
vec AS MATERIALIZED ({vector_half}),
txt AS MATERIALIZED ({text_half}),
fused AS (
  SELECT id, min(vr) AS vr, min(tr) AS tr FROM (
    SELECT id, r AS vr, NULL::bigint AS tr FROM vec
    UNION ALL SELECT id, NULL, r FROM txt) u GROUP BY id),
top AS (
  SELECT id, vr, tr,
         coalesce(1.0 / (:rrf_k + vr), 0) + coalesce(1.0 / (:rrf_k + tr), 0) AS rrf
  FROM fused ORDER BY rrf DESC, tr NULLS LAST, id LIMIT :k)
-- Snippets and similarities for the top k only: computed in the ORDER BY's query they
-- would run for every candidate (ts_headline reads the whole passage).
SELECT c.id, c.file_id, f.filename, c.idx, c.text, top.vr, top.tr,
       1 - (c.embedding <=> CAST(:vec AS vector)) AS similarity,
       ts_headline(CAST(:cfg AS regconfig), c.text, q.hq, :hl) AS headline
FROM top JOIN chunks c ON c.id = top.id JOIN files f ON f.id = c.file_id, q
ORDER BY top.rrf DESC, top.tr NULLS LAST, top.id
"""


def hybrid_sql(mode: str, scope: Scope, file_filter: bool) -> str:
    where = f"{scope.chunks} AND c.embedding_backend = ANY(:backends)"
    if file_filter:
        where += " AND c.file_id = ANY(:file_ids)"
    vector_half = _VECTOR_HALF.format(where=where) if mode != "text" else _NONE
    text_half = _TEXT_HALF.format(where=where) if mode != "vector" else _NONE
    return _HYBRID_SQL.format(vector_half=vector_half, text_half=text_half)


# Files in scope whose chunks were embedded by another model or in another space
# than the query encoder's. Reads files (owner or membership index), never chunks:
# files.embedding_backend/embedding_model are written with the chunks.
_MISMATCH_SQL = """
SELECT f.embedding_model AS model, COALESCE(f.embedding_backend, :legacy) AS backend,
       count(*) AS files
FROM files f
WHERE {scope} AND f.embedding_model IS NOT NULL {file_filter}
  AND (f.embedding_model <> :model OR NOT COALESCE(f.embedding_backend, :legacy) = ANY(:backends))
GROUP BY 1, 2
ORDER BY 3 DESC
"""


async def check_embedding_space(
    session: AsyncSession, state: AppState, scope: Scope, file_ids: list[uuid.UUID] | None
) -> list[str]:
    """The backends the query may be compared with; 409 if some files in scope were
    embedded by another model or in another space (int8 vs fp32)."""
    embedder = state.embedder
    backends = compatible_backends(embedder.backend)
    params: dict[str, object] = {**scope.params, "model": embedder.name, "backends": backends,
                                 "legacy": LEGACY_BACKEND}
    file_filter = ""
    if file_ids:
        file_filter = "AND f.id = ANY(:file_ids)"
        params["file_ids"] = file_ids
    sql = _MISMATCH_SQL.format(scope=scope.files, file_filter=file_filter)
    rows = (await session.execute(text(sql), params)).all()
    if rows:
        rows = await _not_being_reembedded(session, rows)
    if rows:
        found = ", ".join(f"{r.files} with {r.model}/{r.backend}" for r in rows)
        raise ApiError(
            409, "embedding_mismatch",
            f"search refused: {sum(r.files for r in rows)} of {scope.label} were embedded "
            f"with a different model or embedding backend ({found}) than this server's query "
            f"encoder ({embedder.name}/{embedder.backend}; compatible backends: "
            f"{', '.join(backends)}). Comparing vectors from different spaces gives wrong "
            f"rankings. Run the webui with the workers' EMBEDDING_BACKEND, or re-ingest those "
            f"files (delete and upload again), or pass file_ids of compatible files only.",
        )
    return backends


async def _not_being_reembedded(session: AsyncSession, rows: Sequence[Any]) -> list[Any]:
    """Mismatched files minus those already in the space a running re-embed is filling
    (files ingested meanwhile by workers on the new backend): they are left out of the
    search by its backend filter until the switch, not refused (README, "Switching the
    encoder"). Read only when some file mismatches: the common search never pays for it."""
    target = await session.scalar(text(
        "SELECT value ->> 'target_space' FROM app_config "
        "WHERE key = :k AND value ->> 'state' = 'running'"), {"k": REEMBED_KEY})
    if target is None:
        return list(rows)
    return [r for r in rows if r.backend not in BACKENDS or space_of(r.backend) != target]


async def search(
    session: AsyncSession, state: AppState, user_id: uuid.UUID, body: SearchRequest
) -> SearchResponse:
    settings = state.settings
    if body.top_k > settings.search_top_k_max:
        raise ApiError(422, "invalid_request", f"top_k: at most {settings.search_top_k_max}")
    started = time.perf_counter()
    # Before the first statement: the session has not taken a connection yet.
    vector = await state.query_encoder.encode(body.query)
    encode_ms = (time.perf_counter() - started) * 1000
    if body.collection_ids:
        scope = collections_scope(
            await check_readable_collections(session, user_id, body.collection_ids))
    else:
        scope = own_scope(user_id)
    backends = await check_embedding_space(session, state, scope, body.file_ids)
    # One round trip for both knobs (transaction-local): under load every round trip made
    # while holding a pooled connection also waits its turn on the event loop.
    await session.execute(
        text("SELECT set_config('hnsw.ef_search', :ef, true), "
             "set_config('hnsw.iterative_scan', 'strict_order', true)"),
        {"ef": str(int(settings.hnsw_ef_search))})
    params: dict[str, object] = {
        **scope.params, "vec": str(vector.tolist()), "query": text_query(body.query),
        "cfg": state.text_config,
        "backends": backends, "k": body.top_k, "n": max(CANDIDATES_MIN, 4 * body.top_k),
        "text_scan": TEXT_SCAN_MAX, "rrf_k": RRF_K, "hl": HEADLINE_OPTIONS,
    }
    if body.file_ids:
        params["file_ids"] = list(body.file_ids)
    sql = hybrid_sql(body.mode, scope, bool(body.file_ids))
    rows = (await session.execute(text(sql), params)).all()
    in_collections = await _collections_of(session, scope, [r.file_id for r in rows])
    await session.commit()  # the connection goes back before the answer is built

    # Two thresholds (README, "Search"): nothing unless the best hit is a close match,
    # then no hit that is itself very unlikely.
    best = max((float(r.similarity) for r in rows), default=0.0)
    scores = [relevance(float(r.similarity), r.tr is not None, best) for r in rows]
    close = bool(scores) and max(scores) >= settings.search_min_relevance
    hits, dropped = [], 0
    for r, score in zip(rows, scores, strict=True):
        weak = not close or score < settings.search_hit_min_relevance
        if weak:
            dropped += 1
            if not body.include_weak:
                continue
        snippet = parse_headline(r.headline)
        hits.append(SearchHit(
            file_id=r.file_id, filename=r.filename, chunk_index=r.idx, text=r.text,
            snippet=snippet.text, highlights=snippet.highlights, matched=matched(r.vr, r.tr),
            score=round(score, 4), strength="weak" if weak else strength(score),
            similarity=round(float(r.similarity), 4),
            collection_ids=in_collections.get(r.file_id, []),
        ))
    took = (time.perf_counter() - started) * 1000
    return SearchResponse(
        query=body.query, mode=body.mode, hits=hits,
        groups=group_by_file(hits) if body.group_by_file else None,
        threshold=settings.search_min_relevance,
        hit_threshold=settings.search_hit_min_relevance, no_close_match=bool(rows) and not close,
        below_threshold=dropped, took_ms=round(took, 1),
        encode_ms=round(encode_ms, 1),
    )


async def _collections_of(
    session: AsyncSession, scope: Scope, file_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[uuid.UUID]]:
    if "cids" not in scope.params or not file_ids:
        return {}
    rows = await session.execute(
        text("SELECT file_id, collection_id FROM collection_files "
             "WHERE collection_id = ANY(:cids) AND file_id = ANY(:fids) ORDER BY collection_id"),
        {"cids": scope.params["cids"], "fids": list(set(file_ids))},
    )
    out: dict[uuid.UUID, list[uuid.UUID]] = {}
    for r in rows:
        out.setdefault(r.file_id, []).append(r.collection_id)
    return out


def group_by_file(hits: list[SearchHit]) -> list[SearchGroup]:
    """Hits per file, files in the order of their best hit."""
    groups: dict[uuid.UUID, SearchGroup] = {}
    for h in hits:
        g = groups.setdefault(h.file_id, SearchGroup(file_id=h.file_id, filename=h.filename,
                                                     score=h.score, hits=[]))
        g.hits.append(h)
        g.score = max(g.score, h.score)
    return list(groups.values())


_CONFIG_RE = re.compile(r"to_tsvector\('([a-z_][a-z0-9_]*)'::regconfig")


async def column_text_config(engine: AsyncEngine, configured: str) -> str:
    """The text search configuration chunks.tsv was generated with (migration 0004).
    Queries must use the same one, whatever SEARCH_TEXT_CONFIG says now."""
    async with engine.connect() as conn:
        expr = await conn.scalar(text(
            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
            "ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
            "WHERE d.adrelid = 'chunks'::regclass AND a.attname = 'tsv'"))
    match = _CONFIG_RE.search(expr or "")
    if match is None:
        raise RuntimeError("chunks.tsv is missing: run `sluice migrate` (revision 0004)")
    if match.group(1) != configured:
        log.warning("search.text_config_mismatch column=%s SEARCH_TEXT_CONFIG=%s: using the "
                    "column's; rebuild it to switch (README, Search)", match.group(1), configured)
    return match.group(1)
