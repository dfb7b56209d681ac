"""`sluice up`: starts everything on embedded servers, serves, stops clean, keeps data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.helpers import free_port, pid_alive, upload, wait_for_status, wait_until


def _start(data: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "UPLOAD_DIR")}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", "--data-dir", str(data),
             "--port", str(port), "--workers", "1"],
            env={**env, "EMBED_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT,
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
