"""Per-user limits kept in Redis, so they hold across every webui replica.

* a request rate limit (fixed one-minute windows: one INCR per request), and
* a cap on uploads in flight (a counter with a safety TTL, released in `finally`).

Both answer 429 with `Retry-After`; both are cheap enough that a user who
floods is turned away before any database work, so others are not slowed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from webui.errors import ApiError

_WINDOW_S = 60
_SLOT_TTL_S = 3600  # a crashed replica cannot hold a user's slots forever
log = logging.getLogger("sluice.webui")
# Limits are a guard, not a dependency: with Redis down they let requests through, as
# readiness (Postgres only, see routes/health.py) promises.


async def check_rate(redis: AsyncRedis, user_id: uuid.UUID, per_minute: int) -> None:
    if per_minute <= 0:
        return
    now = time.time()
    window = int(now // _WINDOW_S)
    key = f"sluice:rate:{user_id}:{window}"
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, _WINDOW_S * 2)
            count, _ = await pipe.execute()
    except RedisError as err:
        log.warning("limits.unavailable error=%s", err)
        return
    if int(count) > per_minute:
        wait = max(1, int((window + 1) * _WINDOW_S - now))
        raise ApiError(
            429, "rate_limited",
            f"too many requests: at most {per_minute} per minute; try again in {wait} s",
            {"Retry-After": str(wait)},
        )


@asynccontextmanager
async def upload_slot(redis: AsyncRedis, user_id: uuid.UUID, limit: int) -> AsyncIterator[None]:
    key = f"sluice:uploads-in-flight:{user_id}"
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, _SLOT_TTL_S)
            count, _ = await pipe.execute()
    except RedisError as err:
        log.warning("limits.unavailable error=%s", err)
        count = None
    try:
        if count is not None and int(count) > limit:
            raise ApiError(
                429, "too_many_uploads",
                f"you already have {limit} uploads in progress; wait for one to finish",
                {"Retry-After": "5"},
            )
        yield
    finally:
        if count is not None:
            try:
                await redis.decr(key)
            except RedisError as err:  # the key expires by itself
                log.warning("limits.slot_not_released error=%s", err)
