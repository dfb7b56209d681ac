"""The stack under test: embedded Postgres + Redis in a temp folder, `sluice webui` and
`sluice worker` children, users and keys.

Everything listens on 127.0.0.1. Each child runs in a session of its own, so it
leads a process group holding only itself and what it forks (parser children,
RQ's scheduler); stopping a child signals that group, by the child's PID, and
nothing else.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import redis

from shared.local.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.local.lifeline import die_with_parent, tether
from shared.settings import Settings, load_settings

log = logging.getLogger("loadtest.stack")
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def interrupt_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so `finally` blocks stop the servers
    and children a script started; by default Python would exit without running them."""
    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A child process with its output in a log file, stopped through its own process group."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "ab")  # closed in stop()
        # Dies with the benchmark even when that is SIGKILLed (see shared.local.lifeline).
        self.popen = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=die_with_parent(signal.SIGTERM))
        tether(self.popen)
        self.pid = self.popen.pid
        self._terminated = False

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)  # the group this child leads (start_new_session)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """SIGTERM once (a second one means 'stop now' to RQ)."""
        if self.running() and not self._terminated:
            self._terminated = True
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 30.0) -> None:
        if self.running():
            self.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s: SIGKILL", self.name, self.pid,
                            grace)
        self.signal_group(signal.SIGKILL)  # leftovers of the group, and the child if still up
        self.popen.wait(10)
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def sluice_cmd(*args: str, nullpool_shim: bool = False) -> list[str]:
    if nullpool_shim:  # see nullpool_shim.py: a src bug kills NullPool workers at boot
        return [sys.executable, str(Path(__file__).with_name("nullpool_shim.py")), *args]
    return [sys.executable, "-m", "shared.cli", *args]


class Servers:
    """Embedded Postgres (+ pgvector) and Redis under `root`, migrated."""

    def __init__(self, root: Path, max_connections: int):
        self.pg = EmbeddedPostgres(root / "postgres", max_connections=max_connections)
        self.redis = EmbeddedRedis(root / "redis")
        self.max_connections = max_connections

    def start(self) -> None:
        from shared.migrate import run_migrations

        self.pg.start()
        self.redis.start()
        run_migrations(self.settings())

    def settings(self, **overrides: object) -> Settings:
        return load_settings(database_url=self.pg.url, redis_url=self.redis.url, **overrides)

    def stop(self) -> None:
        for server in (self.redis, self.pg):
            try:
                server.stop()
            except Exception:  # keep stopping the other one
                log.exception("could not stop %s", type(server).__name__)

    def connect(self, app: str = "sluice-loadtest") -> psycopg.Connection:
        return psycopg.connect(self.pg.url, autocommit=True, application_name=app)

    def redis_client(self) -> redis.Redis:
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        client.client_setname("sluice-loadtest")
        return client


def create_users(servers: Servers, n: int, label: str) -> list[tuple[str, str]]:
    """n users with one API key each: [(user_id, key)]."""
    from shared.accounts import create_key, ensure_user
    from shared.db import create_worker_engine, sync_session_factory

    engine = create_worker_engine(servers.settings(worker_db_pool_size=1), "cli")
    try:
        with sync_session_factory(engine)() as session, session.begin():
            out = []
            for i in range(n):
                user = ensure_user(session, f"{label}-{i:03d}@loadtest.invalid")
                out.append((str(user.id), create_key(session, user, name="loadtest")))
            return out
    finally:
        engine.dispose()


def app_env(servers: Servers, upload_dir: Path, overrides: dict[str, str]) -> dict[str, str]:
    """The caller's environment minus any Sluice setting, plus the servers and `overrides`."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTING_NAMES}
    env.update(DATABASE_URL=servers.pg.url, REDIS_URL=servers.redis.url,
               UPLOAD_DIR=str(upload_dir), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               LOG_LEVEL="INFO")
    env.update(overrides)
    return env


class App:
    """One webui (or several behind the front) and N workers, as `sluice up` runs them."""

    def __init__(self, env: dict[str, str], workers: int, log_dir: Path, port: int,
                 webuis: int = 1):
        self.env, self.workers, self.log_dir, self.port = env, workers, log_dir, port
        self.webuis = webuis
        self.nullpool_shim = env.get("DATABASE_POOL_SIZE") == "0"
        self.url = f"http://127.0.0.1:{port}"
        # One webui serves the API port itself; several sit on internal ports behind
        # `sluice front` on it (per-connection round robin, as `sluice up --webui N`).
        self.webui_ports = [port] if webuis <= 1 else [free_port() for _ in range(webuis)]
        # Each webui serves /metrics on its own port, not the API's.
        self.metrics_ports = [free_port() for _ in range(webuis)]
        self.metrics_urls = [f"http://127.0.0.1:{p}/metrics" for p in self.metrics_ports]
        self.metrics_url = self.metrics_urls[0]
        self.children: list[Child] = []

    def start(self, rd: redis.Redis, timeout: float = 300) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for i, (port, metrics) in enumerate(zip(self.webui_ports, self.metrics_ports, strict=True)):
            name = "webui" if self.webuis <= 1 else f"webui-{i}"
            self.children.append(Child(name, sluice_cmd(
                "webui", "--host", "127.0.0.1", "--port", str(port)),
                {**self.env, "WEBUI_METRICS_HOST": "127.0.0.1",
                 "WEBUI_METRICS_PORT": str(metrics)},
                self.log_dir / f"{name}.log"))
        if self.webuis > 1:
            backends = [a for p in self.webui_ports for a in ("--backend", f"127.0.0.1:{p}")]
            self.children.append(Child("front", sluice_cmd(
                "front", "--port", str(self.port), *backends), self.env,
                self.log_dir / "front.log"))
        for i in range(self.workers):
            self.children.append(Child(f"worker-{i}", sluice_cmd(
                "worker", "--share-cpus", str(self.workers), nullpool_shim=self.nullpool_shim),
                self.env,
                self.log_dir / f"worker-{i}.log"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in self.children:
                if not child.running():
                    raise RuntimeError(f"{child.name} exited during start-up:\n{child.tail()}")
            if self._webui_ready() and self._workers_booted(rd):
                return
            time.sleep(1)
        raise RuntimeError(f"the stack was not ready within {timeout:.0f} s")

    def _webui_ready(self) -> bool:
        urls = [f"http://127.0.0.1:{p}" for p in self.webui_ports] + [self.url]
        try:
            return all(httpx.get(f"{u}/readyz", timeout=2).status_code == 200 for u in urls)
        except httpx.HTTPError:
            return False

    def _workers_booted(self, rd: redis.Redis) -> bool:
        pids = {int(rd.hget(k, "pid") or 0) for k in rd.scan_iter("sluice:worker-facts:*")}
        return all(c.pid in pids for c in self.children if c.name.startswith("worker"))

    @property
    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.children}

    def stop(self) -> None:
        """Workers first (RQ's warm shutdown finishes the current job), then the webuis."""
        for child in self.children:
            if child.name.startswith("worker"):
                child.terminate()
        for child in sorted(self.children, key=lambda c: not c.name.startswith("worker")):
            child.stop(grace=60)
        self.children.clear()
