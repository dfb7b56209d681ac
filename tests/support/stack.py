"""The suite's building blocks: the test environment, `sluice …` child processes,
and users with API keys. Fixtures that use them live in tests/conftest.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer
from sqlalchemy import Engine, func, insert, text

from shared.accounts import create_key, ensure_user
from shared.db import sync_session_factory
from shared.local.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.local.lifeline import die_with_parent, tether
from shared.models import File, WorkUnit
from shared.queue import unit_job_id
from tests.support.helpers import wait_until

# Short intervals so retries, heartbeats and the reconciler act within a test's time.
TEST_ENV = {
    "EVENT_STREAMS_PER_USER": "50",  # test_events opens 50 per user; the cap test opens one more
    "WEBUI_METRICS_PORT": "0",  # several webuis per machine; `stack` gives its webui a free port
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


class Proc:
    """A `sluice …` child process with its log in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # Its own process group, dies with the test session even when that is SIGKILLed
        # (a run cut short), with what it forked: see shared.local.lifeline.
        self.argv = [sys.executable, "-m", "shared.cli", *args]
        self.popen = subprocess.Popen(
            self.argv, env={**os.environ, **env},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        tether(self.popen)

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

    try:
        wait_until(booted, 120, "worker boot")
    except BaseException:
        proc.stop()  # closes its log too: the failure is the boot's, not a leaked file's
        raise
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
class SideWebuis:
    """Two more webuis on the test's Postgres and Redis: `tight` on the stack worker's
    queues with OPENAI_EMBED_IN_FLIGHT=2 and OPENAI_EMBED_TIMEOUT=`tight_timeout_s`;
    `lonely` on a QUEUE_NAME no worker listens to."""
    tight: str
    lonely: str
    tight_timeout_s: int


@dataclass
class Stack:
    url: str
    webui: Proc
    worker: Proc
    worker_metrics_url: str = ""
    webui_metrics_url: str = ""


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


@dataclass
class Servers:
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis


def insert_file(
    db_engine: Engine, owner_id: str, storage_key: str, *, unit_state: str = "pending",
    attempt: int = 0,
) -> tuple[str, int]:
    """A `queued` file row and its parse unit, as the webui's upload commits them (the
    bytes are the caller's business). Returns (file id, unit id)."""
    fid = uuid.uuid4()
    with db_engine.begin() as conn:
        conn.execute(insert(File).values(
            id=fid, owner_id=uuid.UUID(owner_id), filename="late.txt", size_bytes=10,
            sha256=uuid.uuid4().hex * 2, storage_key=storage_key, status="queued"))
        unit_id = conn.execute(insert(WorkUnit).values(
            file_id=fid, owner_id=uuid.UUID(owner_id), kind="parse", ordinal=0, state=unit_state,
            attempt=attempt, dispatched_at=func.now() if unit_state == "dispatched" else None,
        ).returning(WorkUnit.id)).scalar_one()
    return str(fid), int(unit_id)


def unit_jobs(db_engine: Engine, redis: Redis, file_id: str) -> list[Job]:
    """The RQ jobs that delivered the file's units (latest attempt each), in unit order.
    A unit claimed straight from Postgres (by a fill, or a parse going on) has none."""
    with db_engine.connect() as conn:
        units = conn.execute(text(
            "SELECT id, attempt FROM work_units WHERE file_id = :i ORDER BY id"),
            {"i": uuid.UUID(file_id)}).all()
    return [Job.fetch(unit_job_id(u, a), connection=redis, serializer=JSONSerializer)
            for u, a in units if Job.exists(unit_job_id(u, a), connection=redis)]
