"""Engine factories. Processes own the instances; this module only builds them.

The webui gets one async (asyncpg) engine per process, built in its lifespan.
The worker gets one small sync (psycopg) engine, built at boot, never shared
across a fork or an event loop. Both carry an `application_name` so
`pg_stat_activity` shows who holds which connection.

TLS: DATABASE_URL carries libpq's sslmode/sslrootcert/sslcert/sslkey once.
psycopg passes them to libpq unchanged; for asyncpg they are taken out of the
URL and turned into the SSLContext libpq would use (`asyncpg_ssl`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from shared.pools import TimedAsyncAdaptedQueuePool, TimedNullPool, TimedQueuePool
from shared.settings import PG_TLS_PARAMS, Settings, postgres_tls

log = logging.getLogger("sluice.db")

Component = Literal["webui", "worker", "cli"]


def database_url(settings: Settings, driver: Literal["asyncpg", "psycopg"]) -> URL:
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (run `sluice up` for embedded servers)")
    url = make_url(settings.database_url).set(drivername=f"postgresql+{driver}")
    if driver == "asyncpg":
        # asyncpg takes TLS as one `ssl` argument (asyncpg_ssl), not libpq's names.
        url = url.difference_update_query(PG_TLS_PARAMS)
    return url


def asyncpg_ssl(tls: dict[str, str]) -> ssl.SSLContext | str | None:
    """What libpq does for these TLS parameters, as asyncpg's `ssl` argument.

    None: asyncpg's default, which is libpq's (prefer). `require` with a root
    certificate verifies the chain, as libpq does (verify-ca).
    """
    mode = tls.get("sslmode", "prefer")
    if mode == "disable":
        return "disable"
    if mode in ("allow", "prefer") and "sslcert" not in tls:
        return mode if "sslmode" in tls else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    root = tls.get("sslrootcert")
    if mode.startswith("verify-") or (mode == "require" and root):
        if root == "system":
            context.load_default_certs()
        else:
            context.load_verify_locations(cafile=root)
        context.check_hostname = mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if "sslcert" in tls:
        context.load_cert_chain(tls["sslcert"], keyfile=tls.get("sslkey"))
    return context


def _pool_kwargs(settings: Settings, size: int, overflow: int, *, is_async: bool) -> dict[str, Any]:
    # Timed pools (shared.pools) let /metrics time checkouts; they behave as their bases.
    if settings.uses_null_pool:
        # Only reachable with DATABASE_EXTERNAL_POOLER=true (see Settings).
        return {"poolclass": TimedNullPool}
    return {
        "poolclass": TimedAsyncAdaptedQueuePool if is_async else TimedQueuePool,
        "pool_size": size,
        "max_overflow": overflow,
        "pool_timeout": settings.database_pool_timeout,
        "pool_recycle": settings.database_pool_recycle,
        "pool_pre_ping": settings.database_pool_pre_ping,
    }


def pool_limit(settings: Settings, component: Component) -> int:
    """Most connections one process of this component may hold."""
    if component == "worker":
        return settings.worker_db_pool_size
    return settings.database_pool_size + settings.database_pool_max_overflow


def _log_pool(settings: Settings, component: Component, size: int, overflow: int) -> None:
    if settings.uses_null_pool:
        log.warning(
            "db.pool component=%s NullPool (external pooler declared): one server "
            "connection per checkout, the pooler must bound them",
            component,
        )
        return
    log.info(
        "db.pool component=%s application_name=sluice-%s pool_size=%d max_overflow=%d "
        "max_connections_used=%d timeout=%.1fs recycle=%ds pre_ping=%s",
        component, component, size, overflow, size + overflow,
        settings.database_pool_timeout, settings.database_pool_recycle,
        settings.database_pool_pre_ping,
    )


def create_webui_engine(settings: Settings, component: Component = "webui") -> AsyncEngine:
    """The webui's async engine: DATABASE_POOL_SIZE + DATABASE_POOL_MAX_OVERFLOW."""
    size, overflow = settings.database_pool_size, settings.database_pool_max_overflow
    _log_pool(settings, component, size, overflow)
    server_settings = {
        "application_name": f"sluice-{component}",
        "statement_timeout": str(settings.db_statement_timeout_ms),
    }
    connect_args: dict[str, Any] = {"server_settings": server_settings, "timeout": 10}
    tls = asyncpg_ssl(postgres_tls(settings.database_url))
    if tls is not None:
        connect_args["ssl"] = tls
    if settings.database_external_pooler:
        # PgBouncer in transaction mode cannot keep prepared statements per session.
        connect_args["statement_cache_size"] = 0
    return create_async_engine(
        database_url(settings, "asyncpg"),
        connect_args=connect_args,
        **_pool_kwargs(settings, size, overflow, is_async=True),
    )


def create_worker_engine(settings: Settings, component: Component = "worker") -> Engine:
    """The worker's sync engine: a tiny pool (one job at a time + the reconciler)."""
    size = settings.worker_db_pool_size
    _log_pool(settings, component, size, 0)
    connect_args = {
        "application_name": f"sluice-{component}",
        "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
        "connect_timeout": 10,
    }
    if settings.database_external_pooler:
        connect_args["prepare_threshold"] = None
    return create_engine(
        database_url(settings, "psycopg"),
        connect_args=connect_args,
        **_pool_kwargs(settings, size, 0, is_async=False),
    )


def async_session_factory(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def sync_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def one_off_session(settings: Settings, component: Component = "cli") -> Iterator[Session]:
    """A session in one transaction on a one-connection engine, disposed afterwards:
    for short-lived commands (`sluice keys`, `sluice users`, `sluice up`'s admin key)."""
    engine = create_worker_engine(settings.model_copy(update={"worker_db_pool_size": 1}), component)
    try:
        with sync_session_factory(engine)() as session, session.begin():
            yield session
    finally:
        engine.dispose()
