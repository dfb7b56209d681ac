"""Fixtures: real PostgreSQL + pgvector and real Redis (from PyPI packages), the real
model, and the real `sluice webui` / `sluice worker` processes started by the tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine

from shared.db import create_worker_engine
from shared.local.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.migrate import run_migrations
from shared.settings import Settings, load_settings
from tests.support.helpers import free_port
from tests.support.stack import (
    TEST_ENV,
    ApiUser,
    Servers,
    Stack,
    make_user,
    start_webui,
    start_worker,
    wait_webui_ready,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    # Not under /tmp/pytest-of-root: each new pytest session (as root) resets that
    # folder to 0700, which would lock the unprivileged postgres user out of a
    # server that another session is still using.
    root = Path(tempfile.mkdtemp(prefix="sluice-test-"))
    pg = EmbeddedPostgres(root / "postgres")
    rd = EmbeddedRedis(root / "redis")
    try:
        pg.start()
        rd.start()
        yield Servers(pg, rd)
    finally:
        rd.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def env(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the processes under test (and the Settings of the test itself)."""
    uploads = tmp_path_factory.mktemp("uploads")
    return {
        **TEST_ENV,
        "DATABASE_URL": servers.postgres.url,
        "REDIS_URL": servers.redis.url,
        "UPLOAD_DIR": str(uploads),
    }


@pytest.fixture(scope="session")
def settings(env: dict[str, str]) -> Settings:
    return load_settings(**{k.lower(): v for k, v in env.items() if k != "HF_HUB_OFFLINE"})


@pytest.fixture(scope="session")
def db_engine(settings: Settings) -> Iterator[Engine]:
    run_migrations(settings)
    engine = create_worker_engine(settings.model_copy(update={"worker_db_pool_size": 3}), "cli")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_client(servers: Servers) -> Iterator[Redis]:
    client = Redis.from_url(servers.redis.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def stack(
    env: dict[str, str], db_engine: Engine, redis_client: Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """One webui and one worker for the whole session, as `sluice up` would run them."""
    logs = tmp_path_factory.mktemp("logs")
    port, webui_metrics_port = free_port(), free_port()
    webui_env = {**env, "WEBUI_METRICS_PORT": str(webui_metrics_port),
                 "WEBUI_METRICS_HOST": "127.0.0.1"}
    webui = start_webui(webui_env, logs / "webui.log", port, wait=False)  # boots while the worker does
    metrics_port = free_port()
    metrics_env = {"WORKER_METRICS_PORT": str(metrics_port), "WORKER_METRICS_HOST": "127.0.0.1"}
    worker = start_worker({**env, **metrics_env}, logs / "worker.log", redis_client)
    url = f"http://127.0.0.1:{port}"
    wait_webui_ready(webui, url)
    try:
        yield Stack(url, webui, worker, f"http://127.0.0.1:{metrics_port}/metrics",
                    f"http://127.0.0.1:{webui_metrics_port}/metrics")
    finally:
        worker.stop()
        webui.stop()


@pytest.fixture
def user(db_engine: Engine) -> ApiUser:
    return make_user(db_engine)


@pytest.fixture
def client(stack: Stack, user: ApiUser) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {user.key}"}, timeout=30
    ) as c:
        yield c
