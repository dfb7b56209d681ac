"""`/metrics` of the real webui and worker processes, before, during and after uploads."""

from __future__ import annotations

import uuid

import httpx
from redis import Redis
from rq.suspension import resume, suspend
from sqlalchemy import Engine

from shared.settings import Settings
from shared.storage import new_storage_key
from shared.work import wake
from tests.support.helpers import upload, wait_for_status, wait_until
from tests.support.metrics import Samples, scrape, value
from tests.support.samples import make_pdf
from tests.support.stack import ApiUser, Stack, insert_file

SHARED = [
    "sluice_db_pool_size", "sluice_db_pool_max", "sluice_db_pool_checked_out",
    "sluice_db_pool_overflow", "sluice_db_pool_wait_seconds_count", "sluice_db_pool_timeouts_total",
    "sluice_redis_pool_in_use", "sluice_redis_pool_max", "sluice_redis_pool_connections",
    "sluice_redis_errors_total", "sluice_queue_depth", "sluice_queue_registry_jobs",
    "sluice_queue_oldest_job_age_seconds", "sluice_queue_workers", "sluice_queue_scheduler_running",
]
WEBUI_ONLY = ["http_requests_total", "http_request_duration_seconds_count",
              "sluice_upload_admission_waiting"]
WORKER_ONLY = [
    "sluice_jobs_total", "sluice_job_stage_duration_seconds_count", "sluice_queue_wait_seconds_count",
    "sluice_model_load_seconds", "sluice_worker_busy_seconds_total", "sluice_worker_busy",
    "sluice_model_loads_total", "sluice_config_loads_total", "sluice_reconciler_requeued_total",
    "sluice_reconciler_failed_total", "sluice_work_backlog", "sluice_work_units",
    "sluice_openai_embed_jobs_total", "sluice_openai_embed_texts_total",
    "sluice_openai_embed_queue_wait_seconds_count",
    "sluice_embed_padding_ratio_count", "sluice_embed_tokens_per_second_count",
    "sluice_embed_call_units_count", "sluice_embed_tokens_total",
]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def test_each_metric_is_exposed(stack: Stack, settings: Settings) -> None:
    web, wk = scrape(stack.webui_metrics_url), scrape(stack.worker_metrics_url)
    assert set(SHARED + WEBUI_ONLY) <= names(web), set(SHARED + WEBUI_ONLY) - names(web)
    assert set(SHARED + WORKER_ONLY) <= names(wk), set(SHARED + WORKER_ONLY) - names(wk)
    assert value(web, "sluice_db_pool_size") == settings.database_pool_size
    assert value(web, "sluice_upload_admission_waiting") == 0  # nothing uploading now
    webui_limit = settings.database_pool_size + settings.database_pool_max_overflow
    assert value(web, "sluice_db_pool_max") == webui_limit
    assert value(wk, "sluice_db_pool_max") == settings.worker_db_pool_size
    assert value(web, "sluice_redis_pool_max", pool="sync") == settings.redis_max_connections
    assert value(wk, "sluice_redis_pool_max", pool="sync") == settings.redis_max_connections
    for registry in ("started", "failed", "deferred", "scheduled"):
        assert value(web, "sluice_queue_registry_jobs", queue="ingest", registry=registry) >= 0
    assert value(wk, "sluice_model_loads_total") == 1
    assert value(wk, "sluice_config_loads_total") == 1
    assert value(wk, "sluice_model_load_seconds") > 0
    assert value(web, "sluice_queue_workers", queue="ingest") >= 1
    # The interactive queue (Open WebUI's jobs) is reported beside it, under its own label.
    assert value(web, "sluice_queue_workers", queue="ingest-interactive") >= 1
    assert value(wk, "sluice_queue_depth", queue="ingest-interactive") >= 0
    # Retries are scheduled in Postgres: the workers run no RQ scheduler.
    assert value(web, "sluice_queue_scheduler_running", queue="ingest") == 0


def test_queue_depth_rises_and_drains_and_pools_return_to_idle(
    stack: Stack, client: httpx.Client, redis_client: Redis
) -> None:
    before = scrape(stack.worker_metrics_url)
    # Suspended workers take no new job (one blocked in BLMOVE may still take the first).
    suspend(redis_client)
    try:
        ids = []
        for i in range(4):
            r = upload(client, f"m{i}.txt", f"metrics {i} {uuid.uuid4()} estuary tides".encode())
            assert r.status_code == 202
            ids.append(r.json()["id"])
        during = wait_until(
            lambda: (s := scrape(stack.webui_metrics_url))
            and value(s, "sluice_queue_depth", queue="ingest") >= 1 and s, 15, "queue depth >= 1")
        assert value(during, "sluice_queue_oldest_job_age_seconds", queue="ingest") >= 0
        # RQ holds a unit or so per worker; the rest waits in Postgres, where the
        # worker's /metrics (and the autoscaler) read it.
        backlog = wait_until(
            lambda: (s := scrape(stack.worker_metrics_url))
            and value(s, "sluice_work_backlog", queue="ingest") >= 4 and s, 15, "backlog >= 4")
        assert value(backlog, "sluice_work_units", queue="ingest", state="pending") >= 3
        assert value(during, "http_requests_total", handler="/api/v1/files", method="POST",
                     status="2xx") >= 4
    finally:
        resume(redis_client)
    for fid in ids:
        assert wait_for_status(client, fid)["status"] == "done"

    after_web = wait_until(
        lambda: (s := scrape(stack.webui_metrics_url))
        and value(s, "sluice_queue_depth", queue="ingest") == 0 and s, 30, "queue drained")
    assert value(after_web, "sluice_queue_oldest_job_age_seconds", queue="ingest") == 0
    assert value(after_web, "sluice_db_pool_checked_out") == 0
    assert value(after_web, "sluice_db_pool_wait_seconds_count") > 0
    for pool in ("sync", "async"):
        in_use = value(after_web, "sluice_redis_pool_in_use", pool=pool)
        assert 0 <= in_use <= value(after_web, "sluice_redis_pool_max", pool=pool)
    # The worker's reconciler checks a connection out every second: wait for an idle moment.
    after = wait_until(
        lambda: (s := scrape(stack.worker_metrics_url))
        and value(s, "sluice_db_pool_checked_out") == 0 and s, 15, "worker pool idle")
    assert value(after, "sluice_jobs_total", outcome="done") >= value(before, "sluice_jobs_total",
                                                                      outcome="done") + 4
    key = "sluice_job_stage_duration_seconds_count"
    for stage in ("parse", "chunk", "total"):
        assert value(after, key, stage=stage) >= value(before, key, stage=stage) + 4, stage
    # Segments ready together are embedded in one call (EMBED_FILL_CHUNKS): per call.
    calls = value(after, "sluice_embed_call_units_count") - value(
        before, "sluice_embed_call_units_count")
    assert calls >= 1
    for stage in ("embed", "store"):
        assert value(after, key, stage=stage) - value(before, key, stage=stage) == calls, stage
    assert value(after, "sluice_embed_call_units_sum") >= value(
        before, "sluice_embed_call_units_sum") + 4
    assert value(after, "sluice_embed_padding_ratio_count") - value(
        before, "sluice_embed_padding_ratio_count") == calls
    real = value(after, "sluice_embed_tokens_total", kind="real")
    assert real > value(before, "sluice_embed_tokens_total", kind="real")
    assert value(after, "sluice_embed_tokens_total", kind="padded") >= real
    for grew in ("sluice_queue_wait_seconds_count", "sluice_worker_busy_seconds_total",
                 "sluice_db_pool_wait_seconds_count"):
        assert value(after, grew) > value(before, grew), grew
    assert value(after, "sluice_queue_wait_seconds_count") >= value(
        before, "sluice_queue_wait_seconds_count") + 4
    assert value(after, "sluice_model_loads_total") == 1  # still loaded once
    assert value(after, "sluice_redis_errors_total", kind="timeout") == 0


def test_rejected_retried_and_failed_outcomes_are_counted(
    stack: Stack, client: httpx.Client, user: ApiUser, settings: Settings, redis_client: Redis,
    db_engine: Engine,
) -> None:
    before = scrape(stack.worker_metrics_url)
    # A PDF with a blank page passes the upload's type check; the worker finds no text.
    bad = upload(client, "blank.pdf", make_pdf([[]]), "application/pdf")
    assert bad.status_code == 202, bad.text
    assert wait_for_status(client, bad.json()["id"])["status"] == "failed"
    # A row whose bytes never arrive: every attempt fails, is retried, the last one fails.
    fid, _ = insert_file(db_engine, user.id, new_storage_key())
    wake(redis_client)
    assert wait_for_status(client, fid, {"failed"})["attempts"] == settings.job_max_retries + 1

    def grew(outcome: str, by: int) -> bool:
        now = scrape(stack.worker_metrics_url)
        return (value(now, "sluice_jobs_total", outcome=outcome)
                >= value(before, "sluice_jobs_total", outcome=outcome) + by)

    wait_until(lambda: grew("rejected", 1), 10, "rejected counted")
    wait_until(lambda: grew("retried", settings.job_max_retries), 10, "retries counted")
    wait_until(lambda: grew("failed", 1), 10, "final failure counted")


def test_worker_healthz_reports_a_fresh_heartbeat(stack: Stack) -> None:
    url = stack.worker_metrics_url.rsplit("/", 1)[0] + "/healthz"
    r = httpx.get(url, timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert 0 <= body["last_beat_age_s"] <= body["max_age_s"]
