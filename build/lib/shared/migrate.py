"""`sluice migrate`: bring the schema to this image's Alembic head, safely during rollouts.

Every webui and worker pod runs it in an init container, so it must be safe to
run many times, concurrently, and from an image older than the database:

- One replica migrates, the others wait: a Postgres advisory lock, taken
  with `pg_try_advisory_xact_lock` in a loop that logs while it waits. The
  others then find the schema current and start.
- Expand, then contract. A migration only adds (tables, nullable or defaulted
  columns, indexes); dropping or renaming waits for a later release, once no
  running image uses the old shape. So an image that meets a schema *newer*
  than its own (a rollback, or an old pod restarting during a rollout) runs on
  it: this logs `migrate.schema_newer` and succeeds instead of failing with
  Alembic's "Can't locate revision" (which left pods in Init:CrashLoopBackOff).
- `lock_timeout`: DDL waits at most LOCK_TIMEOUT_MS for its table lock. Waiting
  longer behind a long transaction would queue every query on that table
  behind the migration; instead the migration rolls back and retries with
  backoff.
- pgvector >= 0.8 (iterative index scans, which owner-filtered search relies
  on) is checked, with what to do if it is missing or older.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from shared.db import create_worker_engine
from shared.settings import Settings

log = logging.getLogger("sluice.migrate")
_LOCK_ID = 51171  # arbitrary but stable advisory-lock key for migrations
LOCK_TIMEOUT_MS = 5_000
ATTEMPTS = 6
BACKOFF_S = 2.0  # doubled after each lock timeout, at most 30 s
PGVECTOR_MIN = (0, 8, 0)

Outcome = Literal["upgraded", "current", "newer"]


class MigrationError(RuntimeError):
    """The database cannot run Sluice as it is; the message says what to do."""


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def _version(text_: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text_.split(".") if part.isdigit())


def check_pgvector(installed: str | None, available: str | None) -> None:
    """Raise MigrationError unless pgvector >= 0.8 is installed or can be created."""
    need = ".".join(map(str, PGVECTOR_MIN))
    why = f"Sluice needs pgvector >= {need} (iterative index scans for owner-filtered search)"
    if installed is not None:
        if _version(installed) >= PGVECTOR_MIN:
            return
        if available is not None and _version(available) >= PGVECTOR_MIN:
            raise MigrationError(
                f"{why}; the database has {installed} and the server offers {available}: run "
                "`ALTER EXTENSION vector UPDATE;` in this database as the extension's owner"
            )
        raise MigrationError(
            f"{why}; the database has {installed} and the server offers nothing newer: upgrade "
            "the pgvector package on the Postgres server (or your managed service's extension "
            "version), then run `ALTER EXTENSION vector UPDATE;`"
        )
    if available is None:
        raise MigrationError(
            f"{why}; it is not available on this Postgres server: install it (package "
            "postgresql-<major>-pgvector, or enable the `vector` extension of your managed service)"
        )
    if _version(available) < PGVECTOR_MIN:
        raise MigrationError(f"{why}; the server offers only {available}: upgrade the pgvector package")


def _pgvector(conn: Connection) -> tuple[str | None, str | None]:
    row = conn.execute(text(
        "SELECT installed_version, default_version FROM pg_available_extensions WHERE name = 'vector'"
    )).first()
    return (row[0], row[1]) if row else (None, None)


def _wait_for_lock(conn: Connection) -> None:
    """Take the migration lock for this transaction, logging while another replica holds it."""
    started = time.monotonic()
    next_log = 0.0
    while not conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK_ID}).scalar():
        waited = time.monotonic() - started
        if waited >= next_log:
            log.info("migrate.waiting another process is migrating; waited=%.0fs", waited)
            next_log = waited + 10
        time.sleep(0.5)


def _migrate_once(conn: Connection, lock_timeout_ms: int, settings: Settings) -> Outcome:
    _wait_for_lock(conn)
    # Before any DDL: a missing or old pgvector fails here with what to do, not
    # halfway through with "could not open extension control file".
    check_pgvector(*_pgvector(conn))
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    cfg.attributes["settings"] = settings  # e.g. SEARCH_TEXT_CONFIG for 0004
    script = ScriptDirectory.from_config(cfg)
    known = {rev.revision for rev in script.walk_revisions()}
    current = set(MigrationContext.configure(conn).get_current_heads())
    if current - known:
        log.warning(
            "migrate.schema_newer database=%s image_head=%s: a newer image migrated this "
            "database; this one runs on it (migrations are expand-then-contract)",
            ",".join(sorted(current)), script.get_current_head(),
        )
        return "newer"
    if current == set(script.get_heads()):
        return "current"
    # For this transaction only: every DDL statement below waits at most this long.
    conn.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
    command.upgrade(cfg, "head")
    check_pgvector(*_pgvector(conn))  # the extension the first migration created
    return "upgraded"


def _is_lock_timeout(err: OperationalError) -> bool:
    return getattr(err.orig, "sqlstate", None) == "55P03"  # lock_not_available


def run_migrations(
    settings: Settings, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS, attempts: int = ATTEMPTS,
    backoff_s: float = BACKOFF_S,
) -> Outcome:
    """Upgrade to head (see the module docstring); returns what was found."""
    # No statement timeout: building an index may legitimately take longer than a
    # request may. Lock waits are bounded by lock_timeout instead.
    engine = create_worker_engine(
        settings.model_copy(update={"worker_db_pool_size": 1, "db_statement_timeout_ms": 0}), "cli"
    )
    try:
        for attempt in range(1, attempts + 1):
            try:
                with engine.begin() as conn:
                    outcome = _migrate_once(conn, lock_timeout_ms, settings)
                log.info("migrate.done outcome=%s", outcome)
                return outcome
            except OperationalError as err:
                if not _is_lock_timeout(err) or attempt == attempts:
                    raise
                delay = min(backoff_s * 2 ** (attempt - 1), 30.0)
                log.warning(
                    "migrate.lock_timeout attempt=%d/%d: a long transaction holds a table the "
                    "migration needs; rolled back, retrying in %.1fs", attempt, attempts, delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        engine.dispose()
