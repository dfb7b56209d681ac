"""Sluice as an Open WebUI tool server: the filtered schema Open WebUI turns into tools
(utils/tools.py, convert_openapi_to_tool_payload, open-webui 0.12.4: every operation with
an operationId becomes a tool; its description, parameters and JSON body are read), and a
call made the way Open WebUI makes it, with a per-user key."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.support.helpers import upload, wait_for_status
from tests.support.stack import Stack


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[-1]
        assert name in components["schemas"], f"dangling $ref {ref}"
        return _resolve(components["schemas"][name], components)
    return schema


def test_tool_schema_has_only_read_tools_with_descriptions(stack: Stack) -> None:
    r = httpx.get(f"{stack.url}/api/v1/openwebui/tools.json", timeout=30)
    assert r.status_code == 200
    spec = r.json()
    ops = {op["operationId"]: (path, method, op) for path, methods in spec["paths"].items()
           for method, op in methods.items()}
    assert set(ops) == {"search", "list_collections", "list_collection_files"}
    assert all(method in ("get", "post") for _, method, _ in ops.values())
    for name, (_, _, op) in ops.items():
        assert "Sluice" in op["description"] and op.get("summary"), name
    _, _, search = ops["search"]
    body = _resolve(search["requestBody"]["content"]["application/json"]["schema"],
                    spec["components"])
    assert "query" in body["required"] and "collection_ids" in body["properties"]
    assert body["properties"]["query"].get("type") == "string"
    _, _, files = ops["list_collection_files"]
    assert {p["name"] for p in files["parameters"] if p["in"] == "path"} == {"collection_id"}
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_a_tool_call_sees_what_its_key_may_read(client: httpx.Client, stack: Stack,
                                                 db_engine: Any) -> None:
    from tests.support.stack import make_user

    n = uuid.uuid4().hex
    fid = upload(client, "tool.txt", f"The heron nests by the weir {n}".encode()).json()["id"]
    assert wait_for_status(client, fid)["status"] == "done"
    # Open WebUI: POST {url}{path} with the tool's arguments as the JSON body.
    r = client.post("/api/v1/search", json={"query": f"heron weir {n}"})
    assert r.status_code == 200 and r.json()["hits"][0]["file_id"] == fid
    other = make_user(db_engine, "tool-other")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {other.key}"},
                      timeout=30) as c:
        hits = c.post("/api/v1/search", json={"query": f"heron weir {n}"}).json()["hits"]
    assert all(h["file_id"] != fid for h in hits)
