"""`sluice worker`: boot once, then work the interactive and ingest queues until told to stop.

One long-lived process per pod. Jobs run in this process (no fork per job):
the model stays loaded and warm, and torch's thread pools are never carried
across a fork (a known deadlock). Untrusted parsing still happens in an
isolated child (see `worker.pipeline.isolated`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from shared.queue import worker_queues
from shared.settings import Settings
from shared.work import renew_lease
from worker.dispatcher import DispatcherThread
from worker.metrics import WorkerMetrics, start_worker_metrics
from worker.pipeline.isolated import start_parser_server
from worker.reconciler import ReconcilerThread
from worker.runtime import Runtime, boot

log = logging.getLogger("sluice.worker")
FACTS_KEY = "sluice:worker-facts:{name}"


class SluiceWorker(SimpleWorker):
    """SimpleWorker that keeps heart-beating while a job runs.

    RQ's SimpleWorker sets one heartbeat of JOB_TIMEOUT + 60 s at job start, so
    a worker killed mid-job is only noticed after that. A side thread renews a
    short heartbeat instead (like the forking Worker's parent does), so another
    worker's maintenance pass finds an abandoned job within about a minute.
    """

    runtime: Runtime | None = None
    metrics: WorkerMetrics | None = None
    heartbeat_grace: int = 60  # WORKER_HEARTBEAT_GRACE
    last_beat: float = 0.0  # monotonic time of the last heartbeat, for /healthz

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        super().heartbeat(timeout, pipeline)
        self.last_beat = time.monotonic()

    def beat_age(self) -> float:
        return time.monotonic() - self.last_beat if self.last_beat else 0.0

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return int(self.job_monitoring_interval) + self.heartbeat_grace

    @property
    def dequeue_timeout(self) -> int:
        # RQ blocks an idle worker in BLMOVE for worker_ttl - 15 s (405 s) and runs
        # maintenance only between dequeues: an idle worker would find a dead worker's
        # abandoned job minutes late. Wake up at least every maintenance interval.
        return max(1, min(super().dequeue_timeout, int(self.maintenance_interval)))

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            self._execute_job(job, queue)
        except RedisError as err:
            # RQ's bookkeeping around the job hit a Redis outage; RQ would end the work
            # loop and the process. Wait for Redis instead. The job stays "started" in
            # RQ, so once its heartbeat expires it is retried as abandoned (ingest is
            # idempotent); Postgres already holds what the attempt did.
            log.warning("worker.redis_lost_during_job job_id=%s error=%s", job.id, err)
            self._wait_for_redis()

    def _wait_for_redis(self) -> None:
        delay = 0.5
        while not self._stop_requested:
            try:
                self.connection.ping()
                return
            except RedisError:
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _execute_job(self, job: Job, queue: Queue) -> None:
        stop = threading.Event()
        execution = self.prepare_execution(job)
        beat = threading.Thread(
            target=self._beat, args=(job, execution, stop), name="sluice-heartbeat", daemon=True
        )
        beat.start()
        ok = False
        if self.metrics is not None:
            self.metrics.job_started(job)
        try:
            ok = self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join(timeout=5)
            if self.metrics is not None:
                self.metrics.job_finished(job, ok)
        self.set_state(WorkerStatus.IDLE)
        self.publish_facts()

    def _beat(self, job: Job, execution: Execution, stop: threading.Event) -> None:
        while not stop.wait(self.job_monitoring_interval):
            self._renew_lease()
            try:
                self.maintain_heartbeats(job, execution)
            except RedisError as err:
                log.warning("worker.heartbeat_failed error=%s", err)

    def _renew_lease(self) -> None:
        """The units' leases in Postgres are what keep them ours (Redis's heartbeat is RQ's):
        the job's unit and the segments claimed with it to fill the encoder."""
        rt = self.runtime
        held = rt.held if rt is not None else ()
        if rt is None or not held:
            return
        try:
            with rt.session_factory() as session:
                for c in held:
                    if not renew_lease(session, c.unit_id, c.attempt, rt.settings.lease_seconds):
                        # Also seen just after the unit was stored (done), before it is let go.
                        log.debug("unit.lease_ended unit=%s attempt=%s file_id=%s", c.unit_id,
                                  c.attempt, c.file_id)
        except Exception as err:  # Postgres down: the units may be offered again; fenced
            log.warning("unit.lease_not_renewed units=%s error=%s",
                        ",".join(str(c.unit_id) for c in held), err)

    def publish_facts(self) -> None:
        if self.runtime is None:
            return
        key = FACTS_KEY.format(name=self.name)
        try:
            with self.connection.pipeline() as pipe:
                pipe.hset(key, mapping=dict(self.runtime.facts()))  # type: ignore[arg-type]
                pipe.expire(key, int(self.job_monitoring_interval) + 120)
                pipe.execute()
        except RedisError as err:
            log.warning("worker.facts_not_published error=%s", err)


def run(settings: Settings, *, processes_sharing_cpus: int = 1, burst: bool = False) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The parser's fork server must start before torch spins up threads.
    start_parser_server()
    runtime = boot(settings, processes_sharing_cpus)
    # Interactive first: RQ takes from the queues in this order (shared/queue.py).
    worker = SluiceWorker(
        worker_queues(runtime.redis, settings),
        connection=runtime.redis,
        name=runtime.name,
        serializer=JSONSerializer,
        job_monitoring_interval=settings.job_monitoring_interval,
        maintenance_interval=settings.worker_maintenance_interval,
    )
    worker.runtime = runtime
    worker.heartbeat_grace = settings.worker_heartbeat_grace
    worker.metrics = start_worker_metrics(settings, runtime, worker.beat_age)
    worker.publish_facts()
    reconciler = ReconcilerThread(runtime.redis, runtime.session_factory, runtime.queue, settings,
                                  on_result=worker.metrics.reconciled)
    reconciler.start()
    dispatcher = DispatcherThread(runtime, worker.publish_facts)
    dispatcher.start()
    try:
        # No RQ scheduler: retries are scheduled from Postgres (shared.work.retry_later).
        # It would also be a forked child holding copies of this process's database
        # sockets: a worker killed by PID would leave its sessions (and their locks) open.
        worker.work(with_scheduler=False, burst=burst, logging_level=settings.log_level)
    finally:
        dispatcher.stop()
        reconciler.stop()
        runtime.engine.dispose()
        log.info("worker.stopped name=%s", runtime.name)
