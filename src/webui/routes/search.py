"""Semantic search over the caller's own chunks."""

from __future__ import annotations

import time
import uuid

import anyio
from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.embedding import LEGACY_BACKEND, compatible_backends
from webui.deps import CurrentUser, SessionDep, StateDep
from webui.errors import ApiError
from webui.schemas import SearchHit, SearchRequest, SearchResponse
from webui.state import AppState

router = APIRouter(tags=["search"])

# The owner filter sits inside the vector query, and pgvector's iterative scan
# keeps walking the HNSW graph until top_k rows pass it, so one user's hits are
# never crowded out by another's.
#
# The backend filter never drops rows the check below let through; it only makes
# a file re-embedded in another space between the two statements invisible
# instead of ranked against the wrong vectors.
_SEARCH_SQL = """
SELECT c.file_id, f.filename, c.idx, c.text, 1 - (c.embedding <=> CAST(:q AS vector)) AS score
FROM chunks c JOIN files f ON f.id = c.file_id
WHERE c.owner_id = :owner AND c.embedding_backend = ANY(:backends) {file_filter}
ORDER BY c.embedding <=> CAST(:q AS vector)
LIMIT :k
"""

# Files whose chunks were embedded by another model or in another space than the
# query encoder's. Reads the caller's files (index on owner_id), never their
# chunks: files.embedding_backend/embedding_model are written with the chunks.
_MISMATCH_SQL = """
SELECT f.embedding_model AS model, COALESCE(f.embedding_backend, :legacy) AS backend,
       count(*) AS files
FROM files f
WHERE f.owner_id = :owner AND f.embedding_model IS NOT NULL {file_filter}
  AND (f.embedding_model <> :model OR NOT COALESCE(f.embedding_backend, :legacy) = ANY(:backends))
GROUP BY 1, 2
ORDER BY 3 DESC
"""


async def check_embedding_space(
    session: AsyncSession, owner: uuid.UUID, state: AppState, file_ids: list[uuid.UUID] | None
) -> list[str]:
    """The backends the query may be compared with; 409 if some of the caller's chunks
    were embedded by another model or in another space (int8 vs fp32)."""
    embedder = state.embedder
    backends = compatible_backends(embedder.backend)
    params: dict[str, object] = {"owner": owner, "model": embedder.name, "backends": backends,
                                 "legacy": LEGACY_BACKEND}
    file_filter = ""
    if file_ids:
        file_filter = "AND f.id = ANY(:file_ids)"
        params["file_ids"] = file_ids
    rows = (await session.execute(text(_MISMATCH_SQL.format(file_filter=file_filter)), params)).all()
    if rows:
        found = ", ".join(f"{r.files} with {r.model}/{r.backend}" for r in rows)
        raise ApiError(
            409, "embedding_mismatch",
            f"search refused: {sum(r.files for r in rows)} of your files were embedded with a "
            f"different model or embedding backend ({found}) than this server's query encoder "
            f"({embedder.name}/{embedder.backend}; compatible backends: {', '.join(backends)}). "
            f"Comparing vectors from different spaces gives wrong rankings. Run the webui with "
            f"the workers' EMBEDDING_BACKEND, or re-ingest those files (delete and upload "
            f"again), or pass file_ids of compatible files only.",
        )
    return backends


@router.post("/search", response_model=SearchResponse)
async def search(
    body: SearchRequest, session: SessionDep, user: CurrentUser, state: StateDep
) -> SearchResponse:
    settings = state.settings
    if body.top_k > settings.search_top_k_max:
        raise ApiError(422, "invalid_request", f"top_k: at most {settings.search_top_k_max}")
    started = time.perf_counter()
    backends = await check_embedding_space(session, user.id, state, body.file_ids)
    vector = await anyio.to_thread.run_sync(
        state.embedder.encode_query, body.query, limiter=state.encode_limiter
    )
    await session.execute(text(f"SET LOCAL hnsw.ef_search = {int(settings.hnsw_ef_search)}"))
    await session.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
    params: dict[str, object] = {"q": str(vector.tolist()), "owner": user.id, "k": body.top_k,
                                 "backends": backends}
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
