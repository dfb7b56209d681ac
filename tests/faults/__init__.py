"""Fault tests: each module runs its own Postgres, Redis, webui and workers."""
