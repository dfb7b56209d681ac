"""Alembic migrations (run with `sluice migrate`)."""
