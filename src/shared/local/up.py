"""`sluice up`: the whole stack on one machine, with embedded Postgres and Redis.

With no DATABASE_URL / REDIS_URL it starts PostgreSQL + pgvector and Redis from
Python packages in the data folder, migrates, makes sure an admin key exists,
then runs the webui (or several behind a round-robin front, see `front`) and N
workers as child processes and keeps them running:
a crashed webui or worker is restarted with backoff (see `supervise`). Ctrl-C
(or SIGTERM) stops everything it started, workers first finishing their
current job; if `sluice up` itself is killed, its children stop with it (see
`lifeline`). Data survives a restart.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from shared.local.lifeline import close_lifeline
from shared.local.supervise import Supervisor
from shared.settings import SettingsError, load_settings

log = logging.getLogger("sluice.up")
_STOP_GRACE_S = 60


def _ensure_admin_key(settings_dir: Path) -> str:
    from shared.accounts import create_key, ensure_user
    from shared.db import one_off_session
    from shared.models import ApiKey
    from shared.security import key_matches, split_prefix

    key_file = settings_dir / "admin.key"
    with one_off_session(load_settings()) as session:
        if key_file.exists():
            key = key_file.read_text().strip()
            prefix = split_prefix(key)
            row = session.query(ApiKey).filter_by(prefix=prefix).one_or_none() if prefix else None
            if row is not None and row.revoked_at is None and key_matches(key, row.key_hash):
                return key
        user = ensure_user(session, "admin@localhost", name="admin", is_admin=True)
        key = create_key(session, user, name="sluice up")
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    return key


def _wait_ready(url: str, sup: Supervisor, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.tick()
        # An error exit before the stack ever served is a set-up error (bad settings, port
        # in use), not a crash to ride out: say so instead of restarting it forever.
        if failed := sup.failed():
            raise RuntimeError(f"{failed[0].name} exited during start-up (see its log above)")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the webui did not become ready within {timeout:.0f} s")


def _start_webuis(sup: Supervisor, env: dict[str, str], n: int, port: int) -> list[str]:
    """One webui on `port`; or n on internal ports behind the round-robin front on `port`.

    Each serves /metrics on loopback on its own port (9200, 9201, …; 0 = off), like workers.
    Returns the URLs to wait for: every webui, then the public one.
    """
    host = env.get("WEBUI_METRICS_HOST", "127.0.0.1")
    if n <= 1:
        sup.start("webui", ["webui", "--host", "127.0.0.1", "--port", str(port)],
                  {**env, "WEBUI_METRICS_HOST": host})
        return [f"http://127.0.0.1:{port}"]
    metrics_port = int(env.get("WEBUI_METRICS_PORT", "9200"))
    backends = []
    for i in range(n):
        internal = free_port()
        backends.append(f"127.0.0.1:{internal}")
        sup.start(f"webui-{i + 1}", ["webui", "--host", "127.0.0.1", "--port", str(internal)],
                  {**env, "WEBUI_METRICS_HOST": host,
                   "WEBUI_METRICS_PORT": str(metrics_port + i if metrics_port else 0)})
    sup.start("front", ["front", "--port", str(port),
                        *(arg for b in backends for arg in ("--backend", b))], env)
    return [f"http://{b}" for b in backends] + [f"http://127.0.0.1:{port}"]


def free_port() -> int:
    """A port free now; the webui binds it a moment later (nothing else on loopback races us
    in practice, and a clash shows as a start-up error, not a silent wrong route)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_up(args: argparse.Namespace) -> int:
    from shared.local.embedded import EmbeddedPostgres, EmbeddedRedis
    from shared.migrate import run_migrations

    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("UPLOAD_DIR", str(data / "uploads"))
    env.setdefault("HF_HUB_OFFLINE", "1")
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    with ExitStack() as stack:
        stack.callback(close_lifeline)  # last, once everything it guards has stopped
        if not env.get("DATABASE_URL"):
            pg = EmbeddedPostgres(data / "postgres")
            pg.start()
            stack.callback(pg.stop)
            env["DATABASE_URL"] = pg.url
        if not env.get("REDIS_URL"):
            rd = EmbeddedRedis(data / "redis")
            rd.start()
            stack.callback(rd.stop)
            env["REDIS_URL"] = rd.url
        os.environ.update(env)
        try:
            settings = load_settings()
        except SettingsError as err:
            print(f"sluice: {err}", file=sys.stderr)
            return 2
        run_migrations(settings)
        key = _ensure_admin_key(data)

        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        sup = Supervisor()
        stack.callback(sup.stop, _STOP_GRACE_S)
        url = f"http://127.0.0.1:{args.port}"
        ready_urls = _start_webuis(sup, env, args.webui, args.port)
        metrics_port = int(env.get("WORKER_METRICS_PORT", "9100"))
        for i in range(args.workers):
            # Each worker serves /metrics on its own port (9100, 9101, …) on loopback; 0 = off.
            port = {"WORKER_METRICS_PORT": str(metrics_port + i if metrics_port else 0),
                    "WORKER_METRICS_HOST": env.get("WORKER_METRICS_HOST", "127.0.0.1")}
            sup.start(f"worker-{i + 1}", ["worker", "--share-cpus", str(args.workers)],
                      {**env, **port})
        for ready_url in ready_urls:
            _wait_ready(ready_url, sup)
        print(
            f"\nSluice is running at {url}  (API docs: {url}/docs)\n"
            f"Admin API key: {key}\n"
            f"  (also in {data / 'admin.key'})\n"
            f"Webui processes: {args.webui}.  Workers: {args.workers}.  Press Ctrl-C to stop.\n",
            flush=True,
        )
        while not stopping:
            sup.tick()  # a crashed webui or worker comes back, with backoff
            time.sleep(0.5)
        print("stopping…", flush=True)
    return 0
