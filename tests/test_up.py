"""`sluice up`: starts everything on embedded servers, serves, stops clean, keeps data,
restarts a crashed child, and leaves nothing behind when it is killed itself."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import free_port, pid_alive, upload, wait_for_status, wait_until


def _start(data: Path, port: int, log_path: Path, workers: int = 1, webui: int = 1,
           env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "UPLOAD_DIR")}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", "--data-dir", str(data),
             "--port", str(port), "--workers", str(workers), "--webui", str(webui)],
            env={**env, "EMBED_THREADS": "1", **(env_extra or {})}, stdout=log,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 180, "sluice up ready")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> list[int]:
    """Ctrl-C `sluice up`; return the descendants that are still alive afterwards."""
    family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
    return [pid for pid in family if pid_alive(pid)]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside /tmp/pytest-of-root (see the `servers` fixture in conftest.py).
    root = Path(tempfile.mkdtemp(prefix="sluice-up-test-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_sluice_up_serves_stops_clean_and_keeps_data(tmp_path: Path, data_dir: Path) -> None:
    data, log = data_dir / "data", tmp_path / "up.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(data, port, log)
    try:
        key = (data / "admin.key").read_text().strip()
        wait_until(lambda: key in log.read_text(), 10, "the key printed for the person who ran it")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            fid = upload(c, "hello.md", f"# Hi\n\nmarsh harrier {uuid.uuid4()}".encode()).json()["id"]
            assert wait_for_status(c, fid)["status"] == "done"
            hits = c.post("/api/v1/search", json={"query": "marsh harrier"}).json()["hits"]
            assert hits and hits[0]["file_id"] == fid
    finally:
        leftovers = _stop(proc)
    assert leftovers == [], f"processes left behind: {leftovers}"
    pidfile = data / "postgres" / "pgdata" / "postmaster.pid"
    assert not pidfile.exists(), "postgres still running"

    # Second start on the same folder: same key, same file, still searchable.
    proc = _start(data, port, log)
    try:
        assert (data / "admin.key").read_text().strip() == key
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            assert c.get(f"/api/v1/files/{fid}").json()["status"] == "done"
            assert c.post("/api/v1/search", json={"query": "marsh harrier"}).json()["hits"]
    finally:
        assert _stop(proc) == []


def _children(proc: subprocess.Popen[bytes], role: str) -> list[int]:
    """PIDs of `sluice up`'s direct children running `sluice <role>`."""
    pids = []
    for child in psutil.Process(proc.pid).children():
        try:
            if role in child.cmdline()[3:4]:  # python -m shared.cli <role> ...
                pids.append(child.pid)
        except psutil.Error:  # a zombie not reaped yet, or gone
            pass
    return pids


def test_crashed_worker_is_restarted_and_nothing_outlives_a_killed_up(
    tmp_path: Path, data_dir: Path
) -> None:
    data, log = data_dir / "data", tmp_path / "up.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(data, port, log, workers=2)
    try:
        wait_until(lambda: "Sluice is running" in log.read_text(), 30, "sluice up supervising")
        webui = _children(proc, "webui")
        workers = _children(proc, "worker")
        assert len(webui) == 1
        assert len(workers) == 2
        victim = workers[0]
        victim_family = [p.pid for p in psutil.Process(victim).children(recursive=True)]
        os.kill(victim, signal.SIGKILL)

        def restarted() -> bool:
            now = _children(proc, "worker")
            return len(now) == 2 and victim not in now

        wait_until(restarted, 30, "the killed worker restarted")
        assert proc.poll() is None, "sluice up stopped when one worker died"
        assert "up.child_restarted name=worker-1" in log.read_text()
        assert "killed by SIGKILL" in log.read_text()
        assert _children(proc, "webui") == webui, "the webui went away with the worker"
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        assert [pid for pid in victim_family if pid_alive(pid)] == [], "the dead worker's helpers"

        # Now `sluice up` itself dies without any chance to clean up.
        family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        pg_pid = int((data / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0])
        redis_pid = int((data / "redis" / "redis.pid").read_text().split()[0])
        assert {pg_pid, redis_pid, *webui} <= set(family)
        proc.kill()
        proc.wait(10)
        wait_until(lambda: not [pid for pid in family if pid_alive(pid)], 30,
                   "every process `sluice up` started to stop")
    finally:
        if proc.poll() is None:
            _stop(proc)


def _requests_served(metrics_url: str) -> float:
    """GET /api/v1/files requests this webui answered, from its own /metrics."""
    text = httpx.get(metrics_url, timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "http_requests_total" and s.labels.get("handler") == "/api/v1/files")


def _two_free_ports() -> int:
    """A port p with p + 1 also free: `sluice up` gives webui i the metrics port base + i."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
                return base
            except OSError:
                continue
    raise AssertionError("no two consecutive free ports")


def test_two_webuis_behind_the_front_both_serve(tmp_path: Path, data_dir: Path) -> None:
    data, log = data_dir / "data", tmp_path / "up.log"
    port, metrics = free_port(), _two_free_ports()
    proc = _start(data, port, log, workers=1, webui=2,
                  env_extra={"WEBUI_METRICS_PORT": str(metrics)})
    try:
        wait_until(lambda: "Sluice is running" in log.read_text(), 60, "sluice up supervising")
        assert len(_children(proc, "webui")) == 2
        assert len(_children(proc, "front")) == 1
        key = (data / "admin.key").read_text().strip()
        for _ in range(6):  # a fresh connection each time: the front turns per connection
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/files",
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert r.status_code == 200
        served = [_requests_served(f"http://127.0.0.1:{metrics + i}/metrics") for i in (0, 1)]
        assert served == [3, 3], f"requests per webui: {served}"
    finally:
        assert _stop(proc) == []
