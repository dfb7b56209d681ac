"""The real worker process: loads once, leaks nothing, retries, stays idempotent."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import httpx
from redis import Redis
from rq.job import JobStatus
from sqlalchemy import Engine, text

from shared.queue import UNIT_FUNC, make_queue, unit_job_id
from shared.settings import Settings
from shared.storage import new_storage_key, stored_path
from shared.work import wake
from tests.support.helpers import upload, wait_for_status, wait_until
from tests.support.stack import ApiUser, Stack, insert_file, make_user
from worker.main import FACTS_KEY


def _facts(redis: Redis, pid: int) -> dict[str, str]:
    for key in redis.keys(FACTS_KEY.format(name="*")):
        # decode_responses=False: field names and values are bytes.
        raw = cast(dict[bytes, bytes], redis.hgetall(key))
        facts = {k.decode(): v.decode() for k, v in raw.items()}
        if facts.get("pid") == str(pid):
            return facts
    raise AssertionError(f"no facts published by worker pid {pid}")


def _upload_many(client: httpx.Client, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = upload(client, f"n{i}.txt", f"note {i}: {uuid.uuid4()} river delta".encode())
        assert r.status_code == 202
        ids.append(r.json()["id"])
    return ids


def test_model_and_config_load_once_and_no_connection_leaks(
    client: httpx.Client, stack: Stack, redis_client: Redis, db_engine: Engine, settings: Settings
) -> None:
    ids = _upload_many(client, 50)
    for fid in ids:
        assert wait_for_status(client, fid)["status"] == "done"
    facts = _facts(redis_client, stack.worker.pid)
    assert int(facts["files_done"]) >= 50
    assert int(facts["jobs_done"]) >= 100  # a parse unit and a segment unit per file
    # Counted where the loads happen (runtime.load_embedder / load_app_config).
    assert facts["model_loads"] == "1"
    assert facts["config_loads"] == "1"

    # Facts are refreshed after each job, so this is the state between jobs.
    wait_until(lambda: _facts(redis_client, stack.worker.pid)["db_checked_out"] == "0", 10,
               "worker pool idle")
    with db_engine.connect() as conn:
        n = conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sluice-worker'"
        )).scalar()
    assert n is not None and 0 < n <= settings.worker_db_pool_size


def _snapshot(db_engine: Engine, fid: str) -> dict[str, Any]:
    with db_engine.connect() as conn:
        file = conn.execute(text(
            "SELECT status, updated_at, attempts, chunk_count, segments_done, segments_total "
            "FROM files WHERE id = :i"), {"i": fid}).one()
        chunks = conn.execute(text(
            "SELECT id, idx, text FROM chunks WHERE file_id = :i ORDER BY idx"), {"i": fid}).all()
        units = conn.execute(text(
            "SELECT id, kind, ordinal, state, attempt, tries, updated_at FROM work_units "
            "WHERE file_id = :i ORDER BY id"), {"i": fid}).all()
    return {"file": tuple(file), "chunks": [tuple(c) for c in chunks],
            "units": [tuple(u) for u in units]}


def test_deliveries_for_a_done_file_change_nothing(
    client: httpx.Client, settings: Settings, redis_client: Redis, db_engine: Engine
) -> None:
    """Redis may deliver a job again (after an outage, a lost ack) or late: a done unit
    cannot be claimed again, whatever attempt the delivery names."""
    text_body = " ".join(f"Sentence {i} about estuaries and tides." for i in range(400))
    fid = upload(client, "long.txt", f"{uuid.uuid4()}\n{text_body}".encode()).json()["id"]
    first = wait_for_status(client, fid)
    assert first["status"] == "done" and first["chunk_count"] > 3
    before = _snapshot(db_engine, fid)
    assert {u[3] for u in before["units"]} == {"done"}
    assert len({c[1] for c in before["chunks"]}) == len(before["chunks"]) == first["chunk_count"]

    queue = make_queue(redis_client, settings)
    replayed = []
    for unit_id, _, _, _, attempt, _, _ in before["units"]:
        for a in (attempt, attempt + 1):  # the original delivery again, and one from nowhere
            job = queue.enqueue_call(UNIT_FUNC, args=(unit_id, a),
                                     job_id=f"{unit_job_id(unit_id, a)}-replay-{uuid.uuid4().hex}")
            replayed.append(job)

    def finished() -> bool:
        return all(j.get_status(refresh=True) == JobStatus.FINISHED for j in replayed)

    wait_until(finished, 60, "the replayed deliveries to run")
    results = [j.return_value() for j in replayed]
    assert all(r is not None and r["outcome"] == "skipped" for r in results)
    assert _snapshot(db_engine, fid) == before  # status, updated_at, chunks, units
    assert client.get(f"/api/v1/files/{fid}").json() == first


def test_transient_failure_is_retried_after_the_delay_and_succeeds(
    client: httpx.Client, user: ApiUser, settings: Settings, redis_client: Redis,
    db_engine: Engine,
) -> None:
    # The bytes are not on the shared volume yet (a slow RWX mount): attempt 1
    # fails, the retry JOB_RETRY_DELAY later finds them.
    key = new_storage_key()
    fid, _ = insert_file(db_engine, user.id, key)
    wake(redis_client)
    body = wait_until(
        lambda: (b := client.get(f"/api/v1/files/{fid}").json())["attempts"] >= 1
        and b["error"] and b, 30, "first attempt to fail")
    assert "retrying" in body["error"] and "not on the server's storage" in body["error"]
    assert "StoredBytesMissing" not in body["error"]  # a sentence, never a class name
    failed_at = datetime.now(UTC)
    path = stored_path(settings.upload_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"the bytes arrived: lagoon survey")
    done = wait_for_status(client, fid, timeout=60)
    assert done["status"] == "done", done
    assert done["attempts"] == 2
    assert done["error"] is None
    started = datetime.fromisoformat(done["started_at"])
    assert started >= failed_at.replace(microsecond=0)  # the second attempt came after
    assert client.post("/api/v1/search", json={"query": "lagoon survey"}).json()["hits"]


def test_permanent_failure_ends_failed_after_max_retries(
    client: httpx.Client, user: ApiUser, settings: Settings, redis_client: Redis,
    db_engine: Engine,
) -> None:
    fid, _ = insert_file(db_engine, user.id, new_storage_key())
    t0 = time.monotonic()
    wake(redis_client)
    body = wait_for_status(client, fid, {"failed"}, timeout=90)
    elapsed = time.monotonic() - t0
    assert body["attempts"] == settings.job_max_retries + 1
    assert "not on the server's storage" in body["error"] and "retrying" not in body["error"]
    assert "StoredBytesMissing" not in body["error"]
    # each retry waited JOB_RETRY_DELAY (scheduled from Postgres: `not_before`)
    assert elapsed >= settings.job_max_retries * settings.job_retry_delay

    # Only its owner may retry it; attempts start over and it fails the same way again.
    other_key = make_user(db_engine, "other").key
    with httpx.Client(base_url=str(client.base_url), timeout=30,
                      headers={"Authorization": f"Bearer {other_key}"}) as other:
        assert other.post(f"/api/v1/files/{fid}/retry").status_code == 404
    r = client.post(f"/api/v1/files/{fid}/retry")
    assert r.status_code == 202
    assert (r.json()["status"], r.json()["attempts"], r.json()["error"]) == ("queued", 0, None)
    again = wait_for_status(client, fid, {"failed"}, timeout=90)
    assert again["attempts"] == settings.job_max_retries + 1
    assert again["error"] == body["error"]


def test_redis_flushed_while_queued_is_reconciled(
    client: httpx.Client, redis_client: Redis, db_engine: Engine
) -> None:
    ids = _upload_many(client, 12)
    with db_engine.connect() as conn:
        queued = conn.execute(
            text("SELECT count(*) FROM files WHERE id = ANY(:ids) AND status = 'queued'"),
            {"ids": [uuid.UUID(i) for i in ids]},
        ).scalar()
    redis_client.flushall()
    assert queued and queued > 0  # there really were queued files when Redis lost them
    for fid in ids:
        assert wait_for_status(client, fid, timeout=120)["status"] == "done"


def test_unit_taken_by_a_worker_that_died_before_starting_it_is_reconciled(
    client: httpx.Client, user: ApiUser, settings: Settings, redis_client: Redis,
    db_engine: Engine,
) -> None:
    """A worker on two queues takes with BLPOP: killed between taking a unit's job and
    starting it, it leaves the job `queued` in no list. The reconciler reads that as a
    lost delivery (not as still waiting) and the unit is dispatched again."""
    key = new_storage_key()
    path = stored_path(settings.upload_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"{uuid.uuid4()} a delivery lost between pop and start".encode())
    fid, unit_id = insert_file(db_engine, user.id, key, unit_state="dispatched", attempt=1)
    queue = make_queue(redis_client, settings)
    # What RQ wrote at enqueue, with the list entry already popped.
    job = queue.create_job(UNIT_FUNC, args=(unit_id, 1), job_id=unit_job_id(unit_id, 1),
                           status=JobStatus.QUEUED)
    job.save()
    assert redis_client.lpos(queue.key, job.id) is None
    assert wait_for_status(client, fid, timeout=60)["status"] == "done"
    with db_engine.connect() as conn:
        attempt = conn.execute(text("SELECT attempt FROM work_units WHERE id = :u"),
                               {"u": unit_id}).scalar_one()
    assert attempt == 2  # dispatched again: the lost delivery was not waited on forever
