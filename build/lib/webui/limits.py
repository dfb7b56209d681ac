"""Abuse limits kept in Redis, so they hold across every webui replica.

* request rate per user, and failed authentications per client address: moving
  windows from the `limits` library (its Redis storage, on our async pool);
* uploads in flight and event streams open per user: counters with a safety TTL,
  released in `finally`.

All answer 429 with `Retry-After` (and `Connection: close`, see `webui.errors`);
all are checked before any database work or body read. Limits are a guard, not a
dependency: with Redis down they let requests through, as readiness (Postgres
only, see routes/health.py) promises.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from webui.errors import ApiError

_SLOT_TTL_S = 3600  # a crashed replica cannot hold a user's slots forever
log = logging.getLogger("sluice.webui")


class RateLimits:
    """Moving-window limits on the process's async Redis pool."""

    def __init__(self, redis: AsyncRedis, user_per_minute: int, auth_failures_per_minute: int):
        storage = RedisStorage(
            "async+redis://", implementation="redispy", key_prefix="sluice:limits",
            wrap_exceptions=True,
            # our pool, not a second one; limits' stub types its options too narrowly
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]
        )
        self._limiter = MovingWindowRateLimiter(storage)
        self._user = RateLimitItemPerMinute(user_per_minute) if user_per_minute > 0 else None
        self._auth = (RateLimitItemPerMinute(auth_failures_per_minute)
                      if auth_failures_per_minute > 0 else None)

    async def check_user(self, user_id: uuid.UUID) -> None:
        """Count one request of this user; 429 beyond the per-minute rate."""
        if self._user is None:
            return
        if not await self._hit(self._user, "user", str(user_id)):
            wait = await self._retry_after(self._user, "user", str(user_id))
            raise ApiError(
                429, "rate_limited",
                f"too many requests: at most {self._user.amount} per minute; "
                f"try again in {wait} s", {"Retry-After": str(wait)},
            )

    async def check_auth_failures(self, address: str) -> None:
        """429 while this address has failed to authenticate too often, before a key
        is looked up: guessing keys costs the guesser, not the database."""
        if self._auth is None:
            return
        try:
            allowed = await self._limiter.test(self._auth, "auth-failed", address)
        except (StorageError, RedisError) as err:
            log.warning("limits.unavailable error=%s", err)
            return
        if not allowed:
            wait = await self._retry_after(self._auth, "auth-failed", address)
            raise ApiError(
                429, "too_many_failed_logins",
                f"too many failed sign-in attempts from your address; try again in {wait} s",
                {"Retry-After": str(wait)},
            )

    async def auth_failed(self, address: str) -> None:
        if self._auth is not None:
            await self._hit(self._auth, "auth-failed", address)

    async def _hit(self, item: RateLimitItem, *key: str) -> bool:
        try:
            return await self._limiter.hit(item, *key)
        except (StorageError, RedisError) as err:
            log.warning("limits.unavailable error=%s", err)
            return True

    async def _retry_after(self, item: RateLimitItem, *key: str) -> int:
        try:
            stats = await self._limiter.get_window_stats(item, *key)
        except (StorageError, RedisError):
            return item.get_expiry()
        return max(1, math.ceil(stats.reset_time - time.time()))


@asynccontextmanager
async def counted_slot(
    redis: AsyncRedis, key: str, limit: int, refusal: ApiError
) -> AsyncIterator[None]:
    """Hold one of `limit` slots under `key` for the block; `refusal` when none is free."""
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
            raise refusal
        yield
    finally:
        if count is not None:
            # Shielded: a stream ends by cancellation when its client goes away, and an
            # unshielded await here would be cancelled too, leaking the slot for an hour.
            with anyio.CancelScope(shield=True):
                try:
                    await redis.decr(key)
                except RedisError as err:  # the key expires by itself
                    log.warning("limits.slot_not_released error=%s", err)


def upload_slot(
    redis: AsyncRedis, user_id: uuid.UUID, limit: int
) -> AbstractAsyncContextManager[None]:
    return counted_slot(
        redis, f"sluice:uploads-in-flight:{user_id}", limit,
        ApiError(429, "too_many_uploads",
                 f"you already have {limit} uploads in progress; wait for one to finish",
                 {"Retry-After": "2"}),
    )


def event_stream_slot(
    redis: AsyncRedis, user_id: uuid.UUID, limit: int
) -> AbstractAsyncContextManager[None]:
    return counted_slot(
        redis, f"sluice:event-streams:{user_id}", limit,
        ApiError(429, "too_many_event_streams",
                 f"you already have {limit} event streams open; close a browser tab and retry",
                 {"Retry-After": "30"}),
    )
