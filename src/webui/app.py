"""The webui application factory. Nothing connects or loads at import time."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from shared.db import async_session_factory, create_webui_engine, pool_limit
from shared.encoders import load_embedder
from shared.metrics_queue import process_metrics
from shared.queue import make_interactive_queue, make_queue
from shared.redis_pool import create_async_redis, create_redis
from shared.settings import Settings, get_settings
from webui.admission import Admission
from webui.errors import install_error_handlers
from webui.events import EventHub
from webui.guard import RequestGuard
from webui.limits import RateLimits
from webui.loader import fleet_loader
from webui.metrics import MetricsServer, WebuiMetrics, instrument
from webui.openai_compat import FleetEmbeddings
from webui.query_encoder import QueryEncoder
from webui.routes import admin, collections, events, files, health, me, openwebui, page, search
from webui.search import column_text_config
from webui.state import AppState, OpenWebUIParts

log = logging.getLogger("sluice.webui")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    registry = CollectorRegistry()  # one per app: tests build several apps in one process
    webui_metrics = WebuiMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        engine = create_webui_engine(settings)
        redis = create_redis(settings, "webui")
        embedder = await run_in_threadpool(load_embedder, settings, 1)
        await run_in_threadpool(embedder.warm_up)
        settings.upload_dir.mkdir(parents=True, exist_ok=True)
        aredis = create_async_redis(settings, "webui")
        hub = EventHub(aredis)
        await hub.start()
        encoder = QueryEncoder(embedder, max_batch=settings.query_batch_max,
                               max_wait_s=settings.query_batch_wait_ms / 1000, registry=registry)
        await encoder.start()
        text_config = await column_text_config(engine, settings.search_text_config)
        queue = make_queue(redis, settings)
        interactive = make_interactive_queue(redis, settings)
        app.state.sluice = AppState(
            settings=settings, engine=engine, session_factory=async_session_factory(engine),
            redis=redis, aredis=aredis, queue=queue, embedder=embedder,
            query_encoder=encoder, text_config=text_config, events=hub,
            limits=RateLimits(aredis, settings.rate_limit_per_minute,
                              settings.auth_failures_per_minute),
            metrics=webui_metrics,
            openwebui=OpenWebUIParts(FleetEmbeddings(interactive, settings, dim=embedder.dim),
                                     fleet_loader(interactive, settings)),
            admission=Admission(settings.upload_admission_slots),
        )
        admission = app.state.sluice.admission
        webui_metrics.upload_admission_waiting.set_function(lambda: admission.waiting)
        metrics = process_metrics(
            registry, engine=engine.sync_engine, db_limit=pool_limit(settings, "webui"),
            redis=redis, aredis=aredis, queues=[interactive, queue], settings=settings,
        )
        server = MetricsServer(settings, registry)
        log.info("webui.ready model=%s backend=%s model_load=%.2fs", embedder.name,
                 embedder.backend, embedder.load_seconds)
        try:
            yield
        finally:
            server.close()
            metrics.close()
            await encoder.stop()
            await hub.stop()
            await aredis.aclose()
            await aredis.connection_pool.disconnect()  # a pool passed in is not closed by aclose()
            await engine.dispose()
            redis.close()
            redis.connection_pool.disconnect()

    app = FastAPI(
        title="Sluice", version="0.1.0", lifespan=lifespan,
        # No 307 to the slash-toggled path: an API client sends the documented path,
        # and the redirect let raw request paths into metric labels.
        redirect_slashes=False,
        description="Upload documents; they are parsed, chunked and embedded for search.",
    )
    install_error_handlers(app)
    api = "/api/v1"
    app.include_router(files.router, prefix=api)
    app.include_router(search.router, prefix=api)
    app.include_router(events.router, prefix=api)
    app.include_router(me.router, prefix=api)
    app.include_router(admin.router, prefix=api)
    app.include_router(collections.router, prefix=api)
    app.include_router(collections.admin_router, prefix=api)
    app.include_router(openwebui.router)
    app.include_router(page.router)
    app.include_router(health.router)
    app.add_middleware(RequestGuard)
    instrument(app, registry)  # outermost: it also counts what the guard refuses
    return app
