"""No secret (API key, database password) in job arguments, Redis, logs,
metrics or error messages."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from shared.queue import UNIT_FUNC
from tests.security import hostile
from tests.support.helpers import free_port, upload, wait_for_status
from tests.support.stack import (
    ApiUser,
    Proc,
    Stack,
    make_user,
    start_webui,
    start_worker,
    unit_jobs,
    wait_webui_ready,
)


def _job_hash(redis: Redis, job_id: str) -> dict[str, bytes]:
    """Every field of the RQ job hash, `data` inflated (RQ zlib-compresses it)."""
    fields: dict[Any, Any] = redis.hgetall(f"rq:job:{job_id}")
    raw = {bytes(k).decode(): bytes(v) for k, v in fields.items()}
    assert raw, "job hash not found"
    try:
        raw["data"] = zlib.decompress(raw["data"])
    except zlib.error:
        pass  # stored uncompressed
    return raw


def _redis_dump(redis: Redis) -> Iterator[bytes]:
    """Every key name and value in Redis, whatever its type (the client returns bytes)."""
    r: Any = redis
    for key in r.scan_iter(count=1000):
        yield key
        kind = r.type(key)
        if kind == b"string":
            yield r.get(key) or b""
        elif kind == b"hash":
            for field, value in r.hgetall(key).items():
                yield field
                yield value
        elif kind == b"list":
            yield from r.lrange(key, 0, -1)
        elif kind == b"set":
            yield from r.smembers(key)
        elif kind == b"zset":
            yield from r.zrange(key, 0, -1)
        elif kind == b"stream":
            for _, entry in r.xrange(key):
                for field, value in entry.items():
                    yield field
                    yield value


def _inflated(value: bytes) -> bytes:
    try:
        return value + zlib.decompress(value)
    except zlib.error:
        return value


def _assert_not_in_redis(redis: Redis, secrets: list[str]) -> None:
    needles = [s.encode() for s in secrets]
    for value in _redis_dump(redis):
        blob = _inflated(value)
        found = [n for n in needles if n in blob]
        assert not found, f"secret in Redis: {found} in {value[:200]!r}"


def _key_secret(key: str) -> str:
    """The part of an API key after its public prefix (`slk_<prefix>_<secret>`)."""
    return key.split("_", 2)[2]


def test_job_arguments_carry_only_ids(
    client: httpx.Client, user: ApiUser, redis_client: Redis, db_engine: Engine
) -> None:
    r = upload(client, "plain.txt", f"job arguments {uuid.uuid4()}\n".encode())
    assert r.status_code == 202, r.text
    file_id = r.json()["id"]
    assert wait_for_status(client, file_id, timeout=60)["status"] == "done"
    jobs = unit_jobs(db_engine, redis_client, file_id)
    # Its parse unit's, and its one segment's unless the parse went on to embed it.
    assert 1 <= len(jobs) <= 2
    for job in jobs:
        assert job.func_name == UNIT_FUNC
        assert [type(a) for a in job.args] == [int, int]  # (unit id, attempt)
        assert job.kwargs == {}
        for field, value in _job_hash(redis_client, job.id).items():
            for secret in (user.key, _key_secret(user.key), user.email, file_id):
                assert secret.encode() not in value, f"{secret!r} in job field {field}"


def test_api_keys_never_reach_the_logs_or_redis(
    stack: Stack, client: httpx.Client, user: ApiUser, redis_client: Redis
) -> None:
    """The key in use, and a wrong key presented to the API, appear in no log line."""
    wrong = f"slk_{uuid.uuid4().hex[:12]}_{uuid.uuid4().hex}"
    assert httpx.get(f"{stack.url}/api/v1/me", headers={"Authorization": f"Bearer {wrong}"},
                     timeout=30).status_code == 401
    assert httpx.get(f"{stack.url}/api/v1/me", headers={"Authorization": wrong},
                     timeout=30).status_code == 401
    r = upload(client, "bomb.pdf", hostile.pdf_flate_bomb())
    assert r.status_code == 202, r.text
    failed = wait_for_status(client, r.json()["id"], timeout=60)
    assert failed["status"] == "failed"
    assert client.get(f"/api/v1/files/{uuid.uuid4()}").status_code == 404
    secrets = [user.key, _key_secret(user.key), wrong, _key_secret(wrong)]
    for name, log in (("webui", stack.webui.log()), ("worker", stack.worker.log())):
        found = [s for s in secrets if s in log]
        assert not found, f"API key in the {name} log: {found}"
    assert not any(s in (failed["error"] or "") for s in secrets)
    _assert_not_in_redis(redis_client, secrets)


# --- A stack whose database URL carries a password -----------------------------


@dataclass
class CanaryStack:
    url: str
    webui: Proc
    worker: Proc
    password: str
    metrics_url: str
    webui_metrics_url: str


@pytest.fixture(scope="module")
def canary_stack(
    env: dict[str, str], db_engine: Engine, redis_client: Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CanaryStack]:
    """Its own webui and worker (own queue, DEBUG logs) on the suite's servers. The
    embedded Postgres asks for the password generated for it (shared.local), a
    random string that appears nowhere else: only a leak would make it visible."""
    url = make_url(env["DATABASE_URL"])
    password = url.password
    assert isinstance(password, str) and len(password) >= 16, "the test servers use a password"
    logs: Path = tmp_path_factory.mktemp("canary-logs")
    metrics_port, webui_metrics_port = free_port(), free_port()
    canary_env = {
        **env, "DATABASE_URL": url.render_as_string(hide_password=False),
        "QUEUE_NAME": f"canary{uuid.uuid4().hex[:8]}", "LOG_LEVEL": "DEBUG",
        "WORKER_METRICS_PORT": str(metrics_port), "WORKER_METRICS_HOST": "127.0.0.1",
        "WEBUI_METRICS_PORT": str(webui_metrics_port), "WEBUI_METRICS_HOST": "127.0.0.1",
    }
    port = free_port()
    webui = start_webui(canary_env, logs / "webui.log", port, wait=False)
    worker = start_worker(canary_env, logs / "worker.log", redis_client)
    descendants = psutil.Process(worker.pid).children(recursive=True)
    try:
        wait_webui_ready(webui, f"http://127.0.0.1:{port}")
        yield CanaryStack(f"http://127.0.0.1:{port}", webui, worker, password,
                          f"http://127.0.0.1:{metrics_port}/metrics",
                          f"http://127.0.0.1:{webui_metrics_port}/metrics")
    finally:
        worker.stop()
        webui.stop()
        for proc in descendants:  # the worker's scheduler and parser server, if left behind
            if proc.is_running():
                proc.kill()


def test_database_password_and_api_key_never_leak(
    canary_stack: CanaryStack, db_engine: Engine, redis_client: Redis
) -> None:
    user = make_user(db_engine, "canary")
    with httpx.Client(base_url=canary_stack.url,
                      headers={"Authorization": f"Bearer {user.key}"}, timeout=30) as c:
        done = upload(c, "fine.txt", f"a normal document {uuid.uuid4()}\n".encode())
        bomb = upload(c, "bomb.pdf", hostile.pdf_flate_bomb())
        refused = upload(c, "setup.pdf", hostile.MZ)
        assert done.status_code == 202 and bomb.status_code == 202, (done.text, bomb.text)
        ids = [done.json()["id"], bomb.json()["id"]]
        bodies = [wait_for_status(c, fid, timeout=60) for fid in ids]
        assert [b["status"] for b in bodies] == ["done", "failed"], bodies
        for fid in ids:
            jobs = unit_jobs(db_engine, redis_client, fid)
            assert jobs and all([type(a) for a in j.args] == [int, int] for j in jobs)
        assert c.get("/api/v1/me").status_code == 200

    secrets = [canary_stack.password, user.key, _key_secret(user.key)]
    texts = {
        "webui log": canary_stack.webui.log(),
        "worker log": canary_stack.worker.log(),
        "upload refusal": refused.text,
        "file errors": " ".join(b["error"] or "" for b in bodies),
        "webui /metrics": httpx.get(canary_stack.webui_metrics_url, timeout=30).text,
        "worker /metrics": httpx.get(canary_stack.metrics_url, timeout=30).text,
    }
    assert "DEBUG" in texts["worker log"], "the worker did not log at DEBUG"
    for where, content in texts.items():
        found = [s for s in secrets if s in content]
        assert not found, f"secret in the {where}: {found}"
    _assert_not_in_redis(redis_client, secrets)
