"""Resources one webui process owns, built in the lifespan and disposed at shutdown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from shared.embedding import Embedder
from shared.settings import Settings
from webui.admission import Admission
from webui.events import EventHub
from webui.limits import RateLimits
from webui.loader import FleetLoader
from webui.metrics import WebuiMetrics
from webui.openai_compat import FleetEmbeddings
from webui.query_encoder import QueryEncoder


@dataclass
class OpenWebUIParts:
    """The Open WebUI endpoints' own parts (routes/openwebui.py); both are answered by
    the worker fleet through the interactive queue."""
    embeddings: FleetEmbeddings
    loader: FleetLoader


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[Any]
    redis: Redis  # the one sync pool: RQ enqueues (run in threads) and health checks
    aredis: AsyncRedis  # the one async pool: event-stream reader and per-user limits
    queue: Queue  # work units; Open WebUI's jobs go on the interactive queue (openwebui)
    embedder: Embedder
    # Queries are encoded in micro-batches with one intra-op thread: the webui's CPU
    # belongs to request handling, not to a pile of parallel encodes.
    query_encoder: QueryEncoder
    text_config: str  # the regconfig chunks.tsv was generated with (webui/search.py)
    events: EventHub  # the one event-stream reader of this process
    limits: RateLimits  # moving windows in Redis, on `aredis`
    metrics: WebuiMetrics
    openwebui: OpenWebUIParts
    admission: Admission  # uploads' turns at the database, oldest first (UPLOAD_ADMISSION_SLOTS)
