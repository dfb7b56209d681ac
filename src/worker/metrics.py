"""The worker's `/metrics`: served on WORKER_METRICS_PORT from a thread, after boot.

Besides the pools and the queue (shared with the webui), the worker records
each job's outcome, its stage durations, how long it waited in the queue, how
busy the worker is, what boot loaded and the reconciler's repairs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import Collector
from rq.job import Job

from shared.db import pool_limit
from shared.metrics import OUTCOMES, JobMetrics, gauge
from shared.metrics_queue import process_metrics
from shared.settings import Settings
from worker.reconciler import ReconcileResult
from worker.runtime import LOADS, Runtime
from worker.sweeper import SweeperCollector

log = logging.getLogger("sluice.worker")
def job_outcome(job: Job, ok: bool) -> str:
    """The unit's outcome as `worker.jobs.run_unit` returned it (done | retried | failed |
    rejected | skipped); a job that raised (RQ's own timeout around our handling, a bug)
    counts as failed: its lease runs out and the reconciler offers the unit again."""
    result = getattr(job, "_result", None)  # set by RQ before the success handlers run
    if ok and isinstance(result, dict) and result.get("outcome") in OUTCOMES:
        return str(result["outcome"])
    return "failed" if not ok else "done"


class _WorkerCollector(Collector):
    """Busy seconds (including the job running now), boot loads and model load time."""

    def __init__(self, metrics: WorkerMetrics):
        self._m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._m
        busy = CounterMetricFamily(
            "sluice_worker_busy_seconds", "Seconds spent running jobs; rate() is the busy fraction."
        )
        busy.add_metric([], m.busy_seconds())
        yield busy
        yield gauge("sluice_worker_busy", "1 while a job runs.", int(m.running_since is not None))
        yield gauge("sluice_model_load_seconds", "Time to load the embedding model at boot.",
                    m.runtime.embedder.load_seconds)
        for key, doc in (("model_loads", "Embedding model loads since start (1 = loaded once)."),
                         ("config_loads", "App config loads since start (1 = loaded once).")):
            loads = CounterMetricFamily(f"sluice_{key}", doc)
            loads.add_metric([], LOADS[key])
            yield loads


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, runtime: Runtime):
        settings = runtime.settings
        self.runtime = runtime
        self.registry = registry
        self.jobs = JobMetrics(registry)
        self.resources = process_metrics(
            registry, engine=runtime.engine, db_limit=pool_limit(settings, "worker"),
            redis=runtime.redis, queue=runtime.queue, settings=settings, backlog=True,
        )
        self._lock = threading.Lock()
        self._busy_done = 0.0
        self.running_since: float | None = None
        registry.register(_WorkerCollector(self))
        registry.register(SweeperCollector())

    def busy_seconds(self) -> float:
        with self._lock:
            running = time.monotonic() - self.running_since if self.running_since is not None else 0.0
            return self._busy_done + running

    def job_started(self, job: Job) -> None:
        with self._lock:
            self.running_since = time.monotonic()
        if job.enqueued_at is not None:
            waited = (datetime.now(UTC) - _aware(job.enqueued_at)).total_seconds()
            self.jobs.queue_wait.observe(max(waited, 0.0))

    def job_finished(self, job: Job, ok: bool) -> None:
        with self._lock:
            started, self.running_since = self.running_since, None
            took = time.monotonic() - started if started is not None else 0.0
            self._busy_done += took
        try:
            self._record(job, ok, took)
        except Exception:  # metrics must never stop the worker's loop
            log.exception("worker.metrics_failed job_id=%s", job.id)

    def _record(self, job: Job, ok: bool, took: float) -> None:
        outcome = job_outcome(job, ok)
        self.jobs.jobs.labels(outcome=outcome).inc()
        if outcome == "skipped":
            return
        self.jobs.stage_seconds.labels(stage="total").observe(took)
        result: Any = getattr(job, "_result", None)
        timings = result.get("timings") if isinstance(result, dict) else None
        if isinstance(timings, dict):
            for stage, seconds in timings.items():
                if isinstance(seconds, int | float):
                    self.jobs.stage_seconds.labels(stage=str(stage)).observe(float(seconds))
        encode = result.get("encode") if isinstance(result, dict) else None
        if isinstance(encode, dict) and encode.get("tokens"):
            tokens, padded = float(encode["tokens"]), float(encode["padded_tokens"])
            self.jobs.embed_padding.observe(padded / tokens)
            if encode.get("seconds"):
                self.jobs.embed_rate.observe(tokens / float(encode["seconds"]))
            self.jobs.embed_units.observe(float(encode.get("units", 1)))
            self.jobs.embed_tokens.labels(kind="real").inc(tokens)
            self.jobs.embed_tokens.labels(kind="padded").inc(padded)

    def reconciled(self, result: ReconcileResult) -> None:
        self.jobs.reconciler_requeued.inc(result.requeued)
        self.jobs.reconciler_failed.inc(result.failed)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _app(registry: CollectorRegistry, beat_age: Callable[[], float], max_age: float) -> Any:
    """`/healthz` (liveness: has the work loop or the job heartbeat ticked lately? no
    Redis or DB call, so a slow Redis cannot get the pod killed) and `/metrics`."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            age = beat_age()
            ok = age <= max_age
            body = json.dumps({"status": "ok" if ok else "stale", "last_beat_age_s": round(age, 1),
                               "max_age_s": max_age}).encode()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [body]
        result: list[bytes] = metrics_app(environ, start_response)
        return result

    return app


def start_worker_metrics(
    settings: Settings, runtime: Runtime, beat_age: Callable[[], float] = lambda: 0.0
) -> WorkerMetrics:
    """Record metrics, and serve them (and `/healthz`) on WORKER_METRICS_PORT unless it
    is 0 or taken."""
    metrics = WorkerMetrics(CollectorRegistry(), runtime)
    port = settings.worker_metrics_port
    if port == 0:
        log.info("worker.metrics disabled (WORKER_METRICS_PORT=0)")
        return metrics
    try:
        max_age = 3.0 * max(settings.worker_maintenance_interval, settings.job_monitoring_interval)
        server = make_server(settings.worker_metrics_host, port,
                             _app(metrics.registry, beat_age, max_age),
                             ThreadingWSGIServer, handler_class=_SilentHandler)
        threading.Thread(target=server.serve_forever, name="sluice-metrics", daemon=True).start()
    except OSError as err:
        # A second worker on one machine with the same port: keep working, say so.
        log.warning("worker.metrics_not_served port=%d error=%s", port, err)
        return metrics
    log.info("worker.metrics serving http://%s:%d/metrics", settings.worker_metrics_host, port)
    return metrics
