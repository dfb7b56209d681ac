"""The HTTP API (FastAPI): uploads, file status, search, health."""
