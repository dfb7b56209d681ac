"""Schemathesis fuzz of the live webui's OpenAPI schema, as two users.

User A fuzzes every operation (but the SSE stream) with A's key: schema-valid
and schema-invalid inputs, then every operation that takes an id again with
user B's file, user and key ids in the path (and B's file ids in search
filters and B's user id as the admin `owner_id`). Nothing may answer 5xx, no
request naming B's ids may succeed, no response may carry B's data, and B's
files are untouched afterwards. Bounded: MAX_EXAMPLES per operation and pass.
"""

from __future__ import annotations

import copy
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from sqlalchemy import Engine, text

from tests.support.helpers import upload, wait_for_status
from tests.support.stack import ApiUser, Stack, make_user

MAX_EXAMPLES = int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "20"))
"""Per operation and pass: ~17 operations x 3 passes, about 600 requests in 30 s."""
FUZZ_SEED = int(os.environ.get("SLUICE_FUZZ_SEED", "20260"))
"""Fixed so a failure reproduces; set another to explore."""
EXCLUDED_PATHS = ["/api/v1/events"]  # a never-ending SSE stream
UPLOAD_FIELD_MAX_BYTES = 2048
ID_PARAMETERS = ("file_id", "user_id", "key_id")
TIME_BUDGET_S = 150
"""A guard against a hang, well above the expected run time."""

HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)


@dataclass
class Victim:
    """User B and everything of B's that A must never see or change."""

    user: ApiUser
    file_ids: list[str]
    key_id: str
    canary: str

    def ids_for(self, parameter: str) -> list[str]:
        return {"file_id": self.file_ids, "user_id": [self.user.id], "key_id": [self.key_id]}[
            parameter
        ]

    @property
    def secrets(self) -> list[str]:
        return [*self.file_ids, self.user.id, self.user.email, self.key_id, self.canary,
                self.user.key]


@pytest.fixture(scope="module")
def victim(stack: Stack, db_engine: Engine) -> Victim:
    user = make_user(db_engine, "fuzz-b")
    canary = f"canary{uuid.uuid4().hex}"
    file_ids = []
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {user.key}"},
                      timeout=30) as b:
        for i in range(2):
            r = upload(b, f"b-private-{i}.txt", f"B's private note {i}: {canary}\n".encode())
            assert r.status_code == 202, r.text
            file_ids.append(r.json()["id"])
        for fid in file_ids:
            assert wait_for_status(b, fid, timeout=60)["status"] == "done"
    with db_engine.connect() as conn:
        key_id = conn.execute(text("SELECT id FROM api_keys WHERE user_id = :u"),
                              {"u": user.id}).scalar_one()
    return Victim(user, file_ids, str(key_id), canary)


@pytest.fixture(scope="module")
def attacker(stack: Stack, db_engine: Engine) -> ApiUser:
    """User A, with a file of A's own so that some ids A sends do exist."""
    user = make_user(db_engine, "fuzz-a")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {user.key}"},
                      timeout=30) as a:
        assert upload(a, "a-own.txt", f"A's own note {uuid.uuid4()}\n".encode()).status_code == 202
    return user


def _live_schema(stack: Stack) -> schemathesis.BaseSchema:
    """The webui's own /openapi.json, with a small multipart body described for the
    upload (the endpoint parses its stream itself, so FastAPI does not document one)."""
    spec = httpx.get(f"{stack.url}/openapi.json", timeout=30).raise_for_status().json()
    spec = copy.deepcopy(spec)
    upload_op = spec["paths"].get("/api/v1/files", {}).get("post")
    if upload_op is not None and "requestBody" not in upload_op:
        upload_op["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary",
                                        "maxLength": UPLOAD_FIELD_MAX_BYTES}},
            }}},
        }
    schema: schemathesis.BaseSchema = schemathesis.openapi.from_dict(spec)
    for path in EXCLUDED_PATHS:
        schema = schema.exclude(path=path)
    return schema


def _operations(schema: schemathesis.BaseSchema) -> list[Any]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the webui's schema has an invalid operation: {result}"
        operations.append(result.ok())
    assert len(operations) >= 10, [op.label for op in operations]
    return operations


def _path_id_params(operation: Any) -> list[str]:
    return [p.name for p in operation.path_parameters if p.name in ID_PARAMETERS]


def _victim_strategy(operation: Any, path_parameters: dict[str, str]) -> Any:
    return operation.as_strategy(
        generation_mode=GenerationMode.POSITIVE, path_parameters=path_parameters
    )


def _query_names(operation: Any) -> set[str]:
    return {p.name for p in operation.query}


class Fuzzer:
    """Sends cases as A and checks every response; counts what it saw."""

    def __init__(self, stack: Stack, attacker: ApiUser, victim: Victim) -> None:
        self.base_url = stack.url
        self.headers = {"Authorization": f"Bearer {attacker.key}"}
        self.victim = victim
        self.statuses: dict[str, dict[int, int]] = {}
        self.started = time.monotonic()

    def send(self, case: Any, *, names_victim: bool) -> None:
        assert time.monotonic() - self.started < TIME_BUDGET_S, "fuzz run over its time budget"
        response = case.call(base_url=self.base_url, headers=self.headers, timeout=30)
        counts = self.statuses.setdefault(case.operation.label, {})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        case.validate_response(response, checks=[not_a_server_error], headers=self.headers)
        if names_victim:
            assert not 200 <= response.status_code < 300, (
                f"A got {response.status_code} for B's id: {case.operation.label} "
                f"{case.path_parameters} {case.query} -> {response.text[:300]}"
            )
        sent = f"{case.path_parameters} {case.query} {case.body!r}"
        leaked = [s for s in self.victim.secrets if s in response.text and s not in sent]
        assert not leaked, f"B's data in A's response: {case.operation.label} -> {leaked}"


def _run(strategy: Any, body: Callable[..., None], *, may_be_unsatisfiable: bool = False) -> None:
    try:
        seed(FUZZ_SEED)(HYPOTHESIS(given(case=strategy)(body)))()
    except Unsatisfiable:
        # Negative mode on an operation with nothing to get wrong (no parameters, no body).
        if not may_be_unsatisfiable:
            raise


def test_fuzz_two_users_no_5xx_and_no_cross_user_read(
    stack: Stack, attacker: ApiUser, victim: Victim
) -> None:
    schema = _live_schema(stack)
    fuzzer = Fuzzer(stack, attacker, victim)

    for operation in _operations(schema):
        # Pass 1: anything the schema allows, and things it does not, with random ids.
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(operation.as_strategy(generation_mode=mode),
                 lambda case: fuzzer.send(case, names_victim=False),
                 may_be_unsatisfiable=mode.is_negative)

        # Pass 2: schema-valid requests aimed at B's resources.
        id_params = _path_id_params(operation)
        if id_params:
            fixed = st.one_of(*[
                st.just({name: victim_id})
                for name in id_params for victim_id in victim.ids_for(name)
            ])
            strategy = fixed.flatmap(partial(_victim_strategy, operation))
            _run(strategy, lambda case: fuzzer.send(case, names_victim=True))
        elif "owner_id" in _query_names(operation):
            strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE,
                                             query={"owner_id": victim.user.id})
            _run(strategy, lambda case: fuzzer.send(case, names_victim=True))
        elif operation.label == "POST /api/v1/search":
            def search_b(case: Any) -> None:
                if isinstance(case.body, dict):
                    # B's own words, restricted to B's files: a leaky filter would
                    # rank B's chunks first.
                    case.body.update(file_ids=list(victim.file_ids), query=victim.canary,
                                     top_k=min(int(case.body.get("top_k", 10)), 10))
                fuzzer.send(case, names_victim=False)  # 200 with no hits is the right answer

            _run(operation.as_strategy(generation_mode=GenerationMode.POSITIVE), search_b)

    # A's requests changed nothing of B's: files, chunks, key and account intact.
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {victim.user.key}"},
                      timeout=30) as b:
        assert b.get("/api/v1/me").status_code == 200
        for fid in victim.file_ids:
            r = b.get(f"/api/v1/files/{fid}")
            assert r.status_code == 200 and r.json()["status"] == "done", r.text
            assert r.json()["chunk_count"] >= 1
        hits = b.post("/api/v1/search", json={"query": victim.canary, "top_k": 5}).json()["hits"]
        assert {h["file_id"] for h in hits} & set(victim.file_ids)
    total = sum(sum(c.values()) for c in fuzzer.statuses.values())
    print(f"\nfuzz: {total} requests in {time.monotonic() - fuzzer.started:.0f} s")
    for label, counts in sorted(fuzzer.statuses.items()):
        print(f"  {label}: {dict(sorted(counts.items()))}")
    assert stack.webui.popen.poll() is None
