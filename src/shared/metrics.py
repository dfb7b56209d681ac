"""Prometheus metrics of one process: definitions and scrape-time collectors.

Every process owns one `CollectorRegistry` (tests build several apps in one
process, so nothing registers in the global default registry). Gauges about
pools and queues are read when Prometheus scrapes (custom collectors), never by
a polling thread: a scrape sees the state of that moment and an idle process
does no work. Names follow Prometheus conventions: base units in the name
(`_seconds`), `_total` on counters, `sluice_` prefix. The README has the table.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import Engine, event
from sqlalchemy.pool import QueuePool

from shared.pools import (
    ERROR_KINDS,
    AsyncCountedBlockingConnectionPool,
    CountedBlockingConnectionPool,
    TimedPool,
)

DB_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180, 300, 450, 600, 900, 1800, 3600)
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
PADDING_BUCKETS = (1.0, 1.01, 1.02, 1.05, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0)
TOKENS_PER_S_BUCKETS = (250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000)
CALL_UNITS_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256)
OUTCOMES = ("done", "failed", "retried", "rejected", "skipped")
STAGES = ("parse", "chunk", "embed", "store", "total")


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    """One gauge sample, built at scrape time."""
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


# --- Postgres pool -----------------------------------------------------------


class DbPoolCollector(Collector):
    """Pool gauges read from the engine's *current* pool at scrape time.

    `engine.pool` is read on every scrape because `engine.dispose()` replaces the
    pool object. For an AsyncEngine pass `async_engine.sync_engine`.
    """

    def __init__(self, engine: Engine, limit: int):
        self._engine = engine
        self._limit = limit
        self._lock = threading.Lock()
        self._checked_out = 0  # only for pools without checkedout() (NullPool)
        if not isinstance(engine.pool, QueuePool):
            event.listen(engine, "checkout", self._on_checkout)
            event.listen(engine, "checkin", self._on_checkin)

    def _on_checkout(self, *_: Any) -> None:
        with self._lock:
            self._checked_out += 1

    def _on_checkin(self, *_: Any) -> None:
        with self._lock:
            self._checked_out = max(self._checked_out - 1, 0)

    def collect(self) -> Iterable[Metric]:
        pool = self._engine.pool
        if isinstance(pool, QueuePool):
            size, checked_out, overflow = pool.size(), pool.checkedout(), max(pool.overflow(), 0)
        else:
            size, checked_out, overflow = 0, self._checked_out, 0
        yield gauge("sluice_db_pool_size", "Configured pool size (persistent connections).", size)
        yield gauge("sluice_db_pool_max", "Most connections the pool may open (size + max overflow; "
                    "0 = unbounded NullPool).", self._limit)
        yield gauge("sluice_db_pool_checked_out", "Connections in use right now.", checked_out)
        yield gauge("sluice_db_pool_overflow", "Overflow connections open beyond the pool size.", overflow)


class DbCheckoutMetrics:
    """`sluice_db_pool_wait_seconds` and `sluice_db_pool_timeouts`, fed by a timed pool
    (`shared.pools.TimedPool`) of the engine."""

    def __init__(self) -> None:
        self.wait = Histogram(
            "sluice_db_pool_wait_seconds",
            "Time to get a connection from the DB pool (queue wait + connect + pre-ping).",
            buckets=DB_WAIT_BUCKETS, registry=None,
        )
        self.timeouts = Counter(
            "sluice_db_pool_timeouts", "Checkouts that gave up after DATABASE_POOL_TIMEOUT.",
            registry=None,
        )

    def checked_out(self, seconds: float, timed_out: bool) -> None:
        self.wait.observe(seconds)
        if timed_out:
            self.timeouts.inc()


def timed_pool(engine: Engine) -> TimedPool:
    pool = engine.pool
    if not isinstance(pool, TimedPool):
        raise TypeError(f"{type(pool).__name__} cannot time checkouts: build engines with shared.db")
    return pool


# --- Redis pool ---------------------------------------------------------------


RedisPool = CountedBlockingConnectionPool | AsyncCountedBlockingConnectionPool


class RedisPoolCollector(Collector):
    """In-use, maximum and opened connections of a process's Redis pools (label `pool`:
    sync, async) and their connection errors (`shared.pools.RedisPoolStats`)."""

    def __init__(self, pools: dict[str, RedisPool]):
        self._pools = pools

    def collect(self) -> Iterable[Metric]:
        in_use = GaugeMetricFamily("sluice_redis_pool_in_use",
                                   "Redis connections checked out of the pool.", labels=["pool"])
        maximum = GaugeMetricFamily("sluice_redis_pool_max",
                                    "Most connections the pool may open (REDIS_MAX_CONNECTIONS for "
                                    "the sync pool).", labels=["pool"])
        opened = GaugeMetricFamily("sluice_redis_pool_connections",
                                   "Redis connections the pool has opened.", labels=["pool"])
        errors = CounterMetricFamily("sluice_redis_errors",
                                     "Redis connection errors and timeouts, by kind.", labels=["kind"])
        totals = dict.fromkeys(ERROR_KINDS, 0)
        for name, pool in self._pools.items():
            in_use.add_metric([name], pool.stats.in_use)
            maximum.add_metric([name], int(pool.max_connections))
            opened.add_metric([name], pool.stats.opened)
            for kind, count in pool.stats.errors().items():
                totals[kind] += count
        for kind, count in totals.items():
            errors.add_metric([kind], count)
        yield from (in_use, maximum, opened, errors)


def counted_pool(client: Redis | AsyncRedis) -> RedisPool:
    pool = client.connection_pool
    if not isinstance(pool, (CountedBlockingConnectionPool, AsyncCountedBlockingConnectionPool)):
        raise TypeError(f"{type(pool).__name__} counts nothing: build Redis clients with "
                        "shared.redis_pool")
    return pool


# --- One process's resources ------------------------------------------------------


class ResourceMetrics:
    """DB pool, Redis pool and (optionally) queue metrics of one process, in `registry`.

    `close()` unregisters everything, so an app whose lifespan runs twice (tests)
    can register again in the same registry.
    """

    def __init__(
        self, registry: CollectorRegistry, *, engine: Engine, db_limit: int, redis: Redis,
        aredis: AsyncRedis | None = None, extra: Iterable[Collector] = (),
    ):
        self._registry = registry
        self._engine = engine
        self._checkouts = DbCheckoutMetrics()
        timed_pool(engine).checkout_observer = self._checkouts  # recreate() carries it on
        pools: dict[str, RedisPool] = {"sync": counted_pool(redis)}
        if aredis is not None:
            pools["async"] = counted_pool(aredis)
        self._collectors: list[Collector] = [
            self._checkouts.wait, self._checkouts.timeouts, DbPoolCollector(engine, db_limit),
            RedisPoolCollector(pools), *extra,
        ]
        for collector in self._collectors:
            registry.register(collector)

    def close(self) -> None:
        pool = timed_pool(self._engine)
        if pool.checkout_observer is self._checkouts:
            pool.checkout_observer = None
        for collector in self._collectors:
            try:
                self._registry.unregister(collector)
            except KeyError:
                pass


class JobMetrics:
    """What the worker records about the jobs it runs."""

    def __init__(self, registry: CollectorRegistry):
        self.jobs = Counter(
            "sluice_jobs", "Job executions by outcome: done, failed (for good), retried, "
            "rejected (a document that can never succeed), skipped (file deleted).",
            ["outcome"], registry=registry,
        )
        for outcome in OUTCOMES:
            self.jobs.labels(outcome=outcome)
        self.stage_seconds = Histogram(
            "sluice_job_stage_duration_seconds",
            "Time per pipeline stage of a processed file, and the whole job (total).",
            ["stage"], buckets=JOB_BUCKETS, registry=registry,
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        self.queue_wait = Histogram(
            "sluice_queue_wait_seconds",
            "Time from a job's enqueue (upload, retry or re-enqueue) to its start.",
            buckets=QUEUE_WAIT_BUCKETS, registry=registry,
        )
        # Per worker job that embeds segments (a segment and those claimed to fill it, or a
        # parse that went on to embed): one encode call for torch, one per segment for the
        # ONNX backends (texts alone, no padding).
        self.embed_padding = Histogram(
            "sluice_embed_padding_ratio",
            "Tokens the model computed (each batch padded to its longest text) / real tokens, "
            "per job that embeds segments.", buckets=PADDING_BUCKETS, registry=registry,
        )
        self.embed_rate = Histogram(
            "sluice_embed_tokens_per_second",
            "Real tokens embedded per second, per job that embeds segments.",
            buckets=TOKENS_PER_S_BUCKETS, registry=registry,
        )
        self.embed_units = Histogram(
            "sluice_embed_call_units", "Segment units embedded in one job (a filled job).",
            buckets=CALL_UNITS_BUCKETS, registry=registry,
        )
        self.embed_tokens = Counter(
            "sluice_embed_tokens", "Tokens embedded: real, and padded (what the model computed); "
            "rate(padded) / rate(real) is the padding ratio.", ["kind"], registry=registry,
        )
        for kind in ("real", "padded"):
            self.embed_tokens.labels(kind=kind)
        self.reconciler_requeued = Counter(
            "sluice_reconciler_requeued", "Files the reconciler put back on the queue.",
            registry=registry,
        )
        self.reconciler_failed = Counter(
            "sluice_reconciler_failed", "Files the reconciler marked failed (retries spent).",
            registry=registry,
        )
