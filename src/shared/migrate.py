"""`sluice migrate`: bring the schema to the latest Alembic revision.

Runs under a Postgres advisory lock so two migration runs (a Job and a
developer, two replicas at boot) never race.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from shared.db import create_worker_engine
from shared.settings import Settings

log = logging.getLogger("sluice.migrate")
_LOCK_ID = 51171  # arbitrary but stable advisory-lock key for migrations


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def run_migrations(settings: Settings) -> None:
    # No statement timeout: waiting for another pod's migration (the advisory lock)
    # or building an index may legitimately take longer than a request may.
    engine = create_worker_engine(
        settings.model_copy(update={"worker_db_pool_size": 1, "db_statement_timeout_ms": 0}), "cli"
    )
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            cfg.attributes["settings"] = settings  # e.g. SEARCH_TEXT_CONFIG for 0004
            command.upgrade(cfg, "head")
        log.info("migrate.done revision=head")
    finally:
        engine.dispose()
