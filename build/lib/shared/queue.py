"""The ingest queue: names, job ids and the one way files are enqueued.

Jobs carry only the file id (JSON-serialised, never pickled), are enqueued
after the file row is committed, and use an id derived from the file id, so a
second enqueue of a file whose job is still pending is a no-op.
"""

from __future__ import annotations

import uuid

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.settings import Settings

INGEST_FUNC = "worker.jobs.ingest_file"
_PENDING = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def job_id_for(file_id: uuid.UUID | str) -> str:
    return f"ingest-{file_id}"


def make_queue(redis: Redis, settings: Settings) -> Queue:
    return Queue(settings.queue_name, connection=redis, serializer=JSONSerializer)


def fetch_job(queue: Queue, file_id: uuid.UUID | str) -> Job | None:
    try:
        return Job.fetch(job_id_for(file_id), connection=queue.connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def job_is_pending(job: Job | None) -> bool:
    return job is not None and job.get_status(refresh=False) in _PENDING


def enqueue_ingest(queue: Queue, settings: Settings, file_id: uuid.UUID | str) -> bool:
    """Enqueue the ingest job for a committed file. False if one is already pending."""
    existing = fetch_job(queue, file_id)
    if job_is_pending(existing):
        return False
    if existing is not None:
        existing.delete()  # a finished or failed run of an earlier attempt
    retry = (
        Retry(max=settings.job_max_retries, interval=settings.job_retry_delay)
        if settings.job_max_retries > 0
        else None
    )
    try:
        queue.enqueue_call(
            INGEST_FUNC,
            args=(str(file_id),),
            job_id=job_id_for(file_id),
            timeout=settings.job_timeout,
            retry=retry,
            result_ttl=300,
            failure_ttl=7 * 86_400,
            description=f"ingest file {file_id}",
            unique=True,
        )
    except DuplicateJobError:
        return False
    return True
