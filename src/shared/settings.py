"""One typed Settings object, read from the environment once per process.

Variable names are the seed system's (`DATABASE_POOL_SIZE`, `JOB_TIMEOUT`, …) so
operators' ConfigMaps keep working; the *defaults* are safe ones. An invalid
value fails at start with the variable's name; nothing falls back silently.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(RuntimeError):
    """A setting is missing or invalid; the message names the variable."""


# libpq's TLS parameters, written once in DATABASE_URL's query string
# (`?sslmode=verify-full&sslrootcert=/etc/pki/db-ca.crt`). psycopg (libpq)
# reads them as they are; shared.db translates them into an SSLContext for
# asyncpg, which would reject them as keyword arguments.
PG_TLS_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def postgres_tls(url: str) -> dict[str, str]:
    """The TLS parameters of a DATABASE_URL; ValueError if they cannot mean what libpq means."""
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    if "ssl" in query:
        raise ValueError(
            "use libpq's ?sslmode=... (disable, require, verify-ca, verify-full), not asyncpg's "
            "?ssl=...: Sluice translates sslmode for both of its drivers"
        )
    tls = {k: v[-1] for k, v in query.items() if k in PG_TLS_PARAMS}
    mode = tls.get("sslmode", "prefer")
    if mode not in PG_SSLMODES:
        raise ValueError(f"sslmode={mode!r} is not one of {', '.join(PG_SSLMODES)}")
    if mode.startswith("verify-") and not tls.get("sslrootcert"):
        raise ValueError(
            f"sslmode={mode} needs sslrootcert=<CA file> (or sslrootcert=system for the "
            "system's CAs) to verify the server's certificate against"
        )
    if ("sslkey" in tls) != ("sslcert" in tls):
        raise ValueError("sslcert and sslkey go together (a client certificate and its key)")
    return tls


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- Postgres -----------------------------------------------------------
    database_url: str = Field(
        default="", description="postgresql://user:pass@host:port/db; empty under `sluice up`"
    )
    database_pool_size: int = Field(default=10, ge=0, le=500)
    database_pool_max_overflow: int = Field(default=5, ge=0, le=500)
    database_pool_timeout: float = Field(default=10.0, gt=0, le=600)
    database_pool_recycle: int = Field(default=1800, ge=-1)
    database_pool_pre_ping: bool = True
    # NullPool (DATABASE_POOL_SIZE=0) opens a connection per checkout: what took the
    # seed system down. It is only sane when PgBouncer (or similar) pools for us.
    database_external_pooler: bool = False
    worker_db_pool_size: int = Field(default=2, ge=1, le=10)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)

    # --- Redis / RQ ---------------------------------------------------------
    redis_url: str = ""
    redis_max_connections: int = Field(default=20, ge=2, le=10_000)
    redis_pool_timeout: float = Field(default=5.0, gt=0, le=120)
    redis_socket_timeout: float = Field(default=10.0, gt=0, le=600)
    queue_name: str = Field(default="ingest", pattern=r"^[A-Za-z0-9_-]+$")
    job_timeout: int = Field(default=600, ge=5, le=86_400)
    job_max_retries: int = Field(default=3, ge=0, le=20)
    job_retry_delay: int = Field(default=30, ge=0, le=86_400)
    job_monitoring_interval: int = Field(default=10, ge=1, le=300)
    # A running job's heartbeat lives JOB_MONITORING_INTERVAL + this; a worker killed
    # mid-job is noticed (and its job retried) that long after its last beat.
    worker_heartbeat_grace: int = Field(default=60, ge=1, le=3_600)
    worker_maintenance_interval: int = Field(default=60, ge=1, le=3_600)
    reconcile_interval: float = Field(default=30.0, gt=0, le=3_600)
    # Work units (parse, segments) are claimed in Postgres with a lease that the worker's
    # heartbeat renews every JOB_MONITORING_INTERVAL; a dead worker's unit is offered again
    # once its lease has run out (found by the reconciler within RECONCILE_INTERVAL).
    unit_lease_seconds: int = Field(default=30, ge=2, le=3_600)
    # Units handed to RQ per live worker (RQ stays shallow; the backlog waits in Postgres,
    # where the dispatcher takes turns across users). 1: a user's backlog delays another
    # user's unit by at most about two units per worker.
    dispatch_per_worker: int = Field(default=1, ge=1, le=100)
    dispatch_interval: float = Field(default=1.0, gt=0, le=60)
    # Most units (parse or segment) of one user dispatched or running at once.
    user_units_in_flight: int = Field(default=8, ge=1, le=10_000)
    reconcile_queued_grace: float = Field(default=30.0, ge=0, le=86_400)
    # Leftover upload bytes (partial uploads, stored files without a row): how often the
    # reconciler's sweep runs per process, and how old a file must be to be swept.
    sweep_interval: float = Field(default=600.0, ge=0, le=86_400)
    sweep_grace: float = Field(default=3_600.0, ge=0, le=30 * 86_400)
    # The worker's own /metrics (Prometheus scrapes the pod IP); 0 = not served.
    worker_metrics_port: int = Field(default=9100, ge=0, le=65_535)
    worker_metrics_host: str = "0.0.0.0"
    # The webui's /metrics, on its own port: the API port (the Route) never serves them.
    webui_metrics_port: int = Field(default=9200, ge=0, le=65_535)
    webui_metrics_host: str = "0.0.0.0"

    # --- Pipeline -----------------------------------------------------------
    embedding_model: str = Field(
        default="", description="local model folder; empty = the packaged all-MiniLM-L6-v2"
    )
    embedding_dim: int = Field(default=384, ge=1, le=16_000)
    # Same model files, three runtimes (see shared/embedding.py and the README's
    # "Embedding backends"): worker and webui must agree; search refuses chunks
    # embedded in another space.
    # Default onnx-int8: ~2x onnx's rate, each text run alone so its vector never depends
    # on its batch; recall@10 as fp32, MRR@10 -2.2 % on the default (hybrid) search (README
    # "Embedding backends"). onnx gives torch's own vectors (the other, fp32, space).
    embedding_backend: Literal["torch", "onnx", "onnx-int8"] = "onnx-int8"
    # A worker whose EMBEDDING_BACKEND is in another space than the active one starts a
    # background re-embed into its space (shared/reembed.py, README "Switching the
    # encoder"); false: only `sluice reembed start` does.
    reembed_auto: bool = True
    embedding_cache_dir: str = Field(
        default="", description="ONNX graphs; empty = $XDG_CACHE_HOME or ~/.cache, /sluice/onnx"
    )
    chunk_size: int = Field(default=256, ge=16, le=8_192)
    chunk_overlap: int = Field(default=32, ge=0, le=4_096)
    embed_batch_size: int = Field(default=32, ge=1, le=1_024)
    embed_threads: int = Field(default=0, ge=0, le=256, description="0 = from the CPUs given")
    # Embedding and storing happen in segments of at most this many chunks, each its own
    # job (loadtests/bench_segments.py measured the per-segment overhead).
    segment_chunks: int = Field(default=256, ge=1, le=100_000)
    # A worker running a segment also claims other ready segments (any file, any owner,
    # in the dispatcher's fair order) up to this many chunks in all: fewer jobs, and for
    # torch one call whose batches fill up across files. 0 = one unit per job. The ONNX
    # backends embed and store the claimed segments one by one, so a file is stored as
    # soon as its own chunks are. `make compare` (onnx-int8, one worker): 256 → 102.0 s,
    # 64 → 100.6 s, 0 → 108.8 s; parses run ahead by a quarter of this (dispatch.py).
    embed_fill_chunks: int = Field(default=256, ge=0, le=100_000)
    # A file parsed while no segment is embedding anywhere is cut into one segment per
    # live worker, each at least this many chunks, so the idle fleet embeds it together
    # (worker/spread.py; `make bench-first`: first file 2.86 / 2.44 s against 3.76 / 3.38 s).
    # 0 = off: SEGMENT_CHUNKS alone decides.
    spread_min_chunks: int = Field(default=16, ge=0, le=100_000)
    # A file whose text makes more chunks fails at once, before any embedding.
    max_chunks_per_file: int = Field(default=60_000, ge=1, le=10_000_000)
    parse_timeout: float = Field(default=120.0, gt=0, le=3_600)
    parse_memory_mb: int = Field(default=1024, ge=128, le=65_536)

    # --- Webui --------------------------------------------------------------
    max_upload_mb: int = Field(default=50, ge=1, le=10_240)
    upload_dir: Path = Path("./.sluice/uploads")
    search_top_k_max: int = Field(default=50, ge=1, le=1_000)
    # 400: with other users' near-duplicate chunks in the index, the owner-filtered HNSW
    # scan finds 0.93 of the exact top 10 at 400 against 0.83 at 100 (loadtests/eval_retrieval.py).
    hnsw_ef_search: int = Field(default=400, ge=10, le=1_000)
    # Full-text half of hybrid search. The tsvector column is generated with this
    # Postgres text search configuration by migration 0004 (a generated column needs a
    # fixed regconfig); the webui queries with the configuration the column was built
    # with, so changing it later means rebuilding the column (README, "Search").
    search_text_config: str = Field(default="english", pattern=r"^[a-z_][a-z0-9_]*$")
    # Calibrated relevance (0-1, webui/search_rank.py): no hits at all ("no close match")
    # unless the best reaches SEARCH_MIN_RELEVANCE; then hits under
    # SEARCH_HIT_MIN_RELEVANCE are dropped. Either way, flagged "weak" if asked for.
    # Chosen with `make eval` (README, "Search").
    search_min_relevance: float = Field(default=0.1, ge=0.0, le=1.0)
    search_hit_min_relevance: float = Field(default=0.02, ge=0.0, le=1.0)
    # Query encoder micro-batching: concurrent queries wait at most this long to be
    # encoded together, in batches of at most QUERY_BATCH_MAX.
    query_batch_max: int = Field(default=16, ge=1, le=256)
    query_batch_wait_ms: float = Field(default=5.0, ge=0.0, le=1_000.0)
    # Open WebUI on top (issue 15, webui/openai_compat.py, webui/loader.py). /v1/embeddings
    # is encoded by the worker fleet (one job on the interactive queue per request), never
    # in the webui, so a document's chunks cannot delay queries. At most
    # OPENAI_EMBED_IN_FLIGHT requests wait for a worker per webui process, the rest get
    # 429 + Retry-After; OPENAI_EMBED_TIMEOUT bounds queue wait + encode (then 504); a
    # request whose texts would make a job larger than OPENAI_EMBED_MAX_JOB_KB gets 413.
    openai_embed_in_flight: int = Field(default=16, ge=1, le=1_000)
    openai_embed_timeout: int = Field(default=60, ge=1, le=600)
    openai_embed_max_job_kb: int = Field(default=1_024, ge=16, le=16_384)
    openai_embed_max_inputs: int = Field(default=64, ge=1, le=2_048)
    openai_embed_max_chars: int = Field(default=20_000, ge=1, le=1_000_000)
    # PUT /process (Open WebUI's external document loader): parsed by the worker fleet as a
    # parse-only job; at most this many wait per webui process, then 429.
    loader_concurrency: int = Field(default=8, ge=1, le=1_000)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65_535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # On SIGTERM the webui stops accepting connections and lets open requests
    # (uploads, event streams) finish for this long before cutting them. The
    # cluster sets it to cover a maximal upload; its grace period follows.
    webui_drain_seconds: int = Field(default=30, ge=1, le=3_600)
    redis_async_max_connections: int = Field(default=10, ge=2, le=1_000)

    # --- Accounts and abuse limits -----------------------------------------
    # Behind OpenShift's oauth-proxy sidecar: trust its user header, but only
    # when enabled and only from the proxy's own address (the sidecar).
    trust_forwarded_user: bool = False
    forwarded_user_header: str = "X-Forwarded-Email"
    trusted_proxies: str = Field(default="127.0.0.1/32,::1/128", description="CIDRs, comma-separated")
    rate_limit_per_minute: int = Field(default=600, ge=0, description="per user; 0 = off")
    # Per client address (X-Forwarded-For from a trusted proxy); 0 = off.
    auth_failures_per_minute: int = Field(default=20, ge=0)
    user_quota_mb: int = Field(default=5_120, ge=1, description="stored bytes per user")
    # 8: a browser opens at most 6 connections per host, so a folder dropped on the page
    # never meets it; a script sending more gets 429 + Retry-After and retries.
    uploads_in_flight_per_user: int = Field(default=8, ge=1, le=1_000)
    # Uploads in their Postgres phases at once, per webui process; the others wait,
    # oldest request first (webui/admission.py): a burst is answered in the order it came
    # (`make bench-first`: first of 100 uploads answered in 0.32-0.40 s, 0.61-0.73 s without).
    upload_admission_slots: int = Field(default=4, ge=1, le=1_000)
    event_streams_per_user: int = Field(default=10, ge=1, le=1_000)
    # Every request body except the upload's (JSON: search, admin); bigger is 413.
    max_request_body_kb: int = Field(default=256, ge=1, le=65_536)
    upload_max_parts: int = Field(default=8, ge=1, le=1_000)

    # Benchmark-only: reload the model for every job, as the seed system did.
    # Used by loadtests to reproduce the old setup; never set in production.
    bench_reload_model_per_job: bool = False

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        try:
            postgres_tls(self.database_url)
        except ValueError as err:
            raise ValueError(f"DATABASE_URL: {err}") from None
        if self.database_pool_size == 0 and not self.database_external_pooler:
            raise ValueError(
                "DATABASE_POOL_SIZE=0 selects NullPool: a new Postgres connection for every "
                "request and job, which exhausted max_connections in the system Sluice "
                "replaces. Set DATABASE_POOL_SIZE>0, or set DATABASE_EXTERNAL_POOLER=true "
                "if PgBouncer (or another pooler) is in front of Postgres."
            )
        try:
            self.trusted_proxy_networks  # noqa: B018  (validates the CIDRs)
        except ValueError as err:
            raise ValueError(f"TRUSTED_PROXIES: {err}") from None
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"CHUNK_OVERLAP ({self.chunk_overlap}) must be smaller than "
                f"CHUNK_SIZE ({self.chunk_size})"
            )
        return self

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(c.strip()) for c in self.trusted_proxies.split(",") if c.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def max_request_body_bytes(self) -> int:
        return self.max_request_body_kb * 1024

    @property
    def openai_embed_max_job_bytes(self) -> int:
        return self.openai_embed_max_job_kb * 1024

    @property
    def uses_null_pool(self) -> bool:
        return self.database_pool_size == 0

    @property
    def lease_seconds(self) -> int:
        """A lease outlives at least two missed heartbeats."""
        return max(self.unit_lease_seconds, 2 * self.job_monitoring_interval + 1)


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = "_".join(str(p) for p in e["loc"]).upper()
        name = loc or "settings"
        lines.append(f"{name}: {e['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment (plus overrides), or raise SettingsError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        raise SettingsError(_describe(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's Settings, built on first use (never at import time)."""
    return load_settings()


def cpu_quota() -> float:
    """CPUs this process may use: the cgroup v2 quota if set, else the affinity mask."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            return max(float(quota) / float(period), 1.0)
    except (OSError, ValueError):
        pass
    return float(len(os.sched_getaffinity(0)))
