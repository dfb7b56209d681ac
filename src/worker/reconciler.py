"""Postgres is the source of truth; this finds work that nobody is doing and offers it again.

Every RECONCILE_INTERVAL one process at a time (a transaction-scoped Postgres advisory
lock: a process killed mid-pass releases it with its connection, so there is no lock
to wait out) looks for:

* `running` units whose lease ran out (their worker died or hung) → back to the
  backlog, or the file `failed` once JOB_MAX_RETRIES are spent;
* `dispatched` units whose RQ job is gone (Redis lost it, or a worker died
  while taking it) → back to the backlog;
* `queued`/`processing` files with no live unit at all (files from before units,
  or a write that never happened) → a new parse unit.

Then it wakes the dispatcher; the worker's thread also takes the background re-embed's
step (`reembed_step`). Retries need no scheduler: a unit waiting for its
retry is `pending` with `not_before` in the future, and the dispatcher skips it
until then.
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
from sqlalchemy import exists, func, null, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.models import File, FileStatus, UnitState, WorkUnit
from shared.queue import fetch_job, job_is_pending, unit_job_id
from shared.reembed import advance
from shared.settings import Settings
from shared.work import LIVE_STATES, clear_work_statements, fail_unit, new_parse_unit, wake
from worker.errors import interrupted_reason
from worker.sweeper import sweep_if_due

log = logging.getLogger("sluice.reconciler")
RECONCILE_LOCK = 0x51CE_12EC
_BATCH = 500


@dataclass
class ReconcileResult:
    requeued: int = 0
    failed: int = 0


def reconcile_once(
    session_factory: sessionmaker[Session], queue: Queue, settings: Settings
) -> ReconcileResult | None:
    """One pass; None if another process is running one."""
    result = ReconcileResult()
    now = datetime.now(UTC)
    with session_factory() as session:
        if not session.scalar(select(func.pg_try_advisory_xact_lock(RECONCILE_LOCK))):
            return None
        _expired_leases(session, settings, result)
        _lost_deliveries(session, queue, now - timedelta(seconds=settings.reconcile_queued_grace),
                         result)
        _files_without_work(session, now - timedelta(seconds=settings.reconcile_queued_grace),
                            result)
        session.commit()
    sweep_if_due(session_factory, settings)  # leftover upload bytes: see worker.sweeper
    if result.requeued or result.failed:
        log.warning("reconciler.fixed requeued=%d failed=%d", result.requeued, result.failed)
        try:
            wake(queue.connection)
        except RedisError:
            pass  # the dispatcher runs on a timer too
    return result


def _expired_leases(session: Session, settings: Settings, result: ReconcileResult) -> None:
    units = session.scalars(
        select(WorkUnit)
        .where(WorkUnit.state == UnitState.running.value, WorkUnit.lease_expires_at < func.now())
        .order_by(WorkUnit.lease_expires_at).limit(_BATCH)
        .with_for_update(skip_locked=True)  # a unit whose worker is writing it is not dead
    ).all()
    for unit in units:
        log.warning("unit.lease_expired unit=%s file_id=%s attempt=%s worker=%s try=%d",
                    unit.id, unit.file_id, unit.attempt, unit.worker, unit.tries)
        if unit.tries > settings.job_max_retries:
            # Never wait for a file's lock while holding a unit's (a delete locks the file
            # first): a busy or deleted file is left to the next pass.
            file = session.scalar(select(File).where(File.id == unit.file_id)
                                  .with_for_update(skip_locked=True))
            if file is not None:
                fail_unit(session, unit, file, interrupted_reason(unit.tries))
                result.failed += 1
        else:
            unit.state, unit.lease_expires_at = UnitState.pending.value, None
            unit.error = "interrupted: the worker stopped renewing its lease"
            unit.not_before = func.now()
            result.requeued += 1


def _lost_deliveries(
    session: Session, queue: Queue, dispatched_before: datetime, result: ReconcileResult
) -> None:
    units = session.scalars(
        select(WorkUnit)
        .where(WorkUnit.state == UnitState.dispatched.value,
               WorkUnit.dispatched_at < dispatched_before)
        .limit(_BATCH).with_for_update(skip_locked=True)
    ).all()
    for unit in units:
        try:
            pending = job_is_pending(queue, fetch_job(queue, unit_job_id(unit.id, unit.attempt)))
        except RedisError as err:
            log.warning("reconciler.redis_unavailable error=%s", err)
            return  # cannot tell lost from waiting: next pass
        if not pending:
            unit.state, unit.dispatched_at = UnitState.pending.value, null()
            result.requeued += 1


def _files_without_work(session: Session, before: datetime, result: ReconcileResult) -> None:
    files = session.scalars(
        select(File)
        .where(File.status.in_((FileStatus.queued.value, FileStatus.processing.value)),
               File.updated_at < before,
               ~exists().where(WorkUnit.file_id == File.id, WorkUnit.state.in_(LIVE_STATES)))
        .limit(_BATCH).with_for_update(skip_locked=True)
    ).all()
    for file in files:
        for stmt in clear_work_statements(file.id):
            session.execute(stmt)
        session.add(new_parse_unit(file.id, file.owner_id))
        file.status, file.stage, file.progress = FileStatus.queued.value, None, 0.0
        file.segments_total = file.segments_done = file.chunk_count = 0
        result.requeued += 1


def reembed_step(session_factory: sessionmaker[Session], settings: Settings) -> None:
    """The background re-embed's step (shared/reembed.py), after each pass: with
    REEMBED_AUTO, start one when this worker's backend is in another space than the
    active one; plan its units; switch when every chunk is done."""
    backend = settings.embedding_backend if settings.reembed_auto else None
    with session_factory() as session:
        advance(session, worker_backend=backend, segment_chunks=settings.segment_chunks)
        session.commit()


class ReconcilerThread(threading.Thread):
    """Runs `reconcile_once` every RECONCILE_INTERVAL until stopped; never dies on errors."""

    def __init__(
        self, redis: Redis, session_factory: sessionmaker[Session], queue: Queue,
        settings: Settings, on_result: Callable[[ReconcileResult], None] | None = None,
    ):
        super().__init__(name="sluice-reconciler", daemon=True)
        self._args = (session_factory, queue, settings)
        self._on_result = on_result  # e.g. the worker's metrics
        self._interval = settings.reconcile_interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            try:
                result = reconcile_once(*self._args)
                if result is not None and self._on_result is not None:
                    self._on_result(result)
                reembed_step(self._args[0], self._args[2])
            except (RedisError, SQLAlchemyError) as err:
                log.warning("reconciler.skipped error=%s", err)
            except Exception:
                log.exception("reconciler.error")

    def stop(self) -> None:
        self._stop_event.set()
