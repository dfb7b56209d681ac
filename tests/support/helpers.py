"""Plain helper functions for tests (factories and waits), importable as `tests.support.helpers`."""

from __future__ import annotations

import io
import os
import socket
import time
import uuid
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_text(label: str = "doc") -> str:
    """Text that is unique per call, so the same-bytes dedup never merges test files."""
    return f"{label} {uuid.uuid4().hex}\n"


def upload(
    client: httpx.Client, name: str, data: bytes, content_type: str = "application/octet-stream"
) -> httpx.Response:
    return client.post("/api/v1/files", files={"file": (name, io.BytesIO(data), content_type)})


def wait_for_status(
    client: httpx.Client, file_id: str, statuses: set[str] | None = None, timeout: float = 90
) -> dict[str, Any]:
    statuses = statuses or {"done", "failed"}
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/api/v1/files/{file_id}")
        if r.status_code == 200:
            body = r.json()
            if body["status"] in statuses:
                return body
        time.sleep(0.2)
    raise AssertionError(f"file {file_id} did not reach {statuses} in {timeout}s; last: {body}")


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
