"""Parse-only jobs (Open WebUI's document loader): the name, the enqueue, the wait.

Shared because the webui enqueues and waits while the worker runs the function;
the webui never imports `worker` (the function is enqueued by name).
"""

from __future__ import annotations

import time
from typing import Any

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

EXTRACT_FUNC = "worker.extract.extract_stored"
_DONE = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


def extract_job_id(storage_key: str) -> str:
    return f"extract-{storage_key}"


def enqueue_extract(queue: Queue, storage_key: str, filename: str, *, timeout_s: int) -> None:
    """Enqueue at the front: someone is waiting on the answer, unlike a burst of
    ingests behind it, so it goes to the next free worker. No retries: the caller
    (Open WebUI) sees the failure and may try again."""
    queue.enqueue_call(
        EXTRACT_FUNC, args=(storage_key, filename), job_id=extract_job_id(storage_key),
        timeout=timeout_s, result_ttl=60, failure_ttl=3_600, at_front=True,
        description=f"extract {storage_key}",
    )


def poll_extract(queue: Queue, storage_key: str) -> tuple[str, Any] | None:
    """(status, result) once the job is over, None while it is queued or running."""
    try:
        job = Job.fetch(extract_job_id(storage_key), connection=queue.connection,
                        serializer=JSONSerializer)
    except NoSuchJobError:
        return ("missing", None)
    status = job.get_status(refresh=False)
    if status not in _DONE:
        return None
    return (str(status.value), job.return_value() if status == JobStatus.FINISHED else None)


def drop_extract(queue: Queue, storage_key: str) -> None:
    """Forget the job (cancel it if it has not started): its answer is no longer wanted."""
    try:
        job = Job.fetch(extract_job_id(storage_key), connection=queue.connection,
                        serializer=JSONSerializer)
    except NoSuchJobError:
        return
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        return  # a running job is left to finish; its result expires after result_ttl
    if status == JobStatus.QUEUED:
        job.cancel()
    job.delete()


def wait_step(started: float) -> float:
    """Poll quickly at first (small files parse in well under a second), then back off."""
    return 0.05 if time.monotonic() - started < 1 else 0.25
