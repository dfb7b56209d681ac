"""The fault tests' fixture: one isolated `FaultStack` per module (see `tests.faults.stack`)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from shared.db import create_worker_engine
from shared.local.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.migrate import run_migrations
from shared.settings import load_settings
from tests.faults.stack import FaultStack
from tests.support.stack import TEST_ENV


@pytest.fixture(scope="module")
def fault_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultStack]:
    root = tmp_path_factory.mktemp("fault")  # logs and uploads, kept for a look afterwards
    (root / "logs").mkdir()
    # Server data outside /tmp/pytest-of-<user>: every pytest session that starts (other
    # people's, on a shared machine) resets that folder to 0700, and the Postgres system
    # user could then not reach its data folder when a test restarts it.
    data = Path(tempfile.mkdtemp(prefix="sluice-faults-"))
    pg = EmbeddedPostgres(data / "postgres")
    rd = EmbeddedRedis(data / "redis")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, data, ignore_errors=True)
        cleanup.callback(pg.stop)
        cleanup.callback(rd.stop)
        pg.start()
        rd.start()
        env = {
            **TEST_ENV,
            # These tests hammer the API as one user: a limit they never reach, but the
            # limiter (and its use of Redis) stays on the path of every request.
            "RATE_LIMIT_PER_MINUTE": "1000000",
            "UPLOADS_IN_FLIGHT_PER_USER": "1000",
            **getattr(request.module, "FAULT_ENV", {}),
            "DATABASE_URL": pg.url,
            "REDIS_URL": rd.url,
            "UPLOAD_DIR": str(root / "uploads"),
        }
        settings = load_settings(**{k.lower(): v for k, v in env.items() if k != "HF_HUB_OFFLINE"})
        run_migrations(settings)
        db = create_worker_engine(settings.model_copy(update={"worker_db_pool_size": 3}), "cli")
        stack = FaultStack(root, pg, rd, env, settings, db, Redis.from_url(rd.url))
        cleanup.callback(stack.close)
        yield stack
