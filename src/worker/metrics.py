"""The worker's `/metrics`: served on WORKER_METRICS_PORT from a thread, after boot.

Besides the pools and the queue (shared with the webui), the worker records
each job's outcome, its stage durations, how long it waited in the queue, how
busy the worker is, what boot loaded and the reconciler's repairs. Embedding
jobs for `/v1/embeddings` are counted on their own (`sluice_openai_embed_*`), not
as work units.
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

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import Collector
from rq.job import Job
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from shared.db import pool_limit
from shared.embed_queue import EMBED_FUNC
from shared.metrics import OUTCOMES, QUEUE_WAIT_BUCKETS, JobMetrics, gauge
from shared.metrics_queue import process_metrics
from shared.models import AppConfig
from shared.queue import worker_queues
from shared.reembed import REEMBED_KEY, UNITS_SQL
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


class ReembedCollector(Collector):
    """The background re-embed (shared/reembed.py), read from Postgres at scrape time."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        try:
            with self._engine.connect() as conn:
                state = conn.scalar(select(AppConfig.value).where(AppConfig.key == REEMBED_KEY))
                units: dict[str, int] = dict(conn.execute(UNITS_SQL).tuples().all())
        except SQLAlchemyError as err:
            log.warning("metrics.reembed_unavailable error=%s", err)
            return
        running = isinstance(state, dict) and state.get("state") == "running"
        yield gauge("sluice_reembed_running", "1 while a background re-embed runs.", int(running))
        family = GaugeMetricFamily("sluice_reembed_units", "Re-embed units by state.",
                                   labels=["state"])
        for name in ("pending", "dispatched", "running", "done", "failed"):
            family.add_metric([name], int(units.get(name, 0)))
        yield family


class EmbedJobMetrics:
    """Embedding jobs (`/v1/embeddings`): outcomes, texts encoded, and the wait in the
    interactive queue before a worker took them."""

    def __init__(self, registry: CollectorRegistry):
        self.jobs = Counter("sluice_openai_embed_jobs", "Embedding jobs by outcome (done, failed).",
                            ["outcome"], registry=registry)
        for outcome in ("done", "failed"):
            self.jobs.labels(outcome=outcome)
        self.texts = Counter("sluice_openai_embed_texts", "Texts encoded for /v1/embeddings.",
                             registry=registry)
        self.queue_wait = Histogram(
            "sluice_openai_embed_queue_wait_seconds",
            "Time from an embedding job's enqueue to its start.",
            buckets=QUEUE_WAIT_BUCKETS, registry=registry,
        )

    def record(self, job: Job, ok: bool) -> None:
        result: Any = getattr(job, "_result", None)
        self.jobs.labels(outcome="done" if ok else "failed").inc()
        if ok and isinstance(result, dict) and isinstance(result.get("count"), int):
            self.texts.inc(result["count"])


def _is_embed(job: Job) -> bool:
    return job.func_name == EMBED_FUNC


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, runtime: Runtime):
        settings = runtime.settings
        self.runtime = runtime
        self.registry = registry
        self.jobs = JobMetrics(registry)
        self.embed_jobs = EmbedJobMetrics(registry)
        self.resources = process_metrics(
            registry, engine=runtime.engine, db_limit=pool_limit(settings, "worker"),
            redis=runtime.redis, queues=worker_queues(runtime.redis, settings), settings=settings,
            backlog=True,
        )
        self._lock = threading.Lock()
        self._busy_done = 0.0
        self.running_since: float | None = None
        registry.register(_WorkerCollector(self))
        registry.register(SweeperCollector())
        registry.register(ReembedCollector(runtime.engine))

    def busy_seconds(self) -> float:
        with self._lock:
            running = time.monotonic() - self.running_since if self.running_since is not None else 0.0
            return self._busy_done + running

    def job_started(self, job: Job) -> None:
        with self._lock:
            self.running_since = time.monotonic()
        if job.enqueued_at is not None:
            waited = (datetime.now(UTC) - _aware(job.enqueued_at)).total_seconds()
            wait = self.embed_jobs.queue_wait if _is_embed(job) else self.jobs.queue_wait
            wait.observe(max(waited, 0.0))

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
        if _is_embed(job):
            self.embed_jobs.record(job, ok)
            return
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
