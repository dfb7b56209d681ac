"""What a worker process builds once at boot and every job reuses.

Settings, the DB engine, the Redis pool, the app config and the embedding
model are created here, before the first job, and never per job: rebuilding
them per job is what made the seed system slow and leak connections.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq import Queue
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from shared import encoders
from shared.db import create_worker_engine, sync_session_factory
from shared.embedding import Embedder, embed_threads
from shared.models import AppConfig
from shared.queue import make_queue
from shared.redis_pool import create_redis
from shared.settings import Settings
from shared.work import Claim
from worker.pipeline.chunk import Chunker

log = logging.getLogger("sluice.worker")
LOADS: Counter[str] = Counter()
"""Model and app-config loads of this process, counted where the loads happen."""


@dataclass(frozen=True)
class PipelineConfig:
    """Pipeline knobs: Settings, overridden by rows of the `app_config` table."""

    chunk_size: int
    chunk_overlap: int
    embed_batch_size: int

    @classmethod
    def from_sources(cls, settings: Settings, rows: dict[str, Any]) -> PipelineConfig:
        def pick(key: str, default: int) -> int:
            value = rows.get(f"pipeline.{key}", default)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"app_config pipeline.{key} must be a non-negative integer")
            return value

        return cls(
            chunk_size=pick("chunk_size", settings.chunk_size),
            chunk_overlap=pick("chunk_overlap", settings.chunk_overlap),
            embed_batch_size=pick("embed_batch_size", settings.embed_batch_size),
        )


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    redis: Redis
    queue: Queue
    config: PipelineConfig
    embedder: Embedder
    chunker: Chunker
    name: str
    counters: Counter[str] = field(default_factory=Counter)
    _held: tuple[Claim, ...] = ()
    _held_lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, claims: Iterable[Claim]) -> None:
        """The units whose leases the heartbeat renews (empty: nothing held)."""
        with self._held_lock:
            self._held = tuple(claims)

    def let_go(self, claim: Claim) -> None:
        """One unit is finished (stored, failed or skipped): stop renewing its lease."""
        with self._held_lock:
            self._held = tuple(c for c in self._held if c != claim)

    @property
    def held(self) -> tuple[Claim, ...]:
        with self._held_lock:
            return self._held

    def facts(self) -> dict[str, str]:
        """Published in Redis so operators (and tests) can see what this worker loaded."""
        return {
            "pid": str(os.getpid()),
            "model": self.embedder.name,
            "embedding_backend": self.embedder.backend,
            "model_loads": str(LOADS["model_loads"]),
            "config_loads": str(LOADS["config_loads"]),
            "embed_threads": str(self.embedder.threads),
            "jobs_done": str(self.counters["units_done"]),
            "jobs_failed": str(self.counters["units_failed"]),
            "files_done": str(self.counters["files_done"]),
            "db_pool_size": str(self.settings.worker_db_pool_size),
            # NullPool (behind PgBouncer) has no checked-out count: nothing is pooled here.
            "db_checked_out": str(getattr(self.engine.pool, "checkedout", lambda: 0)()),
        }


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker runtime not built: jobs run only inside `sluice worker`")
    return _runtime


def load_app_config(session_factory: sessionmaker[Session]) -> dict[str, Any]:
    with session_factory() as session:
        rows = {row.key: row.value for row in session.scalars(select(AppConfig))}
    LOADS["config_loads"] += 1
    return rows


def load_embedder(settings: Settings, processes_sharing_cpus: int = 1) -> Embedder:
    embedder = encoders.load_embedder(settings, embed_threads(settings, processes_sharing_cpus))
    LOADS["model_loads"] += 1
    return embedder


def boot(settings: Settings, processes_sharing_cpus: int = 1) -> Runtime:
    """Build everything a job needs, once. Logs what was loaded and how long it took."""
    global _runtime
    started = time.perf_counter()
    engine = create_worker_engine(settings)
    # A forked child (RQ's scheduler) must not reuse the parent's sockets.
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    session_factory = sync_session_factory(engine)
    redis = create_redis(settings, "worker")
    rows = load_app_config(session_factory)
    config = PipelineConfig.from_sources(settings, rows)
    embedder = load_embedder(settings, processes_sharing_cpus)
    warm = embedder.warm_up()
    chunker = Chunker(
        embedder.tokenizer_file, chunk_size=config.chunk_size,
        overlap=config.chunk_overlap, model_max=embedder.max_seq_length,
    )
    runtime = Runtime(
        settings=settings, engine=engine, session_factory=session_factory, redis=redis,
        queue=make_queue(redis, settings), config=config, embedder=embedder, chunker=chunker,
        name=f"sluice-worker.{socket.gethostname()}.{os.getpid()}",
    )
    _runtime = runtime
    log.info(
        "worker.boot model=%s backend=%s dim=%d threads=%d model_load=%.2fs warm_up=%.2fs "
        "config=%s total=%.2fs",
        embedder.name, embedder.backend, embedder.dim, embedder.threads, embedder.load_seconds, warm,
        config, time.perf_counter() - started,
    )
    return runtime
