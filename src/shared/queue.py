"""The queues: names, job ids and the one way work units are handed to RQ.

Two RQ queues, both worked by every worker, interactive first:
* `<QUEUE_NAME>-interactive`: jobs a person waits on (Open WebUI's `/v1/embeddings`
  and `PUT /process`), first in first out. RQ takes from a worker's queues in order,
  so the next free worker always takes the oldest interactive job before any unit.
* `<QUEUE_NAME>`: work units, kept shallow by the dispatcher (the backlog waits in
  Postgres).

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
INTERACTIVE_SUFFIX = "-interactive"


def unit_job_id(unit_id: int, attempt: int) -> str:
    return f"unit-{unit_id}-{attempt}"


def make_queue(redis: Redis, settings: Settings) -> Queue:
    """The work units' queue."""
    return Queue(settings.queue_name, connection=redis, serializer=JSONSerializer)


def interactive_queue_name(queue_name: str) -> str:
    """Derived, not a setting of its own: a webui and a worker that agree on QUEUE_NAME
    always agree on this one too."""
    return f"{queue_name}{INTERACTIVE_SUFFIX}"


def make_interactive_queue(redis: Redis, settings: Settings) -> Queue:
    """Jobs someone is waiting on (see the module's docstring)."""
    return Queue(interactive_queue_name(settings.queue_name), connection=redis,
                 serializer=JSONSerializer)


def worker_queues(redis: Redis, settings: Settings) -> list[Queue]:
    """What a worker listens to, in the order it takes from them."""
    return [make_interactive_queue(redis, settings), make_queue(redis, settings)]


def fetch_job(queue: Queue, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def job_is_pending(queue: Queue, job: Job | None) -> bool:
    """Whether the job may still run. A `queued` job must also still be in the queue's
    list: a worker on several queues takes with BLPOP (RQ's BLMOVE, which keeps a taken
    job recoverable, is for one queue only), so a worker killed between taking a job and
    starting it leaves the job `queued` in no list, never to run. Reading that as lost
    is safe even in the instant a live worker holds it: the unit is fenced by attempt."""
    if job is None:
        return False
    status = job.get_status(refresh=False)
    if status == JobStatus.QUEUED:
        return queue.connection.lpos(queue.key, job.id) is not None
    return status in _PENDING


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
