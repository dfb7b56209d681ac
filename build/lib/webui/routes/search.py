"""Search over the caller's files or the collections they may read (webui/search.py)."""

from __future__ import annotations

from fastapi import APIRouter

from webui import search as uc
from webui.deps import CurrentUser, SessionDep, StateDep
from webui.schemas import SearchRequest, SearchResponse

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse, operation_id="search",
             responses={404: {"description": "a collection that is not yours or shared with you"},
                        409: {"description": "files embedded in another embedding space"}})
async def search(
    body: SearchRequest, session: SessionDep, user: CurrentUser, state: StateDep
) -> SearchResponse:
    """Search passages of your files, or of `collection_ids` (yours or shared with you).
    Hybrid by default: full-text matches (exact words, part codes) fused with semantic
    matches; each hit says why it matched and how relevant it is."""
    return await uc.search(session, state, user.id, body)
