"""Requests answered by the worker fleet while they wait (`PUT /process`,
`POST /v1/embeddings`): admission per process, the live-worker check, the wait, and
forgetting the job.

The wait polls Redis from a worker thread (shared/interactive_jobs.py) and sleeps on the
event loop between polls, so a waiting request holds no thread, no Redis connection
and no database connection, and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
from rq import Queue
from starlette.concurrency import run_in_threadpool

from shared.interactive_jobs import drop_job, poll_job, wait_step
from shared.metrics_queue import heartbeat_stale_after, live_workers
from shared.settings import Settings
from webui.errors import ApiError

RETRY_AFTER_NO_WORKER_S = 10


class InFlightGate:
    """At most `limit` requests of one kind in flight in this process; beyond that 429
    with Retry-After at once, before any work."""

    def __init__(self, limit: int, busy_detail: str, retry_after_s: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._busy_detail = busy_detail
        self._retry_after = str(retry_after_s)

    def enter(self) -> None:
        # One event loop: no lock needed between the check and the count.
        if self.in_flight >= self.limit:
            raise ApiError(429, "busy", self._busy_detail, {"Retry-After": self._retry_after})
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


class LiveWorkerCheck:
    """503 + Retry-After at once when no worker with a recent heartbeat listens on the
    queue: nothing would answer, and waiting out the full timeout helps no one."""

    def __init__(self, queue: Queue, settings: Settings, detail: str) -> None:
        self.queue = queue
        self._detail = detail
        self._stale_after_s = heartbeat_stale_after(
            settings.worker_maintenance_interval, settings.job_monitoring_interval,
            settings.worker_heartbeat_grace)

    def _any_alive(self) -> bool:
        return bool(live_workers(self.queue.connection, self.queue, self._stale_after_s))

    async def require(self) -> None:
        if not await run_in_threadpool(self._any_alive):
            raise ApiError(503, "no_worker", self._detail,
                           {"Retry-After": str(RETRY_AFTER_NO_WORKER_S)})


async def wait_for_job(queue: Queue, job_id: str, timeout_s: float) -> tuple[str, Any]:
    """(status, result) of the job once it is over, or ("timeout", None)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        outcome = await run_in_threadpool(poll_job, queue, job_id)
        if outcome is not None:
            return outcome
        await asyncio.sleep(wait_step(started))
    return ("timeout", None)


async def forget_job(queue: Queue, job_id: str) -> None:
    """Drop the job (cancelled if still queued), even while the request is being
    cancelled: a queued job nobody waits for would still cost a worker its time."""
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(drop_job, queue, job_id)
