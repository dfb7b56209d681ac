"""The real worker process: loads once, leaks nothing, retries, stays idempotent."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import httpx
from redis import Redis
from sqlalchemy import Engine, text

from shared.models import File
from shared.queue import enqueue_ingest, make_queue
from shared.settings import Settings
from shared.storage import new_storage_key, stored_path
from tests.support.helpers import upload, wait_for_status, wait_until
from tests.support.stack import ApiUser, Stack, make_user
from worker.main import FACTS_KEY


def _facts(redis: Redis, pid: int) -> dict[str, str]:
    for key in redis.keys(FACTS_KEY.format(name="*")):
        facts = {k.decode(): v.decode() for k, v in redis.hgetall(key).items()}
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
    assert int(facts["jobs_done"]) >= 50
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


def test_same_job_twice_gives_the_same_chunks(
    client: httpx.Client, settings: Settings, redis_client: Redis, db_engine: Engine
) -> None:
    text_body = " ".join(f"Sentence {i} about estuaries and tides." for i in range(400))
    fid = upload(client, "long.txt", f"{uuid.uuid4()}\n{text_body}".encode()).json()["id"]
    first = wait_for_status(client, fid)
    assert first["chunk_count"] > 3

    def chunks() -> list[tuple[int, str]]:
        with db_engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT idx, text FROM chunks WHERE file_id = :i ORDER BY idx"), {"i": fid})]

    before = chunks()
    assert enqueue_ingest(make_queue(redis_client, settings), settings, fid)
    wait_until(lambda: client.get(f"/api/v1/files/{fid}").json()["attempts"] == 2, 60, "rerun")
    after = wait_for_status(client, fid)
    assert after["status"] == "done"
    assert chunks() == before
    assert len({i for i, _ in before}) == len(before) == after["chunk_count"]


def test_second_enqueue_of_a_pending_file_is_a_noop(
    settings: Settings, redis_client: Redis, db_engine: Engine, user: ApiUser
) -> None:
    queue = make_queue(redis_client, settings)
    fid = _insert_file(db_engine, user, storage_key=new_storage_key())  # no bytes: will fail
    assert enqueue_ingest(queue, settings, fid) is True
    assert enqueue_ingest(queue, settings, fid) is False


def _insert_file(db_engine: Engine, user: ApiUser, storage_key: str) -> str:
    fid = uuid.uuid4()
    with db_engine.begin() as conn:
        conn.execute(
            File.__table__.insert().values(
                id=fid, owner_id=uuid.UUID(user.id), filename="late.txt", size_bytes=10,
                sha256=uuid.uuid4().hex * 2, storage_key=storage_key, status="queued",
            )
        )
    return str(fid)


def test_transient_failure_is_retried_after_the_delay_and_succeeds(
    client: httpx.Client, user: ApiUser, settings: Settings, redis_client: Redis,
    db_engine: Engine,
) -> None:
    # The bytes are not on the shared volume yet (a slow RWX mount): attempt 1
    # fails, the retry JOB_RETRY_DELAY later finds them.
    key = new_storage_key()
    fid = _insert_file(db_engine, user, key)
    enqueue_ingest(make_queue(redis_client, settings), settings, fid)
    body = wait_until(
        lambda: (b := client.get(f"/api/v1/files/{fid}").json())["attempts"] >= 1
        and b["error"] and b, 30, "first attempt to fail")
    assert "retrying" in body["error"] and "StoredBytesMissing" in body["error"]
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
    fid = _insert_file(db_engine, user, new_storage_key())
    t0 = time.monotonic()
    enqueue_ingest(make_queue(redis_client, settings), settings, fid)
    body = wait_for_status(client, fid, {"failed"}, timeout=90)
    elapsed = time.monotonic() - t0
    assert body["attempts"] == settings.job_max_retries + 1
    assert "StoredBytesMissing" in body["error"] and "retrying" not in body["error"]
    # each retry waited JOB_RETRY_DELAY (RQ schedules in whole seconds: up to 1 s less)
    assert elapsed >= settings.job_max_retries * (settings.job_retry_delay - 1)

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
