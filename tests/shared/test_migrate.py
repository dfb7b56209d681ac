"""`sluice migrate` during rollouts: one replica migrates while the others wait,
DDL gives up on a busy table and retries, an older image accepts a newer
schema, and pgvector's version is checked."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from shared.migrate import _LOCK_ID, MigrationError, alembic_config, check_pgvector, run_migrations
from shared.settings import Settings, load_settings
from tests.support.stack import Servers


@pytest.fixture
def fresh_db(servers: Servers) -> Iterator[Settings]:
    """An empty database of its own on the session's embedded Postgres."""
    name = f"migrate_{uuid.uuid4().hex[:10]}"
    admin = servers.postgres.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = servers.postgres.url.rsplit("/", 1)[0] + f"/{name}"
    yield load_settings(database_url=url, redis_url=servers.redis.url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_migrate_twice(fresh_db: Settings) -> None:
    assert run_migrations(fresh_db) == "upgraded"
    assert run_migrations(fresh_db) == "current"


def test_an_older_image_accepts_a_newer_schema(fresh_db: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """A rollback meets the schema of the newer release: it starts, it does not crash-loop."""
    run_migrations(fresh_db)
    with psycopg.connect(fresh_db.database_url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9001_from_a_newer_image'")
    with caplog.at_level(logging.WARNING, logger="sluice.migrate"):
        assert run_migrations(fresh_db) == "newer"
    assert "migrate.schema_newer" in caplog.text and "9001_from_a_newer_image" in caplog.text
    with psycopg.connect(fresh_db.database_url) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row == ("9001_from_a_newer_image",)  # left alone


def _at_revision(settings: Settings, revision: str) -> None:
    engine = create_engine(settings.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def test_ddl_behind_a_long_transaction_times_out_and_retries(
    fresh_db: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """0002 alters `chunks`; a transaction holding that table makes the migration
    give up its lock wait (instead of queueing every query behind it) and retry."""
    _at_revision(fresh_db, "0001")
    with psycopg.connect(fresh_db.database_url) as blocker:
        blocker.execute("LOCK TABLE chunks IN ACCESS SHARE MODE")  # as a long-running SELECT would
        release = threading.Timer(1.5, blocker.rollback)
        release.start()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="sluice.migrate"):
            outcome = run_migrations(fresh_db, lock_timeout_ms=200, attempts=20, backoff_s=0.1)
        release.join()
    assert outcome == "upgraded"
    assert "migrate.lock_timeout attempt=1/20" in caplog.text
    assert time.monotonic() - started >= 1.4


def test_without_retries_left_the_timeout_is_an_error_not_a_hang(fresh_db: Settings) -> None:
    """The init container exits and restarts (visible in events) rather than blocking."""
    _at_revision(fresh_db, "0001")
    with psycopg.connect(fresh_db.database_url) as holder:
        holder.execute("LOCK TABLE chunks IN ACCESS SHARE MODE")
        started = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"):
            run_migrations(fresh_db, lock_timeout_ms=200, attempts=2, backoff_s=0.1)
        assert time.monotonic() - started < 10


def test_one_replica_migrates_while_the_others_wait(
    fresh_db: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    results: list[str] = []
    with psycopg.connect(fresh_db.database_url, autocommit=True) as other_replica:
        other_replica.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        with caplog.at_level(logging.INFO, logger="sluice.migrate"):
            waiter = threading.Thread(target=lambda: results.append(run_migrations(fresh_db)))
            waiter.start()
            time.sleep(1.5)
            assert waiter.is_alive() and not results, "migrated without the lock"
            other_replica.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
            waiter.join(60)
    assert results == ["upgraded"]
    assert "migrate.waiting" in caplog.text


def test_pgvector_version_is_checked() -> None:
    check_pgvector("0.8.0", "0.8.0")
    check_pgvector(None, "0.8.1")  # the first migration creates it
    check_pgvector("0.10.0", None)
    with pytest.raises(MigrationError, match="ALTER EXTENSION vector UPDATE"):
        check_pgvector("0.7.4", "0.8.0")
    with pytest.raises(MigrationError, match="upgrade the pgvector package"):
        check_pgvector("0.7.4", "0.7.4")
    with pytest.raises(MigrationError, match="not available on this Postgres server"):
        check_pgvector(None, None)
    with pytest.raises(MigrationError, match=r"offers only 0\.5\.1"):
        check_pgvector(None, "0.5.1")


def test_the_test_server_has_a_recent_pgvector(fresh_db: Settings) -> None:
    run_migrations(fresh_db)
    with psycopg.connect(fresh_db.database_url) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert row is not None
    (version,) = row
    assert tuple(int(p) for p in version.split(".")) >= (0, 8, 0)


def test_migrations_only_expand() -> None:
    """What makes the older-image case safe: upgrade() adds, never drops or renames.
    A contract step (drop what no running image uses any more) must say so with a
    module-level CONTRACT = "<why no image still needs it>"."""
    import ast
    from pathlib import Path

    import shared.migrations

    folder = Path(shared.migrations.__file__).parent / "versions"
    files = sorted(folder.glob("*.py"))
    assert files
    for file in files:
        tree = ast.parse(file.read_text())
        if any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "CONTRACT" for t in n.targets)
               for n in tree.body):
            continue
        (upgrade,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upgrade"]
        source = ast.unparse(upgrade)
        for contracting in ("op.drop_", "op.rename_table", "new_column_name", "DROP ", "RENAME "):
            assert contracting not in source, f"{file.name}: upgrade() uses {contracting!r}"
