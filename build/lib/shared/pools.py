"""Pool and connection classes that count and time what `/metrics` reports.

Chosen where the pools are built (`shared.db`, `shared.redis_pool`), never
swapped in afterwards, and they only use the libraries' public surface
(`Pool.connect`/`recreate`, redis-py's `get_connection`/`release`/
`make_connection`/`reset` and the connection's `connect`/`send_packed_command`/
`read_response`). Why subclasses rather than the libraries' hooks:

- SQLAlchemy's pool events fire *after* a checkout (`checkout`, `connect`);
  none fires before one, so the wait for a free slot cannot be timed by events.
- redis-py 8's `EventDispatcher` has no checkout or connection-error event (only
  releases, re-auth and multi-database failover), and its `redis.observability`
  metrics are process-global OpenTelemetry instruments that need the OTel SDK
  and a bridge to Prometheus, where each Sluice process (and each test app) owns
  one Prometheus registry.

Nothing here imports prometheus_client: `shared.metrics` reads these counts.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol, Self, cast

import redis.asyncio.connection as aconn
import redis.connection as sconn
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, Pool, PoolProxiedConnection, QueuePool

# --- Postgres: timed checkouts --------------------------------------------------


class CheckoutObserver(Protocol):
    def checked_out(self, seconds: float, timed_out: bool) -> None:
        """A checkout took `seconds`; `timed_out` when it gave up after the pool timeout."""


class TimedPool(Pool):
    """Times every checkout (`connect()`): the wait for a free slot plus opening a
    new connection and the pre-ping. Reports to `checkout_observer` once one is
    set (by `shared.metrics`); `recreate()` (run by `engine.dispose()`) carries it
    to the new pool, so a disposed engine stays observed."""

    checkout_observer: CheckoutObserver | None = None

    def connect(self) -> PoolProxiedConnection:
        observer = self.checkout_observer
        if observer is None:
            return super().connect()
        started = time.perf_counter()
        timed_out = False
        try:
            return super().connect()
        except sa_exc.TimeoutError:
            timed_out = True
            raise
        finally:
            observer.checked_out(time.perf_counter() - started, timed_out)

    def recreate(self) -> Self:
        pool = cast(Self, super().recreate())
        pool.checkout_observer = self.checkout_observer
        return pool


class TimedQueuePool(TimedPool, QueuePool):
    """The worker's (sync) pool."""


class TimedAsyncAdaptedQueuePool(TimedPool, AsyncAdaptedQueuePool):
    """The webui's (asyncio) pool."""


class TimedNullPool(TimedPool, NullPool):
    """DATABASE_EXTERNAL_POOLER=true: a connection per checkout (usable by both engines)."""


# --- Redis: checkouts, opened connections, errors -----------------------------------

ERROR_KINDS = ("timeout", "connection", "pool_exhausted")
_WATCHED = (RedisConnectionError, RedisTimeoutError)


class RedisPoolStats:
    """What one Redis pool and its connections report (thread-safe: the sync pool is shared).

    Error kinds: `timeout` (socket timeout), `connection` (refused, reset, closed),
    `pool_exhausted` (no free connection within REDIS_POOL_TIMEOUT). Command errors
    (WRONGTYPE, …) are bugs, not counted. Every Redis call goes through a pooled
    connection, so counting here covers every call site (enqueue, heartbeat,
    reconciler, readiness, events).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: set[object] = set()
        self._opened = 0
        self._errors = dict.fromkeys(ERROR_KINDS, 0)

    def checked_out(self, connection: object) -> None:
        with self._lock:
            self._in_use.add(connection)

    def checked_in(self, connection: object) -> None:
        with self._lock:
            self._in_use.discard(connection)  # one the pool released after a failed connect

    def opened_one(self) -> None:
        with self._lock:
            self._opened += 1

    def forget_connections(self) -> None:
        """The pool dropped all its connections (built, or reset after a fork)."""
        with self._lock:
            self._in_use.clear()
            self._opened = 0

    def error(self, err: BaseException, default: str) -> None:
        """Count `err` once, even when it passes through nested counted calls."""
        if getattr(err, "_sluice_counted", False):
            return
        kind = "timeout" if isinstance(err, RedisTimeoutError) else default
        with self._lock:
            self._errors[kind] += 1
        try:
            err._sluice_counted = True  # type: ignore[attr-defined]
        except AttributeError:
            pass

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    @property
    def opened(self) -> int:
        return self._opened

    def errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)


STATS_KWARG = "sluice_stats"  # how a pool hands its stats to its connections (connection kwargs)


class CountedConnectionMixin(sconn.AbstractConnection):
    """A sync connection that reports connection errors and timeouts to its pool's stats.

    The stats arrive as a connection kwarg, so a pool that RQ rebuilds from this
    pool's `connection_class` and `connection_kwargs` (its scheduler) works too.
    """

    def __init__(self, *args: Any, sluice_stats: RedisPoolStats | None = None, **kwargs: Any):
        self.sluice_stats = sluice_stats or RedisPoolStats()
        super().__init__(*args, **kwargs)

    def connect(self) -> None:
        try:
            super().connect()
        except _WATCHED as err:
            self.sluice_stats.error(err, "connection")
            raise

    def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().send_packed_command(*args, **kwargs)
        except _WATCHED as err:
            self.sluice_stats.error(err, "connection")
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except _WATCHED as err:
            self.sluice_stats.error(err, "connection")
            raise


class CountedConnection(CountedConnectionMixin, sconn.Connection):
    pass


class CountedSSLConnection(CountedConnectionMixin, sconn.SSLConnection):
    pass


class CountedUnixDomainSocketConnection(CountedConnectionMixin, sconn.UnixDomainSocketConnection):
    pass


class AsyncCountedConnectionMixin(aconn.AbstractConnection):
    """The asyncio twin of `CountedConnectionMixin`."""

    def __init__(self, *args: Any, sluice_stats: RedisPoolStats | None = None, **kwargs: Any):
        self.sluice_stats = sluice_stats or RedisPoolStats()
        super().__init__(*args, **kwargs)

    async def connect(self) -> None:
        try:
            await super().connect()
        except _WATCHED as err:
            self.sluice_stats.error(err, "connection")
            raise

    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().send_packed_command(*args, **kwargs)
        except _WATCHED as err:
            self.sluice_stats.error(err, "connection")
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except _WATCHED as err:
            self.sluice_stats.error(err, "connection")
            raise


class AsyncCountedConnection(AsyncCountedConnectionMixin, aconn.Connection):
    pass


class AsyncCountedSSLConnection(AsyncCountedConnectionMixin, aconn.SSLConnection):
    pass


class AsyncCountedUnixDomainSocketConnection(AsyncCountedConnectionMixin, aconn.UnixDomainSocketConnection):
    pass


_COUNTED: dict[type[Any], type[Any]] = {
    sconn.Connection: CountedConnection,
    sconn.SSLConnection: CountedSSLConnection,
    sconn.UnixDomainSocketConnection: CountedUnixDomainSocketConnection,
    aconn.Connection: AsyncCountedConnection,
    aconn.SSLConnection: AsyncCountedSSLConnection,
    aconn.UnixDomainSocketConnection: AsyncCountedUnixDomainSocketConnection,
}


def _counted_kwargs(kwargs: dict[str, Any], default: type[Any]) -> RedisPoolStats:
    """Swap the connection class `from_url` chose (by scheme) for its counted twin,
    and put the pool's stats in the connection kwargs."""
    chosen = kwargs.get("connection_class", default)
    if not issubclass(chosen, (CountedConnectionMixin, AsyncCountedConnectionMixin)):
        if chosen not in _COUNTED:
            raise TypeError(f"no counted variant of Redis connection class {chosen.__name__}")
        chosen = _COUNTED[chosen]
    kwargs["connection_class"] = chosen
    stats = kwargs.setdefault(STATS_KWARG, RedisPoolStats())
    return cast(RedisPoolStats, stats)


class CountedBlockingConnectionPool(sconn.BlockingConnectionPool):
    """The sync blocking pool, counting its checked-out and opened connections and
    the checkouts that found no free connection within its timeout."""

    def __init__(self, **kwargs: Any):
        self.stats = _counted_kwargs(kwargs, sconn.Connection)
        super().__init__(**kwargs)

    def reset(self) -> None:
        super().reset()
        self.stats.forget_connections()

    def make_connection(self) -> Any:
        connection = super().make_connection()
        self.stats.opened_one()
        return connection

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            connection = super().get_connection(*args, **kwargs)
        except _WATCHED as err:
            # A failed connect() was counted by the connection; what is left is the wait.
            self.stats.error(err, "pool_exhausted")
            raise
        self.stats.checked_out(connection)
        return connection

    def release(self, connection: Any) -> None:
        self.stats.checked_in(connection)
        super().release(connection)


class AsyncCountedBlockingConnectionPool(aconn.BlockingConnectionPool):
    """The asyncio twin of `CountedBlockingConnectionPool`."""

    def __init__(self, **kwargs: Any):
        self.stats = _counted_kwargs(kwargs, aconn.Connection)
        super().__init__(**kwargs)

    def reset(self) -> None:
        super().reset()
        self.stats.forget_connections()

    def make_connection(self) -> Any:
        connection = super().make_connection()
        self.stats.opened_one()
        return connection

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            connection = await super().get_connection(*args, **kwargs)
        except _WATCHED as err:
            self.stats.error(err, "pool_exhausted")
            raise
        self.stats.checked_out(connection)
        return connection

    async def release(self, connection: Any) -> None:
        self.stats.checked_in(connection)
        await super().release(connection)
