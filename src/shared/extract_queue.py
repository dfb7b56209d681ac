"""Parse-only jobs (Open WebUI's document loader): the name, the job id, the enqueue.

Shared because the webui enqueues and waits while the worker runs the function;
the webui never imports `worker` (the function is enqueued by name). Waiting and
dropping are shared with embedding jobs (shared/interactive_jobs.py).
"""

from __future__ import annotations

from rq import Queue

EXTRACT_FUNC = "worker.extract.extract_stored"


def extract_job_id(storage_key: str) -> str:
    return f"extract-{storage_key}"


def enqueue_extract(queue: Queue, storage_key: str, filename: str, *, timeout_s: int) -> None:
    """Enqueue on the interactive queue (shared/queue.py), in arrival order: someone is
    waiting on the answer, so the next free worker takes it before any ingest unit, and
    the oldest such request first. No retries: the caller (Open WebUI) sees the failure
    and may try again."""
    queue.enqueue_call(
        EXTRACT_FUNC, args=(storage_key, filename), job_id=extract_job_id(storage_key),
        timeout=timeout_s, result_ttl=60, failure_ttl=3_600,
        description=f"extract {storage_key}",
    )
