"""The OpenAPI document Open WebUI registers as a tool server (a chat calls Sluice search).

Open WebUI turns *every* operation with an operationId in the document it is
given into a tool the model may call, so it gets a filtered copy of Sluice's
own schema: only read-only search and collection listing, each with a
description written for a model choosing a tool. Calls carry the per-user
Sluice key configured in Open WebUI (bearer), so a chat sees exactly what that
key's user may read.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from fastapi import FastAPI

# What a model reads when choosing a tool: when to call it and what comes back.
TOOL_OPERATIONS = {
    "search": (
        "Search the user's documents in Sluice and return the most relevant passages "
        "(text, file name, relevance). Use it to answer questions from the user's files. "
        "Pass collection_ids (from list_collections) to search only those collections."),
    "list_collections": (
        "List the document collections this user can search in Sluice (their own and "
        "those shared with them), with ids, names and file counts."),
    "list_collection_files": (
        "List the files in one Sluice collection (by collection_id from list_collections), "
        "with their names and processing status."),
}
SPEC_PATH = "/api/v1/openwebui/tools.json"


def _refs(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            out.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            _refs(value, out)
    elif isinstance(node, list):
        for value in node:
            _refs(value, out)


def tool_spec(app: FastAPI) -> dict[str, Any]:
    """Sluice's schema reduced to TOOL_OPERATIONS and the components they use."""
    full = app.openapi()
    paths: dict[str, Any] = {}
    for path, methods in full.get("paths", {}).items():
        kept = {m: copy.deepcopy(op) for m, op in methods.items()
                if isinstance(op, dict) and op.get("operationId") in TOOL_OPERATIONS}
        for op in kept.values():
            op["description"] = TOOL_OPERATIONS[op["operationId"]]
        if kept:
            paths[path] = kept
    schemas = full.get("components", {}).get("schemas", {})
    wanted: set[str] = set()
    _refs(paths, wanted)
    while True:  # schemas referring to schemas
        more: set[str] = set()
        _refs([schemas[name] for name in wanted if name in schemas], more)
        if more <= wanted:
            break
        wanted |= more
    return {
        "openapi": full.get("openapi", "3.1.0"),
        "info": {"title": "Sluice search",
                 "version": full.get("info", {}).get("version", "0"),
                 "description": "Search the documents and collections this Sluice key may read."},
        "paths": paths,
        "components": {
            "schemas": {name: schemas[name] for name in sorted(wanted) if name in schemas},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def tool_spec_json(app: FastAPI) -> str:
    return json.dumps(tool_spec(app))
