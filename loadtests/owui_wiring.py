"""Wire a real Open WebUI (owui.py) to a running Sluice through each integration point,
with the settings `sluice openwebui settings` prints (shared/ops/openwebui.py).

Checked against open-webui 0.12.4: external pgvector knowledge source
(routers/knowledge.py, retrieval/external.py), RAG_EMBEDDING_ENGINE=openai
(retrieval/utils.py), the external document loader
(retrieval/loaders/external_document.py), tool servers (utils/tools.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

from shared.ops.openwebui import SOURCE_CONFIG, TOOL_SPEC_PATH


def sluice_env(sluice_url: str, key: str) -> dict[str, str]:
    """Open WebUI environment: Sluice embeds (openai engine) and extracts (external loader),
    and is a tool server. Same names and values as `sluice openwebui settings`."""
    tool = [{"type": "openapi", "url": sluice_url, "path": TOOL_SPEC_PATH, "spec_type": "url",
             "auth_type": "bearer", "key": key, "config": {"enable": True},
             "info": {"id": "sluice", "name": "Sluice search"}}]
    return {
        "RAG_EMBEDDING_ENGINE": "openai", "RAG_OPENAI_API_BASE_URL": f"{sluice_url}/v1",
        "RAG_OPENAI_API_KEY": key, "RAG_EMBEDDING_MODEL": "all-MiniLM-L6-v2",
        "RAG_EMBEDDING_BATCH_SIZE": "32", "RAG_EMBEDDING_CONCURRENT_REQUESTS": "2",
        "CONTENT_EXTRACTION_ENGINE": "external", "EXTERNAL_DOCUMENT_LOADER_URL": sluice_url,
        "EXTERNAL_DOCUMENT_LOADER_API_KEY": key, "TOOL_SERVER_CONNECTIONS": json.dumps(tool),
        "ENABLE_DIRECT_CONNECTIONS": "false",
    }


def add_knowledge(owui_url: str, token: str, dsn: str, collection_id: str, name: str
                  ) -> tuple[str, str]:
    """An external pgvector connection and a knowledge base on one Sluice collection;
    (connection id, knowledge id)."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=owui_url, headers=headers, timeout=120) as c:
        r = c.post("/api/v1/knowledge/external/connections", json={
            "name": "Sluice", "provider": "pgvector", "endpoint": dsn, "enabled": True})
        r.raise_for_status()
        connection_id: str = r.json()["id"]
        r = c.post("/api/v1/knowledge/external/knowledge/create", json={
            "name": name, "description": "a Sluice collection", "connection_id": connection_id,
            "source": {"type": "collection", "name": collection_id, "config": SOURCE_CONFIG}})
        r.raise_for_status()
        return connection_id, str(r.json()["id"])


def retrieve(owui_url: str, token: str, connection_id: str, collection_id: str, query: str,
             count: int = 3) -> dict[str, Any]:
    """Open WebUI's own retrieval against the external source: it embeds the query
    (through Sluice's /v1/embeddings here) and runs its SELECT on the view."""
    with httpx.Client(base_url=owui_url, headers={"Authorization": f"Bearer {token}"},
                      timeout=120) as c:
        r = c.post(f"/api/v1/knowledge/external/connections/{connection_id}/retrieve-test",
                   json={"query": query, "count": count, "source": {
                       "type": "collection", "name": collection_id, "config": SOURCE_CONFIG}})
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result


def tool_names(owui_url: str, token: str) -> list[str]:
    """Tools Open WebUI built from Sluice's tool-server schema (its /api/v1/tools list)."""
    with httpx.Client(base_url=owui_url, headers={"Authorization": f"Bearer {token}"},
                      timeout=120) as c:
        r = c.get("/api/v1/tools/")
        r.raise_for_status()
        return [t["id"] for t in r.json()]


# Runs inside Open WebUI's venv: its own spec loader, tool conversion and tool call.
_TOOL_CALL = """
import asyncio, json, sys
from open_webui.utils.tools import (convert_openapi_to_tool_payload, execute_tool_server,
                                    get_tool_server_data)
url, path, key, query = sys.argv[1:5]
async def main():
    spec = await get_tool_server_data(url + path, {"Authorization": "Bearer " + key})
    tools = [t["name"] for t in convert_openapi_to_tool_payload(spec)]
    result, _ = await execute_tool_server(url, {"Authorization": "Bearer " + key}, {}, "search",
                                          {"query": query, "top_k": 3}, {"openapi": spec})
    print(json.dumps({"tools": tools, "result": result}))
asyncio.run(main())
"""


def call_search_tool(venv: Path, env: dict[str, str], sluice_url: str, key: str, query: str
                     ) -> dict[str, Any]:
    """Open WebUI's tool-server code (not ours) fetching the schema and calling `search`."""
    # FROM_INIT_PY: what `open-webui serve` sets, so it finds its bundled frontend.
    out = subprocess.run([str(venv / "bin" / "python"), "-c", _TOOL_CALL, sluice_url,
                          TOOL_SPEC_PATH, key, query], env={**env, "FROM_INIT_PY": "true"},
                         capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"Open WebUI's tool call failed:\n{out.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return answer
