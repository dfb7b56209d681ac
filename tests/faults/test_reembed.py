"""Switching the encoder without downtime (issue 14, shared/reembed.py): files ingested
with onnx (fp32), workers restarted with onnx-int8. The re-embed runs in the background
while the fp32 webui keeps answering; a file deleted and a unit whose lease is lost on the
way change nothing; then one switch, and the chunks carry int8 vectors. Then an fp32
worker alone starts the way back by itself (REEMBED_AUTO)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from shared import reembed
from shared.db import sync_session_factory
from shared.encoders import load_embedder
from shared.work import claim, fence
from tests.faults.stack import FaultStack, WebUI, long_text
from tests.support.helpers import upload, wait_for_status, wait_until
from tests.support.stack import ApiUser

FAULT_ENV = {
    "EMBEDDING_BACKEND": "onnx",
    "SEGMENT_CHUNKS": "4",
    "JOB_MONITORING_INTERVAL": "1",
    "UNIT_LEASE_SECONDS": "4",
    "WORKER_HEARTBEAT_GRACE": "4",
    "WORKER_MAINTENANCE_INTERVAL": "2",
    "RECONCILE_INTERVAL": "1",
    "RECONCILE_QUEUED_GRACE": "2",
    "JOB_RETRY_DELAY": "1",
    "JOB_MAX_RETRIES": "2",
}
QUERY = {"query": "tides and the sluice gates of the canal", "top_k": 5}


@pytest.fixture(scope="module")
def corpus(fault_stack: FaultStack) -> dict[str, Any]:
    """Three files of ~10 chunks (3 units each) embedded by an onnx worker, which then stops."""
    web = fault_stack.start(workers=1)
    owner, admin = fault_stack.user("owner"), fault_stack.user("admin")
    with fault_stack.db.begin() as conn:
        conn.execute(text("UPDATE users SET is_admin = true WHERE id = :i"), {"i": admin.id})
    with fault_stack.client(owner) as c:
        fids = [upload(c, f"doc{n}.txt", long_text(10, f"doc{n}")).json()["id"] for n in range(3)]
        for fid in fids:
            assert wait_for_status(c, fid, timeout=180)["status"] == "done"
    for proc in fault_stack.live_workers():
        proc.stop()
    return {"web": web, "owner": owner, "admin": admin, "files": fids}


def _cli(fault_stack: FaultStack, *args: str) -> str:
    env = {**os.environ, **fault_stack.env}
    out = subprocess.run([sys.executable, "-m", "shared.cli", "reembed", *args], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def _progress(fault_stack: FaultStack, user: ApiUser, web: WebUI) -> dict[str, Any]:
    with fault_stack.client(user, web) as c:
        r = c.get("/api/v1/admin/reembed")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _search(fault_stack: FaultStack, user: ApiUser, web: WebUI) -> httpx.Response:
    with fault_stack.client(user, web) as c:
        return c.post("/api/v1/search", json=QUERY)


def _units(fault_stack: FaultStack) -> dict[str, int]:
    return {s: int(n) for s, n in fault_stack.sql(
        "SELECT state, count(*) FROM work_units WHERE kind = 'reembed' GROUP BY state")}


def _chunks(fault_stack: FaultStack, fid: str) -> list[tuple[int, str, str, np.ndarray]]:
    rows = fault_stack.sql("SELECT idx, text, embedding_backend, embedding::text FROM chunks "
                           "WHERE file_id = :i ORDER BY idx", i=uuid.UUID(fid))
    return [(int(i), t, b, np.array(e.strip("[]").split(","), dtype=np.float32))
            for i, t, b, e in rows]


def test_reembed_runs_behind_search_then_switches(
    fault_stack: FaultStack, corpus: dict[str, Any]
) -> None:
    web, owner, admin = corpus["web"], corpus["owner"], corpus["admin"]
    kept, deleted = corpus["files"][0], corpus["files"][1]
    assert _progress(fault_stack, admin, web)["active_space"] == "fp32"

    # Start (the admin command) and plan, then a "worker" claims one unit and dies: its
    # lease (long, so the re-embed stays open while we look) is lost later on.
    assert _cli(fault_stack, "start", "--backend", "onnx-int8").startswith("started")
    factory = sync_session_factory(fault_stack.db)
    with factory() as session:
        assert reembed.advance(session, worker_backend=None, segment_chunks=4)
        session.commit()
    ghost_id = fault_stack.sql("SELECT id FROM work_units WHERE kind = 'reembed' AND file_id = :f "
                               "ORDER BY ordinal LIMIT 1", f=uuid.UUID(kept))[0][0]
    with fault_stack.db.begin() as conn:
        conn.execute(text("UPDATE work_units SET state = 'dispatched', attempt = 1 WHERE id = :u"),
                     {"u": ghost_id})
    with factory() as session:
        ghost = claim(session, ghost_id, 1, "ghost", 600)
    assert ghost is not None
    total_units = sum(_units(fault_stack).values())
    assert total_units == 9

    # Workers on the new backend do the rest; search (the fp32 webui) keeps answering.
    worker = fault_stack.start_worker(EMBEDDING_BACKEND="onnx-int8")
    wait_until(lambda: _units(fault_stack) == {"done": total_units - 1, "running": 1}, 120,
               "every unit but the ghost's to be done")
    r = _search(fault_stack, owner, web)
    assert r.status_code == 200 and r.json()["hits"], r.text
    during = _progress(fault_stack, admin, web)
    assert during["state"] == "running" and during["target_space"] == "int8"
    assert during["files_total"] == 3 and during["files_done"] == 2
    assert 0 < during["chunks_done"] < during["chunks_total"]
    with fault_stack.client(owner, web) as c:
        assert c.get("/api/v1/admin/reembed").status_code == 404  # as other admin routes

    # A file uploaded meanwhile is embedded by the int8 worker: the fp32 search leaves it
    # out (no 409) until the switch.
    with fault_stack.client(owner, web) as c:
        late = upload(c, "late.txt", long_text(6, "late")).json()["id"]
        assert wait_for_status(c, late, timeout=120)["status"] == "done"
    r = _search(fault_stack, owner, web)
    assert r.status_code == 200 and late not in {h["file_id"] for h in r.json()["hits"]}

    # A file deleted mid-re-embed: its side vectors go with it.
    deleted_chunks = [int(i) for (i,) in fault_stack.sql(
        "SELECT id FROM chunks WHERE file_id = :f", f=uuid.UUID(deleted))]
    assert fault_stack.sql("SELECT count(*) FROM chunk_vectors WHERE chunk_id = ANY(:c)",
                           c=deleted_chunks)[0][0] > 0
    with fault_stack.client(owner, web) as c:
        assert c.delete(f"/api/v1/files/{deleted}").status_code == 204

    # The ghost's lease runs out: the unit is redone by the worker, and the switch follows.
    with fault_stack.db.begin() as conn:
        conn.execute(text("UPDATE work_units SET lease_expires_at = now() - interval '1 second' "
                          "WHERE id = :u"), {"u": ghost_id})
    done = wait_until(lambda: (p := _progress(fault_stack, admin, web))["state"] == "done" and p,
                      120, "the switch")
    with factory() as session:
        assert fence(session, ghost) is None  # the ghost's late write would change nothing
    assert done["active_space"] == "int8" and done["chunks_done"] == done["chunks_total"]
    assert done["files_total"] == 3  # kept, the third, late
    assert fault_stack.sql("SELECT count(*) FROM chunk_vectors")[0][0] == 0
    assert _units(fault_stack) == {}
    for table in ("chunks", "work_units"):
        assert fault_stack.sql(f"SELECT count(*) FROM {table} WHERE file_id = :f",
                               f=uuid.UUID(deleted))[0][0] == 0
    log = worker.log()
    assert f"unit.lease_expired unit={ghost_id} " in log
    window = f"reembed.stored file_id={kept} chunks={ghost.chunk_start}-{ghost.chunk_end} "
    assert log.count(window) == 1, "the lost unit was written once, by its redo"

    # Every chunk carries the int8 backend and the vector int8 computes for it (the worker
    # encoded each window of 4 in one call; so does this).
    int8 = load_embedder(fault_stack.settings.model_copy(
        update={"embedding_backend": "onnx-int8"}), 1)
    for fid in (kept, corpus["files"][2]):
        rows = _chunks(fault_stack, fid)
        assert rows and {b for _, _, b, _ in rows} == {"onnx-int8"}
        for start in range(0, len(rows), 4):
            window_rows = rows[start:start + 4]
            expected = int8.encode([t for _, t, _, _ in window_rows], batch_size=32)
            for (_, _, _, got), want in zip(window_rows, expected, strict=True):
                assert np.allclose(got, want, atol=1e-4)
    assert {b for (b,) in fault_stack.sql(
        "SELECT DISTINCT embedding_backend FROM files WHERE status = 'done'")} == {"onnx-int8"}

    # Rollout, second half: the fp32 webui now refuses (409 says why); an int8 one answers.
    r = _search(fault_stack, owner, web)
    assert r.status_code == 409 and r.json()["code"] == "embedding_mismatch"
    web8 = fault_stack.start_webui(EMBEDDING_BACKEND="onnx-int8")
    r = _search(fault_stack, owner, web8)
    assert r.status_code == 200 and r.json()["hits"], r.text
    assert kept in {h["file_id"] for h in r.json()["hits"]}
    corpus["web8"] = web8


def test_a_worker_in_another_space_starts_the_way_back_by_itself(
    fault_stack: FaultStack, corpus: dict[str, Any]
) -> None:
    """REEMBED_AUTO: an fp32 worker, with int8 active, re-embeds into fp32; an int8 worker
    beside it (REEMBED_AUTO off) gives back any unit it gets, so no int8 vector is written."""
    for proc in fault_stack.live_workers():
        proc.stop()
    int8_worker = fault_stack.start_worker(EMBEDDING_BACKEND="onnx-int8", REEMBED_AUTO="false")
    fault_stack.start_worker()  # onnx
    web, admin = corpus["web"], corpus["admin"]
    done = wait_until(lambda: (p := _progress(fault_stack, admin, web))["target_space"] == "fp32"
                      and p["state"] == "done" and p, 120, "the re-embed back to fp32")
    assert done["active_space"] == "fp32" and done["chunks_done"] == done["chunks_total"] > 0
    assert {b for (b,) in fault_stack.sql("SELECT DISTINCT embedding_backend FROM chunks")} == \
        {"onnx"}
    assert "reembed.given_back" in int8_worker.log()  # it was offered units, and wrote none
    r = _search(fault_stack, corpus["owner"], web)
    assert r.status_code == 200 and r.json()["hits"], r.text
    status = _cli(fault_stack, "status")
    assert '"active_space": "fp32"' in status
