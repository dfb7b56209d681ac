"""Postgres is the source of truth; this puts Redis back in line with it.

Redis may lose jobs (restart without AOF, failover, FLUSHALL) and a worker may
die mid-job. Every RECONCILE_INTERVAL one process (under a Redis lock) looks
for files that should have a pending job but do not:

* `queued` for longer than RECONCILE_QUEUED_GRACE with no pending job → enqueue;
* `processing` for longer than JOB_TIMEOUT (+ margin) with no pending job →
  back to `queued` and enqueue, or `failed` once JOB_MAX_RETRIES are spent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.models import File, FileStatus
from shared.queue import enqueue_ingest, fetch_job, job_is_pending
from shared.settings import Settings
from worker.sweeper import sweep_if_due

log = logging.getLogger("sluice.reconciler")
LOCK_NAME = "sluice:reconciler:lock"
_BATCH = 500


@dataclass
class ReconcileResult:
    requeued: int = 0
    failed: int = 0


def reconcile_once(
    session_factory: sessionmaker[Session], queue: Queue, settings: Settings
) -> ReconcileResult:
    """One pass. Safe to run concurrently with workers; run one at a time (see `run_locked`)."""
    now = datetime.now(UTC)
    queued_before = now - timedelta(seconds=settings.reconcile_queued_grace)
    processing_before = now - timedelta(seconds=settings.job_timeout + 60)
    result = ReconcileResult()
    with session_factory() as session:
        candidates = session.scalars(
            select(File)
            .where(
                or_(
                    (File.status == FileStatus.queued.value) & (File.updated_at < queued_before),
                    (File.status == FileStatus.processing.value)
                    & (File.updated_at < processing_before),
                )
            )
            .order_by(File.updated_at)
            .limit(_BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for file in candidates:
            if job_is_pending(fetch_job(queue, file.id)):
                continue
            if file.attempts > settings.job_max_retries:
                file.status = FileStatus.failed.value
                file.error = (
                    f"processing was interrupted {file.attempts} times (worker lost or timed "
                    f"out); last error: {file.error or 'none recorded'}"
                )
                file.finished_at = now
                result.failed += 1
            else:
                file.status = FileStatus.queued.value
                file.stage = None
                file.queued_at = now
                result.requeued += 1
        # Commit before enqueueing: a worker must never see an uncommitted state.
        session.commit()
        for file in candidates:
            if file.status == FileStatus.queued.value:
                enqueue_ingest(queue, settings, file.id)
    sweep_if_due(session_factory, settings)  # leftover upload bytes: see worker.sweeper
    if result.requeued or result.failed:
        log.warning(
            "reconciler.fixed requeued=%d failed=%d", result.requeued, result.failed
        )
    return result


def run_locked(
    redis: Redis, session_factory: sessionmaker[Session], queue: Queue, settings: Settings
) -> ReconcileResult | None:
    """Run one pass if no other process holds the reconciler lock."""
    lock = redis.lock(LOCK_NAME, timeout=max(settings.reconcile_interval * 2, 60))
    if not lock.acquire(blocking=False):
        return None
    try:
        return reconcile_once(session_factory, queue, settings)
    finally:
        try:
            lock.release()
        except RedisError:
            pass  # expired or Redis gone: the lock times out by itself


class ReconcilerThread(threading.Thread):
    """Runs `run_locked` every RECONCILE_INTERVAL until stopped; never dies on errors."""

    def __init__(
        self, redis: Redis, session_factory: sessionmaker[Session], queue: Queue,
        settings: Settings, on_result: Callable[[ReconcileResult], None] | None = None,
    ):
        super().__init__(name="sluice-reconciler", daemon=True)
        self._args = (redis, session_factory, queue, settings)
        self._on_result = on_result  # e.g. the worker's metrics
        self._interval = settings.reconcile_interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            try:
                result = run_locked(*self._args)
                if result is not None and self._on_result is not None:
                    self._on_result(result)
            except (RedisError, SQLAlchemyError) as err:
                log.warning("reconciler.skipped error=%s", err)
            except Exception:
                log.exception("reconciler.error")

    def stop(self) -> None:
        self._stop_event.set()
