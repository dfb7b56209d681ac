"""Jobs someone is waiting on (Open WebUI's document loader and embeddings): polled
until over, then dropped.

Both go on the interactive queue (first in first out, taken before any ingest unit:
see shared/queue.py, shared/extract_queue.py and shared/embed_queue.py) and are
answered by the worker fleet while the webui request waits. The poll reads the job's
status field only (an embedding job's hash holds its texts: up to
OPENAI_EMBED_MAX_JOB_KB that a full fetch would move on every poll) and reads the
result once, when there is one.
"""

from __future__ import annotations

import time
from typing import Any

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

DONE = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


def poll_job(queue: Queue, job_id: str) -> tuple[str, Any] | None:
    """(status, result) once the job is over, None while it is queued or running;
    ("missing", None) when it is gone (expired, or deleted)."""
    raw = queue.connection.hget(Job.key_for(job_id), "status")
    if raw is None:
        return ("missing", None)
    status = JobStatus(raw.decode() if isinstance(raw, bytes) else raw)
    if status not in DONE:
        return None
    if status != JobStatus.FINISHED:
        return (str(status.value), None)
    job = Job(job_id, connection=queue.connection, serializer=JSONSerializer)
    return (str(status.value), job.return_value())


def drop_job(queue: Queue, job_id: str) -> None:
    """Forget the job (cancel it if it has not started): its answer is no longer wanted."""
    try:
        job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        return  # a running job is left to finish; its result expires after result_ttl
    if status == JobStatus.QUEUED:
        job.cancel()
    job.delete()


def wait_step(started: float) -> float:
    """Poll quickly at first (small files parse, and a batch of texts encodes, in well
    under a second), then back off."""
    return 0.05 if time.monotonic() - started < 1 else 0.25
