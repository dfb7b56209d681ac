"""Prometheus metrics of one process: definitions and scrape-time collectors.

Every process owns one `CollectorRegistry` (tests build several apps in one
process, so nothing registers in the global default registry). Gauges about
pools and queues are read when Prometheus scrapes (custom collectors), never by
a polling thread: a scrape sees the state of that moment and an idle process
does no work. Names follow Prometheus conventions: base units in the name
(`_seconds`), `_total` on counters, `sluice_` prefix. The README has the table.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import BlockingConnectionPool, Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool, QueuePool

DB_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180, 300, 450, 600, 900, 1800, 3600)
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
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


def instrument_db_pool(engine: Engine, wait: Histogram, timeouts: Counter) -> None:
    """Time every checkout (`Pool.connect`) of this engine's pool, now and after dispose().

    SQLAlchemy has no event *before* a checkout, so the pool's class is swapped for
    a subclass whose `connect()` is timed; `Pool.recreate()` (run by dispose())
    builds `self.__class__`, so a recreated pool stays timed. The time covers the
    wait for a free slot plus opening a new connection and the pre-ping.
    """
    pool = engine.pool
    base: type[Pool] = getattr(type(pool), "_sluice_base", type(pool))

    def connect(self: Pool) -> Any:
        started = time.perf_counter()
        try:
            return base.connect(self)
        except sa_exc.TimeoutError:
            timeouts.inc()
            raise
        finally:
            wait.observe(time.perf_counter() - started)

    pool.__class__ = type(f"Timed{base.__name__}", (base,), {"connect": connect, "_sluice_base": base})


# --- Redis pool ---------------------------------------------------------------


class RedisPoolCollector(Collector):
    """In-use and maximum connections of a process's Redis pools (label `pool`: sync, async)."""

    def __init__(self, pools: dict[str, Any]):
        self._pools = pools

    def collect(self) -> Iterable[Metric]:
        families = {
            "in_use": GaugeMetricFamily("sluice_redis_pool_in_use",
                                        "Redis connections checked out of the pool.", labels=["pool"]),
            "max": GaugeMetricFamily("sluice_redis_pool_max",
                                     "Most connections the pool may open (REDIS_MAX_CONNECTIONS for "
                                     "the sync pool).", labels=["pool"]),
            "open": GaugeMetricFamily("sluice_redis_pool_connections",
                                      "Redis connections the pool has opened.", labels=["pool"]),
        }
        for name, pool in self._pools.items():
            maximum = int(pool.max_connections)
            if isinstance(pool, BlockingConnectionPool):
                # The queue holds idle connections plus None placeholders for unopened slots.
                in_use, opened = maximum - pool.pool.qsize(), len(pool._connections)
            else:  # redis.asyncio pools (and the non-blocking sync pool) keep two collections
                in_use = len(pool._in_use_connections)
                opened = in_use + len(pool._available_connections)
            families["in_use"].add_metric([name], in_use)
            families["max"].add_metric([name], maximum)
            families["open"].add_metric([name], opened)
        yield from families.values()


_WATCHED = (RedisConnectionError, RedisTimeoutError)


def _count_error(errors: Counter, err: BaseException, default: str) -> None:
    if getattr(err, "_sluice_counted", False):
        return  # counted where it was raised (a nested call)
    kind = "timeout" if isinstance(err, RedisTimeoutError) else default
    errors.labels(kind=kind).inc()
    try:
        err._sluice_counted = True  # type: ignore[attr-defined]
    except AttributeError:
        pass


def instrument_redis_pool(pool: Any, errors: Counter) -> None:
    """Count connection errors and timeouts of this pool's connections (sync or asyncio).

    Wherever the application catches a RedisError (enqueue, heartbeat, reconciler,
    readiness, events), the error went through a pooled connection first, so
    counting it here covers every call site. Kinds: `timeout` (socket timeout),
    `connection` (refused, reset, closed), `pool_exhausted` (no free connection
    within REDIS_POOL_TIMEOUT). Command errors (WRONGTYPE, …) are bugs, not counted.
    """
    base: type[Any] = getattr(pool.connection_class, "_sluice_base", pool.connection_class)

    def wrap(method: Callable[..., Any], default: str) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(method):
            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await method(*args, **kwargs)
                except _WATCHED as err:
                    _count_error(errors, err, default)
                    raise

            return counted_async

        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except _WATCHED as err:
                _count_error(errors, err, default)
                raise

        return counted

    methods = {n: wrap(getattr(base, n), "connection")
               for n in ("connect", "send_packed_command", "read_response")}
    pool.connection_class = type(f"Counted{base.__name__}", (base,), {**methods, "_sluice_base": base})
    # connect() errors are counted above; what get_connection() adds is the pool's own wait.
    pool.get_connection = wrap(pool.get_connection, "pool_exhausted")


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
        wait = Histogram(
            "sluice_db_pool_wait_seconds",
            "Time to get a connection from the DB pool (queue wait + connect + pre-ping).",
            buckets=DB_WAIT_BUCKETS, registry=None,
        )
        timeouts = Counter(
            "sluice_db_pool_timeouts", "Checkouts that gave up after DATABASE_POOL_TIMEOUT.",
            registry=None,
        )
        errors = Counter(
            "sluice_redis_errors", "Redis connection errors and timeouts, by kind.",
            ["kind"], registry=None,
        )
        for kind in ("timeout", "connection", "pool_exhausted"):
            errors.labels(kind=kind)
        instrument_db_pool(engine, wait, timeouts)
        pools: dict[str, Any] = {"sync": redis.connection_pool}
        if aredis is not None:
            pools["async"] = aredis.connection_pool
        for pool in pools.values():
            instrument_redis_pool(pool, errors)
        self._collectors: list[Collector] = [
            wait, timeouts, errors, DbPoolCollector(engine, db_limit), RedisPoolCollector(pools), *extra,
        ]
        for collector in self._collectors:
            registry.register(collector)

    def close(self) -> None:
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
        self.reconciler_requeued = Counter(
            "sluice_reconciler_requeued", "Files the reconciler put back on the queue.",
            registry=registry,
        )
        self.reconciler_failed = Counter(
            "sluice_reconciler_failed", "Files the reconciler marked failed (retries spent).",
            registry=registry,
        )
