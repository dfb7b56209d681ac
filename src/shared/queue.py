"""The ingest queue: names, job ids and the one way work units are handed to RQ.

RQ only delivers. A job carries a unit's id and the attempt it was dispatched as
(JSON, never pickled); Postgres says whether that attempt may still run (see
`shared.work`). Job ids name the attempt, so every dispatch is a new, unique job and
a stale one can never be mistaken for it.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.settings import Settings

UNIT_FUNC = "worker.jobs.run_unit"
_PENDING = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def unit_job_id(unit_id: int, attempt: int) -> str:
    return f"unit-{unit_id}-{attempt}"


def make_queue(redis: Redis, settings: Settings) -> Queue:
    return Queue(settings.queue_name, connection=redis, serializer=JSONSerializer)


def fetch_job(queue: Queue, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def job_is_pending(job: Job | None) -> bool:
    return job is not None and job.get_status(refresh=False) in _PENDING


def enqueue_unit(queue: Queue, settings: Settings, unit_id: int, attempt: int) -> None:
    """Deliver a dispatched unit. No RQ retry: retries are scheduled from Postgres.
    JOB_TIMEOUT bounds one unit (a parse, or one segment of SEGMENT_CHUNKS chunks)."""
    queue.enqueue_call(
        UNIT_FUNC,
        args=(unit_id, attempt),
        job_id=unit_job_id(unit_id, attempt),
        timeout=settings.job_timeout,
        result_ttl=300,
        failure_ttl=86_400,
        description=f"work unit {unit_id} attempt {attempt}",
    )
