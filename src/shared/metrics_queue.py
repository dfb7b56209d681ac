"""Queue state for `/metrics` (and `sluice doctor`), read from Redis at scrape time.

Per queue (the interactive queue and the ingest queue, each as its own `queue`
label): one pipelined round trip for the counts plus at most two small reads, bounded
work however long the queue is. Registry counts are ZCARDs, never RQ's
`registry.count` (which cleans up as a side effect).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.utils import utcparse
from rq.worker_registration import WORKERS_BY_QUEUE_KEY
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shared.dispatch import UNITS_BY_STATE_SQL, WAITING_SQL
from shared.metrics import ResourceMetrics, gauge
from shared.settings import Settings

log = logging.getLogger("sluice.metrics")
REGISTRIES = ("started", "failed", "deferred", "scheduled")


@dataclass
class QueueSnapshot:
    queue: str
    depth: int
    registries: dict[str, int]
    oldest_age_s: float  # 0 when the queue is empty
    workers: int  # registered on this queue with a recent heartbeat
    scheduler_running: bool
    worker_names: list[str] = field(default_factory=list)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def read_queue(redis: Redis, queue: Queue, stale_after_s: float) -> QueueSnapshot:
    """Depth, registry counts, oldest job age, live workers and scheduler of `queue`."""
    keys = {
        "started": queue.started_job_registry.key,
        "failed": queue.failed_job_registry.key,
        "deferred": queue.deferred_job_registry.key,
        "scheduled": queue.scheduled_job_registry.key,
    }
    with redis.pipeline(transaction=False) as pipe:
        pipe.llen(queue.key)
        for name in REGISTRIES:
            pipe.zcard(keys[name])
        pipe.lindex(queue.key, 0)  # RQ pushes right and pops left: the head is the oldest
        pipe.smembers(WORKERS_BY_QUEUE_KEY % queue.name)
        pipe.exists(RQScheduler.get_locking_key(queue.name))
        depth, *counts, head, members, scheduler = pipe.execute()
    now = datetime.now(UTC)
    oldest = 0.0
    if head:
        enqueued = redis.hget(Job.key_for(_text(head)), "enqueued_at")
        if enqueued:
            oldest = max((now - utcparse(_text(enqueued))).total_seconds(), 0.0)
    alive = _alive(redis, members, now, stale_after_s)
    return QueueSnapshot(
        queue=queue.name, depth=int(depth), registries=dict(zip(REGISTRIES, map(int, counts), strict=True)),
        oldest_age_s=oldest, workers=len(alive), scheduler_running=bool(scheduler), worker_names=alive,
    )


def live_workers(redis: Redis, queue: Queue, stale_after_s: float) -> list[str]:
    """Names of the workers on `queue` with a recent heartbeat (what `sluice_queue_workers`
    counts): a worker killed without deregistering drops out once its beat is stale."""
    members = redis.smembers(WORKERS_BY_QUEUE_KEY % queue.name)
    return _alive(redis, members, datetime.now(UTC), stale_after_s)


def _alive(redis: Redis, members: Iterable[bytes | str], now: datetime, stale_after_s: float
           ) -> list[str]:
    names = sorted(_text(m) for m in members)
    alive: list[str] = []
    if names:
        with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(name, "last_heartbeat")
            beats = pipe.execute()
        for name, beat in zip(names, beats, strict=True):
            if beat and (now - utcparse(_text(beat))).total_seconds() <= stale_after_s:
                alive.append(name.removeprefix("rq:worker:"))
    return alive


def heartbeat_stale_after(maintenance_s: int, monitoring_s: int, grace_s: int) -> float:
    """A worker beats at least every max(maintenance, monitoring) interval; allow the grace on top."""
    return float(max(maintenance_s, monitoring_s) + grace_s)


class QueueCollector(Collector):
    """`sluice_queue_*` gauges, one sample per queue (label `queue`). On a Redis error it
    reports nothing (the error is counted)."""

    def __init__(self, redis: Redis, queues: Sequence[Queue], stale_after_s: float):
        self._redis, self._queues, self._stale = redis, list(queues), stale_after_s

    def collect(self) -> Iterable[Metric]:
        try:
            snaps = [read_queue(self._redis, q, self._stale) for q in self._queues]
        except (RedisError, ValueError) as err:
            log.warning("metrics.queue_unavailable error=%s", err)
            return
        families = {
            "depth": GaugeMetricFamily("sluice_queue_depth", "Jobs waiting in the queue.",
                                       labels=["queue"]),
            "oldest": GaugeMetricFamily("sluice_queue_oldest_job_age_seconds",
                                        "Age of the oldest waiting job (0 when the queue is "
                                        "empty).", labels=["queue"]),
            "workers": GaugeMetricFamily("sluice_queue_workers", "Workers listening on the "
                                         "queue with a recent heartbeat.", labels=["queue"]),
            "scheduler": GaugeMetricFamily("sluice_queue_scheduler_running", "1 if an RQ "
                                           "scheduler holds the queue's lock (retries need it).",
                                           labels=["queue"]),
        }
        registry = GaugeMetricFamily(
            "sluice_queue_registry_jobs", "Jobs in RQ's registries of the queue.",
            labels=["queue", "registry"],
        )
        for snap in snaps:
            families["depth"].add_metric([snap.queue], snap.depth)
            families["oldest"].add_metric([snap.queue], snap.oldest_age_s)
            families["workers"].add_metric([snap.queue], snap.workers)
            families["scheduler"].add_metric([snap.queue], int(snap.scheduler_running))
            for name, count in snap.registries.items():
                registry.add_metric([snap.queue, name], count)
        yield families["depth"]
        yield registry
        yield from (families[k] for k in ("oldest", "workers", "scheduler"))


class BacklogCollector(Collector):
    """`sluice_work_backlog` and `sluice_work_units`, read from Postgres at scrape time.

    RQ's list holds only a few units per worker (the dispatcher keeps it shallow); the
    backlog waits in Postgres, so this is what the autoscaler and the backlog alert read.
    Needs a sync engine (the worker's); on a database error it reports nothing.
    """

    def __init__(self, engine: Engine, queue_name: str):
        self._engine, self._queue = engine, queue_name

    def collect(self) -> Iterable[Metric]:
        try:
            with self._engine.connect() as conn:
                waiting = int(conn.execute(WAITING_SQL).scalar_one())
                states: dict[str, int] = dict(conn.execute(UNITS_BY_STATE_SQL).tuples().all())
        except SQLAlchemyError as err:
            log.warning("metrics.backlog_unavailable error=%s", err)
            return
        q = {"queue": self._queue}
        yield gauge("sluice_work_backlog", "Work units waiting for a worker now (in the Postgres "
                    "backlog and due, or handed to RQ and not yet taken).", waiting, q)
        units = GaugeMetricFamily("sluice_work_units", "Unfinished work units by state.",
                                  labels=["queue", "state"])
        for state in ("pending", "dispatched", "running"):
            units.add_metric([self._queue, state], int(states.get(state, 0)))
        yield units


def process_metrics(
    registry: CollectorRegistry, *, engine: Engine, db_limit: int, redis: Redis,
    queues: Sequence[Queue], settings: Settings, aredis: AsyncRedis | None = None,
    backlog: bool = False,
) -> ResourceMetrics:
    """DB pool, Redis pool(s) and the `queues`' metrics of one process (webui or worker);
    with `backlog` (a sync engine: the worker) also the Postgres backlog of work units
    (labelled with QUEUE_NAME, as KEDA and the alerts read it)."""
    extra: list[Collector] = [QueueCollector(redis, queues, heartbeat_stale_after(
        settings.worker_maintenance_interval, settings.job_monitoring_interval,
        settings.worker_heartbeat_grace))]
    if backlog:
        extra.append(BacklogCollector(engine, settings.queue_name))
    return ResourceMetrics(registry, engine=engine, db_limit=db_limit, redis=redis, aredis=aredis,
                           extra=extra)
