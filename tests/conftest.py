"""Fixtures: real PostgreSQL + pgvector and real Redis (from PyPI packages), the real
model, and the real `sluice webui` / `sluice worker` processes started by the tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine

from helpers import free_port, wait_until
from shared.accounts import create_key, ensure_user
from shared.db import create_worker_engine, sync_session_factory
from shared.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.migrate import run_migrations
from shared.settings import Settings, load_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Short intervals so retries, heartbeats and the reconciler act within a test's time.
TEST_ENV = {
    "JOB_TIMEOUT": "60",
    "JOB_MAX_RETRIES": "2",
    "JOB_RETRY_DELAY": "1",
    "JOB_MONITORING_INTERVAL": "2",
    "WORKER_MAINTENANCE_INTERVAL": "10",
    "RECONCILE_INTERVAL": "1",
    "RECONCILE_QUEUED_GRACE": "3",
    "EMBED_THREADS": "1",
    "MAX_UPLOAD_MB": "2",
    "PARSE_TIMEOUT": "30",
    "HF_HUB_OFFLINE": "1",
    "LOG_LEVEL": "INFO",
    "WORKER_METRICS_PORT": "0",  # several workers per machine; `stack` gives its worker a free port
}


@dataclass
class Servers:
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis


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


class Proc:
    """A `sluice …` child process with its log in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args], env={**os.environ, **env},
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def start_worker(env: dict[str, str], log_path: Path, redis: Redis) -> Proc:
    """Start `sluice worker` and wait until it has booted (its facts are in Redis)."""
    before = set(redis.keys("sluice:worker-facts:*"))
    proc = Proc(["worker"], env, log_path)

    def booted() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"worker exited during boot:\n{proc.log()[-3000:]}")
        return any(int(redis.hget(k, "pid") or 0) == proc.pid
                   for k in set(redis.keys("sluice:worker-facts:*")) - before)

    wait_until(booted, 120, "worker boot")
    return proc


def start_webui(env: dict[str, str], log_path: Path, port: int, *, wait: bool = True) -> Proc:
    """Start `sluice webui` on `port`; with `wait`, return once /readyz answers 200."""
    webui = Proc(["webui", "--port", str(port)], env, log_path)
    if wait:
        wait_webui_ready(webui, f"http://127.0.0.1:{port}")
    return webui


def wait_webui_ready(webui: Proc, url: str, timeout: float = 120) -> None:
    def ready() -> bool:
        if webui.popen.poll() is not None:
            raise AssertionError(f"webui exited:\n{webui.log()[-3000:]}")
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, "webui ready")


@dataclass
class Stack:
    url: str
    webui: Proc
    worker: Proc
    worker_metrics_url: str = ""


@pytest.fixture(scope="session")
def stack(
    env: dict[str, str], db_engine: Engine, redis_client: Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """One webui and one worker for the whole session, as `sluice up` would run them."""
    logs = tmp_path_factory.mktemp("logs")
    port = free_port()
    webui = start_webui(env, logs / "webui.log", port, wait=False)  # boots while the worker does
    metrics_port = free_port()
    metrics_env = {"WORKER_METRICS_PORT": str(metrics_port), "WORKER_METRICS_HOST": "127.0.0.1"}
    worker = start_worker({**env, **metrics_env}, logs / "worker.log", redis_client)
    url = f"http://127.0.0.1:{port}"
    wait_webui_ready(webui, url)
    try:
        yield Stack(url, webui, worker, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        worker.stop()
        webui.stop()


@dataclass
class ApiUser:
    id: str
    email: str
    key: str


def make_user(db_engine: Engine, label: str = "user") -> ApiUser:
    email = f"{label}-{time.monotonic_ns()}@example.test"
    with sync_session_factory(db_engine)() as session, session.begin():
        user = ensure_user(session, email)
        key = create_key(session, user, name="test")
        return ApiUser(str(user.id), email, key)


@pytest.fixture
def user(db_engine: Engine) -> ApiUser:
    return make_user(db_engine)


@pytest.fixture
def client(stack: Stack, user: ApiUser) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {user.key}"}, timeout=30
    ) as c:
        yield c
