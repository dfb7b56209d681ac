"""Local running: embedded PostgreSQL + pgvector and Redis from Python packages, and
`sluice up`. Installed with the `local` extra; not in the service images."""
