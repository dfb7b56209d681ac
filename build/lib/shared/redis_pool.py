"""The one Redis connection pool a process owns.

Blocking with a timeout: under load a caller waits up to REDIS_POOL_TIMEOUT for
a free connection, then gets a clear error; the pool never grows past
REDIS_MAX_CONNECTIONS. RQ needs raw bytes, so `decode_responses` stays False.
The pools (shared.pools) count checkouts, opened connections and connection
errors for /metrics; they behave as redis-py's blocking pools.
"""

from __future__ import annotations

import logging

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.pools import AsyncCountedBlockingConnectionPool, CountedBlockingConnectionPool
from shared.settings import Settings

log = logging.getLogger("sluice.redis")


def create_redis(settings: Settings, component: str) -> Redis:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (run `sluice up` for embedded servers)")
    pool = CountedBlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=5,
        health_check_interval=30,
        client_name=f"sluice-{component}",
        decode_responses=False,
    )
    log.info(
        "redis.pool component=%s max_connections=%d wait_timeout=%.1fs",
        component, settings.redis_max_connections, settings.redis_pool_timeout,
    )
    return Redis(connection_pool=pool)


def create_async_redis(settings: Settings, component: str) -> AsyncRedis:
    """The webui's one async pool (event-stream reader + rate limits), bounded too."""
    pool = AsyncCountedBlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_async_max_connections,
        timeout=settings.redis_pool_timeout,
        socket_timeout=None,  # the event reader blocks in XREAD between events
        socket_connect_timeout=5,
        health_check_interval=30,
        client_name=f"sluice-{component}-async",
    )
    log.info(
        "redis.async_pool component=%s max_connections=%d",
        component, settings.redis_async_max_connections,
    )
    return AsyncRedis(connection_pool=pool)
