"""Open WebUI on top (issue 15): embeddings, document loader, tool-server schema.
Thin: the work is in webui/openai_compat.py, webui/loader.py and webui/tool_server.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from webui import loader, tool_server
from webui.deps import CurrentUser, StateDep
from webui.openai_compat import EmbeddingsRequest, EmbeddingsResponse

router = APIRouter(tags=["open-webui"])
_BUSY: dict[int | str, dict[str, Any]] = {429: {"description": "over capacity; see Retry-After"}}


@router.post("/v1/embeddings", response_model=EmbeddingsResponse,
             operation_id="openai_embeddings",
             responses={**_BUSY, 413: {"description": "the inputs are too large together"},
                        503: {"description": "no worker is running; see Retry-After"},
                        504: {"description": "no worker answered in time"}})
async def embeddings(body: EmbeddingsRequest, user: CurrentUser, state: StateDep
                     ) -> EmbeddingsResponse:
    """OpenAI-compatible embeddings with Sluice's model, computed by the worker fleet,
    vectors in input order (Open WebUI: `RAG_EMBEDDING_ENGINE=openai`)."""
    return await state.openwebui.embeddings.embed(body)


@router.put("/process", operation_id="openwebui_process_document",
            responses={**_BUSY, 413: {"description": "larger than MAX_UPLOAD_MB"},
                       422: {"description": "the document was rejected (reason given)"}})
async def process_document(request: Request, user: CurrentUser, state: StateDep
                           ) -> dict[str, Any]:
    """Extract a document's text with Sluice's isolated parser (Open WebUI's external
    document loader): raw bytes as the body, `X-Filename` url-quoted."""
    return await loader.process(request, state, state.openwebui.loader)


@router.get(tool_server.SPEC_PATH, include_in_schema=False)
async def tools_spec(request: Request) -> JSONResponse:
    """The schema for Open WebUI's tool server connection (search and collections only)."""
    return JSONResponse(tool_server.tool_spec(request.app))
