"""Semantic search over the caller's own chunks."""

from __future__ import annotations

import time

import anyio
from fastapi import APIRouter
from sqlalchemy import text

from webui.deps import CurrentUser, SessionDep, StateDep
from webui.errors import ApiError
from webui.schemas import SearchHit, SearchRequest, SearchResponse

router = APIRouter(tags=["search"])

# The owner filter sits inside the vector query, and pgvector's iterative scan
# keeps walking the HNSW graph until top_k rows pass it, so one user's hits are
# never crowded out by another's.
_SEARCH_SQL = """
SELECT c.file_id, f.filename, c.idx, c.text, 1 - (c.embedding <=> CAST(:q AS vector)) AS score
FROM chunks c JOIN files f ON f.id = c.file_id
WHERE c.owner_id = :owner {file_filter}
ORDER BY c.embedding <=> CAST(:q AS vector)
LIMIT :k
"""


@router.post("/search", response_model=SearchResponse)
async def search(
    body: SearchRequest, session: SessionDep, user: CurrentUser, state: StateDep
) -> SearchResponse:
    settings = state.settings
    if body.top_k > settings.search_top_k_max:
        raise ApiError(422, "invalid_request", f"top_k: at most {settings.search_top_k_max}")
    started = time.perf_counter()
    vector = await anyio.to_thread.run_sync(
        state.embedder.encode_query, body.query, limiter=state.encode_limiter
    )
    await session.execute(text(f"SET LOCAL hnsw.ef_search = {int(settings.hnsw_ef_search)}"))
    await session.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
    params: dict[str, object] = {"q": str(vector.tolist()), "owner": user.id, "k": body.top_k}
    file_filter = ""
    if body.file_ids:
        file_filter = "AND c.file_id = ANY(:file_ids)"
        params["file_ids"] = list(body.file_ids)
    rows = await session.execute(text(_SEARCH_SQL.format(file_filter=file_filter)), params)
    hits = [
        SearchHit(file_id=r.file_id, filename=r.filename, chunk_index=r.idx, text=r.text,
                  score=float(r.score))
        for r in rows
    ]
    took = (time.perf_counter() - started) * 1000
    return SearchResponse(query=body.query, hits=hits, took_ms=round(took, 1))
