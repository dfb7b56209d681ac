"""Embedded PostgreSQL (+ pgvector) and Redis: real servers that keep data and clean up."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from shared.local.embedded import EmbeddedPostgres, EmbeddedRedis


def _gone(pid: int) -> bool:
    """No such process, or a zombie (PID 1 in containers may never reap orphans)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _kill_and_wait(pid: int | None) -> None:
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:  # SIGKILL lands asynchronously
        time.sleep(0.01)


class _Folders:
    """Server data outside /tmp/pytest-of-<user>: every pytest session that starts on this
    machine resets that folder to 0700, locking the Postgres system user out mid-test."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sluice-embedded-test-"))

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))


@pytest.fixture(scope="module")
def folders() -> Iterator[_Folders]:
    made = _Folders()
    yield made
    shutil.rmtree(made.root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg(folders: _Folders) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(folders.mktemp("pg")) as server:
        yield server


@pytest.fixture(scope="module")
def rds(folders: _Folders) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(folders.mktemp("redis")) as server:
        yield server


def test_postgres_url_and_settings(pg: EmbeddedPostgres) -> None:
    assert pg.url == f"postgresql://postgres:{pg.password}@127.0.0.1:{pg.port}/sluice"
    with psycopg.connect(pg.url) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), current_setting('max_connections'),"
            " current_setting('shared_buffers'), current_setting('listen_addresses'),"
            " pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert row == ("postgres", "sluice", "200", "128MB", "127.0.0.1", "UTF8")


def test_pgvector_insert_and_nearest(pg: EmbeddedPostgres) -> None:
    with psycopg.connect(pg.url) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
        conn.execute("INSERT INTO items VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0.9,0.1,0]')")
        rows = conn.execute(
            "SELECT id, (embedding <=> %s::vector)::float8 AS dist FROM items ORDER BY dist",
            ("[1,0,0]",),
        ).fetchall()
    assert [r[0] for r in rows] == [1, 3, 2]
    assert rows[0][1] == pytest.approx(0.0)
    assert rows[2][1] == pytest.approx(1.0)


def test_postgres_restart_keeps_data_and_port(pg: EmbeddedPostgres) -> None:
    with psycopg.connect(pg.url) as conn:
        conn.execute("CREATE TABLE survivors (v vector(3))")
        conn.execute("INSERT INTO survivors VALUES ('[1,2,3]')")
    old_pid, port, url = pg.pid, pg.port, pg.url
    assert old_pid is not None
    with psycopg.connect(pg.url, autocommit=True) as idle:  # a fast restart must not wait for it
        pg.restart()
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")
    assert _gone(old_pid)
    assert pg.pid not in (None, old_pid)
    assert (pg.port, pg.url) == (port, url)
    with psycopg.connect(pg.url) as conn:
        assert conn.execute("SELECT v::text FROM survivors").fetchall() == [("[1,2,3]",)]


def test_postgres_start_is_idempotent(pg: EmbeddedPostgres) -> None:
    pid = pg.pid
    pg.start()
    assert pg.pid == pid
    # A second handle on the same folder (e.g. another `sluice up`) finds the running server.
    other = EmbeddedPostgres(pg.data_dir)
    other.start()
    assert (other.pid, other.url) == (pid, pg.url)


def test_redis_set_get_and_config(rds: EmbeddedRedis) -> None:
    assert rds.url == f"redis://:{rds.password}@127.0.0.1:{rds.port}/0"
    with redis.Redis.from_url(rds.url) as client:
        assert client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("save") == {"save": ""}


def test_redis_restart_keeps_aof_key(rds: EmbeddedRedis) -> None:
    with redis.Redis.from_url(rds.url) as client:
        client.set("durable", "yes")
        client.rpush("queue", "a", "b")
    old_pid, port = rds.pid, rds.port
    assert old_pid is not None
    rds.restart()
    assert _gone(old_pid)
    assert rds.pid not in (None, old_pid)
    assert rds.port == port
    assert not list(rds.data_dir.glob("*.rdb"))  # the data came back from the AOF, not a snapshot
    with redis.Redis.from_url(rds.url) as client:
        assert client.get("durable") == b"yes"
        assert client.lrange("queue", 0, -1) == [b"a", b"b"]


def test_stop_leaves_no_process(folders: _Folders) -> None:
    data = folders.mktemp("stop")
    pg, rds = EmbeddedPostgres(data / "pg"), EmbeddedRedis(data / "redis")
    with pg, rds:
        pg_pid, redis_pid = pg.pid, rds.pid
        assert pg_pid is not None
        assert redis_pid is not None
        pg_children = [p.pid for p in psutil.Process(pg_pid).children(recursive=True)]
        assert pg_children  # checkpointer, walwriter, ...
    assert pg.pid is None
    assert rds.pid is None
    for pid in [pg_pid, redis_pid, *pg_children]:
        assert _gone(pid), pid
    pg.stop()  # stopping twice is fine
    rds.stop()


def test_start_after_killed_servers(folders: _Folders) -> None:
    """SIGKILLed servers leave pid/lock files behind; the next start copes, on the same port."""
    data = folders.mktemp("killed")
    pg, rds = EmbeddedPostgres(data / "pg"), EmbeddedRedis(data / "redis")
    pg.start()
    rds.start()
    _kill_and_wait(pg.pid)
    _kill_and_wait(rds.pid)
    assert (pg.pgdata / "postmaster.pid").exists()
    pg2, rds2 = EmbeddedPostgres(data / "pg"), EmbeddedRedis(data / "redis")  # as after a crash
    try:
        pg2.start()
        rds2.start()
        assert (pg2.port, rds2.port) == (pg.port, rds.port)
        with psycopg.connect(pg2.url) as conn:
            row = conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'")
            assert row.fetchone() == ("vector",)
        with redis.Redis.from_url(rds2.url) as client:
            assert client.ping()
    finally:
        pg2.stop()
        rds2.stop()
        pg.stop()  # reaps the killed children
        rds.stop()


def test_constructor_touches_nothing(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", port=54999)
    rds = EmbeddedRedis(tmp_path / "redis")
    assert pg.public_url == "postgresql://postgres@127.0.0.1:54999/sluice"
    assert rds.port > 0
    assert pg.pid is None
    assert rds.pid is None
    assert list(tmp_path.iterdir()) == []


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_postgres_refuses_connections_without_the_password(pg: EmbeddedPostgres) -> None:
    assert pg.password and pg.password in pg.url
    assert _mode(pg.password_file) == 0o600
    assert _mode(pg.socket_dir) == 0o700
    for host in ("127.0.0.1", str(pg.socket_dir)):  # TCP and the unix socket
        for password in (None, "wrong"):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(host=host, port=pg.port, user="postgres", dbname="sluice",
                                password=password, connect_timeout=5).close()
        psycopg.connect(host=host, port=pg.port, user="postgres", dbname="sluice",
                        password=pg.password, connect_timeout=5).close()


def test_redis_refuses_clients_without_the_password(rds: EmbeddedRedis) -> None:
    assert _mode(rds.password_file) == 0o600
    assert _mode(rds.conf_path) == 0o600
    for password in (None, "wrong"):
        with redis.Redis(host="127.0.0.1", port=rds.port, password=password) as client, \
                pytest.raises(redis.AuthenticationError):
            client.get("anything")
    assert rds.password not in " ".join(psutil.Process(rds.pid).cmdline())  # `ps` shows that


def test_a_trusting_data_folder_gets_a_password_on_start(
    folders: _Folders,
) -> None:
    """Data folders made before passwords trusted every local connection."""
    pg = EmbeddedPostgres(folders.mktemp("legacy"))
    with pg:
        pass
    (pg.pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    with pg:
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="sluice",
                            connect_timeout=5).close()
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


_STARTER = """
import sys, time
from pathlib import Path
from shared.local.embedded import EmbeddedPostgres, EmbeddedRedis
pg, rds = EmbeddedPostgres(Path(sys.argv[1]) / "pg"), EmbeddedRedis(Path(sys.argv[1]) / "redis")
pg.start()
rds.start()
print(pg.pid, rds.pid, flush=True)
time.sleep(600)
"""


def test_servers_stop_with_the_process_that_started_them(folders: _Folders) -> None:
    """A test session or benchmark cut short with SIGKILL leaves no server behind."""
    data = folders.mktemp("starter")
    starter = subprocess.Popen([sys.executable, "-c", _STARTER, str(data)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        pg_pid, redis_pid = map(int, starter.stdout.readline().split())
        family = [pg_pid, redis_pid,
                  *(p.pid for p in psutil.Process(pg_pid).children(recursive=True))]
        assert not any(_gone(pid) for pid in family)
        starter.kill()
        starter.wait(10)
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in family if not _gone(pid)] == []
        log = (data / "pg" / "postgres.log").read_text()
        assert "received fast shutdown request" in log  # stopped cleanly, not killed
    finally:
        starter.kill()
        starter.communicate()  # reaps it and closes its stdout
