"""Pool metrics move with what the pools really do (real Redis and Postgres, small pools).

Read through `ResourceMetrics` and its registry, as `/metrics` exposes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from shared.db import create_webui_engine, create_worker_engine
from shared.metrics import ResourceMetrics
from shared.pools import (
    AsyncCountedBlockingConnectionPool,
    AsyncCountedConnection,
    AsyncCountedSSLConnection,
    AsyncCountedUnixDomainSocketConnection,
    CountedBlockingConnectionPool,
    CountedConnection,
    CountedSSLConnection,
    CountedUnixDomainSocketConnection,
    TimedAsyncAdaptedQueuePool,
    TimedNullPool,
    TimedQueuePool,
)
from shared.redis_pool import create_async_redis, create_redis
from shared.settings import Settings
from tests.support.helpers import free_port

KINDS = ("timeout", "connection", "pool_exhausted")


class Scrape:
    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def __call__(self, name: str, **labels: str) -> float:
        value = self._registry.get_sample_value(name, labels)
        assert value is not None, (name, labels)
        return value

    def errors(self) -> dict[str, float]:
        return {kind: self("sluice_redis_errors_total", kind=kind) for kind in KINDS}


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    small = settings.model_copy(update={"worker_db_pool_size": 1, "database_pool_timeout": 0.3})
    engine = create_worker_engine(small, "cli")
    yield engine
    engine.dispose()


RedisFactory = Callable[[Settings], Redis]


@pytest.fixture
def redis_for() -> Iterator[RedisFactory]:
    """Clients built by `create_redis`; closed, pools disconnected, after the test."""
    built: list[Redis] = []

    def build(settings: Settings) -> Redis:
        built.append(create_redis(settings, "cli"))
        return built[-1]

    yield build
    for redis in built:
        redis.close()
        redis.connection_pool.disconnect()


def metrics(registry: CollectorRegistry, engine: Engine, redis: Redis) -> ResourceMetrics:
    return ResourceMetrics(registry, engine=engine, db_limit=1, redis=redis)


def test_db_checkouts_are_timed_and_timeouts_counted_across_dispose(
    engine: Engine, settings: Settings, redis_for: RedisFactory
) -> None:
    assert isinstance(engine.pool, TimedQueuePool)
    registry = CollectorRegistry()
    scrape = Scrape(registry)
    resources = metrics(registry, engine, redis_for(settings))
    try:
        with engine.connect() as held:
            held.execute(sa.text("SELECT 1"))
            assert scrape("sluice_db_pool_checked_out") == 1
            with pytest.raises(sa_exc.TimeoutError):
                engine.connect()
        assert scrape("sluice_db_pool_wait_seconds_count") == 2
        assert scrape("sluice_db_pool_timeouts_total") == 1
        assert scrape("sluice_db_pool_wait_seconds_sum") >= 0.3  # the timed-out wait
        # dispose() replaces the pool (recreate()); the new one is still timed.
        engine.dispose()
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert scrape("sluice_db_pool_wait_seconds_count") == 3
    finally:
        resources.close()
    with engine.connect():  # after close() the pool reports nowhere
        pass
    assert registry.get_sample_value("sluice_db_pool_wait_seconds_count") is None


def test_null_pool_checkouts_are_timed(settings: Settings, redis_for: RedisFactory) -> None:
    """DATABASE_EXTERNAL_POOLER=true: one connection per checkout, timed all the same."""
    pooled = settings.model_copy(update={"database_pool_size": 0, "database_external_pooler": True})
    engine = create_worker_engine(pooled, "cli")
    assert isinstance(engine.pool, TimedNullPool)
    registry = CollectorRegistry()
    scrape = Scrape(registry)
    resources = metrics(registry, engine, redis_for(settings))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            assert scrape("sluice_db_pool_checked_out") == 1
        assert scrape("sluice_db_pool_checked_out") == 0
        assert scrape("sluice_db_pool_wait_seconds_count") == 1
    finally:
        resources.close()
        engine.dispose()


def test_a_plain_pool_is_refused(settings: Settings, engine: Engine) -> None:
    with pytest.raises(TypeError, match=r"shared\.redis_pool"):
        metrics(CollectorRegistry(), engine, Redis.from_url(settings.redis_url))


def test_redis_checkouts_opened_connections_and_pool_exhaustion(
    engine: Engine, settings: Settings, redis_for: RedisFactory
) -> None:
    tiny = settings.model_copy(update={"redis_max_connections": 2, "redis_pool_timeout": 0.2})
    redis = redis_for(tiny)
    registry = CollectorRegistry()
    scrape = Scrape(registry)
    resources = metrics(registry, engine, redis)
    pool = redis.connection_pool
    try:
        assert redis.ping()
        assert (scrape("sluice_redis_pool_in_use", pool="sync"),
                scrape("sluice_redis_pool_connections", pool="sync")) == (0, 1)
        first, second = pool.get_connection(), pool.get_connection()
        assert (scrape("sluice_redis_pool_in_use", pool="sync"),
                scrape("sluice_redis_pool_connections", pool="sync"),
                scrape("sluice_redis_pool_max", pool="sync")) == (2, 2, 2)
        with pytest.raises(RedisConnectionError, match="No connection available"):
            redis.ping()
        assert scrape.errors() == {"timeout": 0, "connection": 0, "pool_exhausted": 1}
        pool.release(first)
        assert scrape("sluice_redis_pool_in_use", pool="sync") == 1
        assert redis.ping()
        pool.release(second)
        assert (scrape("sluice_redis_pool_in_use", pool="sync"),
                scrape("sluice_redis_pool_connections", pool="sync")) == (0, 2)
    finally:
        resources.close()


def test_redis_refused_connection_is_counted_once(
    engine: Engine, settings: Settings, redis_for: RedisFactory
) -> None:
    closed = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    redis = redis_for(closed)
    registry = CollectorRegistry()
    scrape = Scrape(registry)
    resources = metrics(registry, engine, redis)
    try:
        with pytest.raises(RedisConnectionError):
            redis.ping()
        # Raised by connect() inside get_connection(): a connection error, not a pool wait.
        assert scrape.errors() == {"timeout": 0, "connection": 1, "pool_exhausted": 0}
        assert scrape("sluice_redis_pool_in_use", pool="sync") == 0
    finally:
        resources.close()


def test_redis_socket_timeout_is_counted(
    engine: Engine, settings: Settings, redis_for: RedisFactory
) -> None:
    impatient = settings.model_copy(update={"redis_socket_timeout": 0.2})
    redis = redis_for(impatient)
    registry = CollectorRegistry()
    scrape = Scrape(registry)
    resources = metrics(registry, engine, redis)
    try:
        with pytest.raises(RedisTimeoutError):
            redis.blpop(["sluice-test-never-pushed"], timeout=2)
        assert scrape.errors()["timeout"] >= 1
        assert scrape.errors()["pool_exhausted"] == 0
    finally:
        resources.close()


async def test_async_pools_are_counted(settings: Settings, redis_for: RedisFactory) -> None:
    tiny = settings.model_copy(update={"redis_async_max_connections": 2, "redis_pool_timeout": 0.2})
    engine = create_webui_engine(tiny)
    redis, aredis = redis_for(tiny), create_async_redis(tiny, "webui")
    assert isinstance(engine.sync_engine.pool, TimedAsyncAdaptedQueuePool)
    registry = CollectorRegistry()
    scrape = Scrape(registry)
    resources = ResourceMetrics(registry, engine=engine.sync_engine, db_limit=1, redis=redis,
                                aredis=aredis)
    pool = aredis.connection_pool
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        assert scrape("sluice_db_pool_wait_seconds_count") == 1
        assert await aredis.ping()
        # redis-py's asyncio ConnectionPool.get_connection is unannotated.
        first, second = (await pool.get_connection(),  # type: ignore[no-untyped-call]
                         await pool.get_connection())  # type: ignore[no-untyped-call]
        assert (scrape("sluice_redis_pool_in_use", pool="async"),
                scrape("sluice_redis_pool_connections", pool="async")) == (2, 2)
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await aredis.ping()
        assert scrape.errors() == {"timeout": 0, "connection": 0, "pool_exhausted": 1}
        await pool.release(first)
        await pool.release(second)
        assert scrape("sluice_redis_pool_in_use", pool="async") == 0
    finally:
        resources.close()
        await aredis.aclose()
        await pool.disconnect()
        await engine.dispose()


@pytest.mark.parametrize(
    ("url", "sync_class", "async_class"),
    [("redis://h:1/0", CountedConnection, AsyncCountedConnection),
     ("rediss://h:1/0", CountedSSLConnection, AsyncCountedSSLConnection),
     ("unix:///run/redis.sock", CountedUnixDomainSocketConnection,
      AsyncCountedUnixDomainSocketConnection)],
)
def test_each_url_scheme_gets_its_counted_connection_class(
    url: str, sync_class: type, async_class: type
) -> None:
    """`from_url` picks the connection class by scheme; the pools swap in its counted twin
    and hand their stats to every connection through the connection kwargs."""
    for pool_class, expected in ((CountedBlockingConnectionPool, sync_class),
                                 (AsyncCountedBlockingConnectionPool, async_class)):
        pool = pool_class.from_url(url)
        assert pool.connection_class is expected
        assert pool.make_connection().sluice_stats is pool.stats
        assert pool.stats.opened == 1
