"""Isolated stacks for the fault tests: their own Postgres, Redis, webui and workers.

These tests restart servers and kill processes, so they never touch the session-wide
`stack`. Each module gets one `FaultStack` (`fault_stack`): servers in a tmp folder,
migrated, and the module's `FAULT_ENV` on top of the suite's TEST_ENV. Tests start the
webui and workers they need through it (or share the module's); everything started is
stopped at the end of the module, including what killed workers leave behind (RQ's
scheduler child, the parser forkserver).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import psutil
from redis import Redis
from sqlalchemy import Engine, text

from shared.events import EVENTS_STREAM
from shared.local.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.settings import Settings
from tests.support.helpers import free_port, wait_until
from tests.support.stack import (
    ApiUser,
    Proc,
    make_user,
    start_webui,
    start_worker,
    wait_webui_ready,
)
from worker.main import FACTS_KEY


@dataclass
class WebUI:
    proc: Proc
    url: str
    metrics_url: str  # its own port (WEBUI_METRICS_PORT), as in the cluster


@dataclass
class FaultStack:
    root: Path
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    env: dict[str, str]
    settings: Settings
    db: Engine  # the test's own engine (application_name sluice-cli)
    rc: Redis  # the test's own client
    procs: list[Proc] = field(default_factory=list)
    webui: WebUI | None = None
    _leftovers: list[psutil.Process] = field(default_factory=list)
    _n: int = 0

    # --- processes ---------------------------------------------------------
    def _log(self, name: str) -> Path:
        self._n += 1
        return self.root / "logs" / f"{self._n:02d}-{name}.log"

    def start_webui(self, wait: bool = True, **overrides: str) -> WebUI:
        port, metrics_port = free_port(), free_port()
        env = {**self.env, "WEBUI_METRICS_PORT": str(metrics_port),
               "WEBUI_METRICS_HOST": "127.0.0.1", **overrides}
        proc = start_webui(env, self._log("webui"), port, wait=wait)
        self.procs.append(proc)
        web = WebUI(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics")
        self.webui = self.webui or web
        return web

    def start_worker(self, **overrides: str) -> Proc:
        proc = start_worker({**self.env, **overrides}, self._log("worker"), self.rc)
        self.procs.append(proc)
        self._remember_children(proc)
        return proc

    def start(self, workers: int = 1, **overrides: str) -> WebUI:
        """A webui and `workers` workers, booting side by side (model loads overlap)."""
        web = self.start_webui(wait=False, **overrides)
        for _ in range(workers):
            self.start_worker(**overrides)
        wait_webui_ready(web.proc, web.url)
        return web

    def live_workers(self) -> list[Proc]:
        return [p for p in self.procs if p.popen.poll() is None and p.argv[-1] == "worker"]

    def wait_quiet(self, timeout: float = 60) -> None:
        """Until no unit is dispatched or running anywhere (the fleet is idle)."""
        wait_until(lambda: not self.sql(
            "SELECT 1 FROM work_units WHERE state IN ('dispatched', 'running')"), timeout,
            "the fleet to be quiet", 0.2)

    def kill(
        self, proc: Proc, sig: int = signal.SIGKILL, timeout: float = 30, tree: bool = False
    ) -> int:
        """Send `sig` to the process and reap it: only its PID (as `kill -9 <pid>` would),
        or with `tree` to its children too (as when its pod dies)."""
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self._leftovers += children
        proc.popen.send_signal(sig)
        for child in children if tree else []:
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)
        return proc.popen.wait(timeout)

    def _remember_children(self, proc: Proc) -> None:
        with contextlib.suppress(psutil.Error):
            self._leftovers += psutil.Process(proc.pid).children(recursive=True)

    def close(self) -> None:
        for proc in self.procs:  # all at once: a worker may finish its job first
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.popen.wait(20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
            proc.stop()  # reaps, closes the log
        for child in self._leftovers:  # psutil checks the start time: never a recycled PID
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
        self.rc.close()
        self.db.dispose()

    # --- API ---------------------------------------------------------------
    def user(self, label: str = "fault") -> ApiUser:
        return make_user(self.db, label)

    def client(self, user: ApiUser, web: WebUI | None = None, timeout: float = 30) -> httpx.Client:
        web = web or self.webui
        assert web is not None, "start a webui first"
        return httpx.Client(
            base_url=web.url, headers={"Authorization": f"Bearer {user.key}"}, timeout=timeout
        )

    # --- what the tests check ------------------------------------------------
    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(text(query), params))

    def chunk_facts(self, file_id: str) -> tuple[int, int, int]:
        """(chunk_count in files, rows in chunks, distinct idx) for one file."""
        row = self.sql(
            "SELECT f.chunk_count, count(c.idx), count(DISTINCT c.idx) FROM files f "
            "LEFT JOIN chunks c ON c.file_id = f.id WHERE f.id = :i GROUP BY f.chunk_count",
            i=uuid.UUID(file_id),
        )[0]
        return int(row[0]), int(row[1]), int(row[2])

    def connections(self, app: str) -> dict[str, int]:
        """Server connections of `sluice-<app>` by state (`idle`, `active`, ...)."""
        rows = self.sql(
            "SELECT coalesce(state, '?'), count(*) FROM pg_stat_activity "
            "WHERE application_name = :a GROUP BY 1", a=f"sluice-{app}",
        )
        return {state: int(n) for state, n in rows}

    def worker_facts(self, pid: int) -> dict[str, str]:
        for key in self.rc.keys(FACTS_KEY.format(name="*")):
            # decode_responses=False: field names and values are bytes.
            raw = cast(dict[bytes, bytes], self.rc.hgetall(key))
            facts = {k.decode(): v.decode() for k, v in raw.items()}
            if facts.get("pid") == str(pid):
                return facts
        raise AssertionError(f"no facts published by worker pid {pid}")

    def running_units(self, file_id: str) -> dict[int, int]:
        """{unit id: PID of the worker holding it} for the file's `running` units (a
        worker's name ends with its PID)."""
        rows = self.sql("SELECT id, worker FROM work_units WHERE file_id = :i AND state = 'running'",
                        i=uuid.UUID(file_id))
        return {int(uid): int(str(name).rsplit(".", 1)[-1]) for uid, name in rows}

    def job_worker_pid(self, file_id: str) -> int | None:
        """PID of a worker running one of the file's units now."""
        return next(iter(self.running_units(file_id).values()), None)

    def unit_tries(self, file_id: str) -> dict[int, int]:
        return {int(uid): int(t) for uid, t in self.sql(
            "SELECT id, tries FROM work_units WHERE file_id = :i", i=uuid.UUID(file_id))}

    def assert_no_checked_out_connections(self, timeout: float = 30) -> None:
        """Workers report 0 checked out; no sluice connection is left mid-transaction;
        each process stays within its pool."""
        s = self.settings
        for proc in self.live_workers():
            wait_until(lambda p=proc: self.worker_facts(p.pid)["db_checked_out"] == "0",
                       timeout, f"worker {proc.pid} pool idle")

        def quiet() -> bool:
            web, wk = self.connections("webui"), self.connections("worker")
            busy = {k: v for k, v in (web | wk).items() if k != "idle"}
            return not busy and sum(wk.values()) <= s.worker_db_pool_size * len(
                self.live_workers()) and sum(web.values()) <= (
                s.database_pool_size + s.database_pool_max_overflow) * self._webuis()

        try:
            wait_until(quiet, timeout, "no connection left busy; pools within their limits")
        except AssertionError as err:
            rows = self.sql("SELECT application_name, state, query FROM pg_stat_activity "
                            "WHERE application_name LIKE 'sluice-%'")
            raise AssertionError(f"{err}: {rows}") from None

    def _webuis(self) -> int:
        return sum(1 for p in self.procs if p.popen.poll() is None and "webui" in p.argv)


def unavailable(r: httpx.Response) -> bool:
    """A clean outage answer: 503, JSON with the service_unavailable code, Retry-After."""
    if r.status_code != 503 or "retry-after" not in r.headers:
        return False
    try:
        return bool(r.json()["code"] == "service_unavailable")
    except (json.JSONDecodeError, KeyError):
        return False


class EventLog(threading.Thread):
    """Every file event the workers publish, in the order Redis delivers them."""

    def __init__(self, redis: Redis):
        super().__init__(name="event-log", daemon=True)
        self._redis = redis
        # Start after the newest entry already in the stream: only what happens next.
        # decode_responses=False: entry ids and fields come back as bytes.
        newest = cast(list[tuple[bytes, dict[bytes, bytes]]], redis.xrevrange(EVENTS_STREAM, count=1))
        self._last: bytes | str = newest[0][0] if newest else "0-0"
        self.events: list[dict[str, Any]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            reply = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
                         self._redis.xread({EVENTS_STREAM: self._last}, count=500, block=200))
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    self._last = entry_id
                    self.events.append(json.loads(fields[b"data"]))

    def of(self, file_id: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["file_id"] == file_id]

    def __enter__(self) -> EventLog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        self.join(5)


def long_text(chunks: int, label: str = "doc") -> bytes:
    """Plain text that splits into about `chunks` chunks of 256 tokens (~0.1 s each to
    embed on one thread here), unique per call."""
    body = " ".join(
        f"Sentence {i} about estuaries, tides and the sluice gates of the canal."
        for i in range(chunks * 13)
    )
    return f"{label} {uuid.uuid4().hex}\n{body}\n".encode()
