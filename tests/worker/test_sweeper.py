"""The sweeper: a webui killed mid-upload leaves a `.part` behind; stored bytes without a
row are left by a crash between rename and commit. The sweep removes both, counts them,
and never touches a stored file with a row, nor anything younger than the grace."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine

from shared.db import sync_session_factory
from shared.queue import make_queue
from shared.settings import Settings
from shared.storage import incoming_dir, new_storage_key, stored_path
from tests.support.helpers import free_port, upload, wait_until
from tests.support.stack import Proc, make_user, start_webui
from worker.reconciler import reconcile_once
from worker.sweeper import SweeperCollector, sweep


def _removed(kind: str) -> tuple[float, float]:
    """(files, bytes) the sweeper counted for `kind`, as /metrics shows them."""
    values = {(s.name, s.labels["kind"]): s.value
              for m in SweeperCollector().collect() for s in m.samples}
    return (values[("sluice_sweeper_removed_files_total", kind)],
            values[("sluice_sweeper_removed_bytes_total", kind)])


def _slow_upload(url: str, key: str, stop: threading.Event) -> None:
    """A multipart upload that trickles in and never ends (until the server dies)."""
    boundary = "sweeperboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"slow.txt\"\r\nContent-Type: text/plain\r\n\r\n").encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"POST /api/v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: 1500000\r\n\r\n".encode() + head)
        s.sendall(b"x" * 1_100_000)  # past the webui's 1 MB write buffer: bytes on disk
        while not stop.is_set():
            try:
                s.sendall(b"slow line of text\n" * 50)
            except OSError:
                return  # the server is gone
            time.sleep(0.05)


@pytest.fixture
def webui(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Proc, str, Path]]:
    """A webui of its own, on its own upload folder: the sweep looks at that folder only."""
    uploads = tmp_path / "uploads"
    port = free_port()
    proc = start_webui({**env, "UPLOAD_DIR": str(uploads)}, tmp_path / "webui.log", port)
    yield proc, f"http://127.0.0.1:{port}", uploads
    proc.stop()


def test_sweep_after_a_webui_killed_mid_upload_leaves_nothing(
    webui: tuple[Proc, str, Path], db_engine: Engine,
) -> None:
    proc, url, uploads = webui
    user = make_user(db_engine, "sweeper")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {user.key}"}) as c:
        r = upload(c, "kept.txt", f"kept {uuid.uuid4()}".encode())
        assert r.status_code == 202
    kept_files = [p for p in uploads.rglob("*") if p.is_file() and p.parent.name != ".incoming"]
    assert len(kept_files) == 1

    stop = threading.Event()
    slow = threading.Thread(target=_slow_upload, args=(url, user.key, stop), daemon=True)
    slow.start()
    parts = wait_until(lambda: [p for p in incoming_dir(uploads).glob("*.part")
                                if p.stat().st_size > 0], 30, "the upload streaming to disk")
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(10)
    stop.set()
    slow.join(10)
    assert [p for p in parts if p.exists()] == parts, "the kill leaves the partial upload"
    # As if the webui had died between moving the bytes into place and committing the row.
    orphan = stored_path(uploads, new_storage_key())
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"bytes nobody will ever read")

    sessions = sync_session_factory(db_engine)
    young = sweep(sessions, uploads, grace_s=3600)  # all of it is younger than the grace
    assert sum(young.files.values()) == 0
    assert orphan.exists() and all(p.exists() for p in parts)

    before = {kind: _removed(kind) for kind in ("partial", "orphan")}
    sizes = {"partial": sum(p.stat().st_size for p in parts), "orphan": orphan.stat().st_size}
    time.sleep(1.1)
    result = sweep(sessions, uploads, grace_s=1)
    assert result.files == {"partial": len(parts), "orphan": 1}
    assert result.bytes == sizes
    left = sorted(p for p in uploads.rglob("*") if p.is_file())
    assert left == kept_files, "only the stored file with a row is left"
    for kind in ("partial", "orphan"):
        files, size = _removed(kind)
        assert files - before[kind][0] == result.files[kind]
        assert size - before[kind][1] == sizes[kind]


def test_the_reconciler_pass_sweeps(
    settings: Settings, db_engine: Engine, redis_client: Redis, tmp_path: Path,
) -> None:
    uploads = tmp_path / "uploads"
    orphan = stored_path(uploads, new_storage_key())
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left behind")
    part = incoming_dir(uploads) / f"{uuid.uuid4().hex}.part"
    part.parent.mkdir()
    part.write_bytes(b"half an upload")
    time.sleep(1.1)
    swept = settings.model_copy(update={"upload_dir": uploads, "sweep_grace": 1.0,
                                        "sweep_interval": 0.0})
    reconcile_once(sync_session_factory(db_engine), make_queue(redis_client, swept), swept)
    assert not orphan.exists()
    assert not part.exists()
