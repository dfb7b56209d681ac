"""The interactive queue (Open WebUI's /v1/embeddings and /process jobs) as the real
worker works it: first in first out among themselves, and before any ingest unit
already waiting. The worker is frozen (SIGSTOP) while the jobs are queued, so their
order in Redis is the only thing that decides which runs first.

A frozen worker may be blocked in BLPOP: Redis then hands it the first job pushed at
once, whatever the order. So the first job of each test is the plug that takes that
place, and the order is read from the jobs after it."""

from __future__ import annotations

import itertools
import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.embed_queue import enqueue_embed, new_embed_job_id
from shared.queue import UNIT_FUNC, make_interactive_queue, make_queue
from shared.settings import Settings
from tests.support.helpers import wait_until
from tests.support.stack import Stack

NO_SUCH_UNIT = 2_000_000_000  # a delivery for it is claimed by nobody: "skipped", quickly


@contextmanager
def frozen(stack: Stack) -> Iterator[None]:
    os.kill(stack.worker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(stack.worker.pid, signal.SIGCONT)


def _embed(queue: Queue, text: str) -> str:
    job_id = new_embed_job_id()
    enqueue_embed(queue, job_id, [text], timeout_s=60)
    return job_id


def _finished(redis: Redis, job_ids: list[str]) -> list[Job]:
    """The jobs once all have finished (read, and deleted, by the caller)."""
    def done() -> list[Job] | None:
        jobs = Job.fetch_many(job_ids, connection=redis, serializer=JSONSerializer)
        if all(j is not None and j.get_status(refresh=False) == JobStatus.FINISHED
               for j in jobs):
            return [j for j in jobs if j is not None]
        return None

    jobs: list[Job] = wait_until(done, 60, "the jobs to finish")
    return jobs


def _started(job: Job) -> datetime:
    assert job.started_at is not None and job.ended_at is not None, job.id
    return job.started_at


def test_interactive_jobs_run_first_in_first_out(
    stack: Stack, redis_client: Redis, settings: Settings
) -> None:
    queue = make_interactive_queue(redis_client, settings)
    with frozen(stack):
        ids = [_embed(queue, f"request {i} of a burst of uploads") for i in range(5)]
    jobs = _finished(redis_client, ids)
    try:
        order = [j.id for j in sorted(jobs, key=_started)]
        assert order == ids, "interactive jobs ran out of their arrival order"
        assert all(a.ended_at <= b.started_at  # type: ignore[operator]
                   for a, b in itertools.pairwise(jobs))
    finally:
        for job in jobs:
            job.delete()


def test_an_interactive_job_goes_before_units_already_queued(
    stack: Stack, redis_client: Redis, settings: Settings
) -> None:
    interactive, ingest = make_interactive_queue(redis_client, settings), make_queue(
        redis_client, settings)
    with frozen(stack):
        plug = _embed(interactive, "the plug")
        units = [ingest.enqueue_call(UNIT_FUNC, args=(NO_SUCH_UNIT, 1),
                                     job_id=f"unit-order-test-{uuid.uuid4().hex}").id
                 for _ in range(2)]
        asked = _embed(interactive, "a question asked after the units were queued")
    jobs = _finished(redis_client, [plug, *units, asked])
    try:
        by_id = {j.id: j for j in jobs}
        assert all((by_id[u].return_value() or {}).get("outcome") == "skipped" for u in units)
        first_unit = min(_started(by_id[u]) for u in units)
        assert by_id[asked].ended_at <= first_unit, (  # type: ignore[operator]
            "a unit queued earlier ran before the interactive job")
    finally:
        for job in jobs:
            job.delete()
