"""Server-side facts, once a second, into a JSONL file (and memory).

Postgres: client connections per application_name (a snapshot each second,
total and not idle, plus the most seen when polling at 5 Hz, since a NullPool
connection lives for one request only), and sessions opened so far
(pg_stat_database.sessions). The webui's /metrics pool gauges when it has
them. The run's files by status. Redis: clients per name, the RQ queue length,
started and scheduled jobs, busy workers, the workers' published facts. CPU:
the machine's busy cores, those of the processes started here (per component,
including reaped children such as short-lived Postgres backends), and the rest.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families

_PG_SQL = """
SELECT coalesce(nullif(application_name, ''), '(none)'), state <> 'idle', count(*)
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY 1, 2
"""
# Webui /metrics samples worth keeping (summed over labels), when the webui has them.
_METRICS = {
    "sluice_db_pool_checked_out": "db_checked_out",
    "sluice_db_pool_max": "db_pool_max",
    "sluice_db_pool_wait_seconds_sum": "db_wait_sum",
    "sluice_db_pool_wait_seconds_count": "db_wait_count",
    "sluice_db_pool_timeouts_total": "db_timeouts",
    "sluice_redis_pool_in_use": "redis_in_use",
    "sluice_redis_errors_total": "redis_errors",
}
_PG_COUNT_SQL = """
SELECT coalesce(nullif(application_name, ''), '(none)'), count(*) FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1
"""
_SESSIONS_SQL = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
_FILES_SQL = """
SELECT status, count(*), coalesce(sum(chunk_count), 0) FROM files
WHERE owner_id = ANY(%s::uuid[]) GROUP BY status
"""


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live descendants and all the children they reaped."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


class Sampler(threading.Thread):
    def __init__(self, pg_url: str, redis_url: str, owner_ids: list[str], queue: str,
                 pids: Callable[[], dict[str, int]], out: Path,
                 metrics_url: str | list[str] | None = None, interval: float = 1.0):
        super().__init__(name="sampler", daemon=True)
        # One webui's /metrics, or several (summed: the pools of all replicas).
        self.metrics_urls = [metrics_url] if isinstance(metrics_url, str) else metrics_url or []
        self.pg_url, self.redis_url, self.owner_ids = pg_url, redis_url, owner_ids
        self.queue, self.pids, self.out, self.interval = queue, pids, out, interval
        self.samples: list[dict[str, Any]] = []
        self.errors = 0
        self._halt = threading.Event()
        self._cpu_prev: dict[str, float] = {}
        self._machine_prev = psutil.cpu_times()
        self._t_prev = time.monotonic()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def run(self) -> None:
        with psycopg.connect(self.pg_url, autocommit=True,
                             application_name="sluice-loadtest-sampler") as pg, \
                open(self.out, "a", buffering=1) as out:
            rd = redis.Redis.from_url(self.redis_url, socket_timeout=5, decode_responses=True)
            rd.client_setname("sluice-loadtest-sampler")
            while not self._halt.is_set():
                try:
                    peak = self._peak_connections(pg)
                    sample = self._sample(pg, rd)
                    sample["pg_peak"] = peak
                except (psycopg.Error, redis.RedisError) as err:
                    self.errors += 1
                    sample = {"t": time.time(), "error": str(err)[:200]}
                self.samples.append(sample)
                out.write(json.dumps(sample) + "\n")
            rd.close()

    def _peak_connections(self, pg: psycopg.Connection) -> dict[str, int]:
        """Most connections per application_name seen at 5 Hz over one interval.

        NullPool connections live for one request; a 1 Hz snapshot misses most of them.
        """
        peak: dict[str, int] = {}
        steps = 5
        for _ in range(steps):
            if self._halt.wait(self.interval / steps):
                break
            for app, n in pg.execute(_PG_COUNT_SQL).fetchall():
                peak[app] = max(peak.get(app, 0), n)
        return peak

    def _sample(self, pg: psycopg.Connection, rd: redis.Redis) -> dict[str, Any]:
        t = time.time()
        conns: dict[str, dict[str, int]] = {}
        for app, busy, n in pg.execute(_PG_SQL).fetchall():
            entry = conns.setdefault(app, {"total": 0, "busy": 0})
            entry["total"] += n
            entry["busy"] += n if busy else 0
        sessions = pg.execute(_SESSIONS_SQL).fetchone()
        rows = pg.execute(_FILES_SQL, (self.owner_ids,)).fetchall()
        files = {s: n for s, n, _ in rows}
        chunks_done = sum(c for s, _, c in rows if s == "done")
        clients: dict[str, int] = {}
        for c in rd.client_list():
            name = c.get("name") or "(none)"
            clients[name] = clients.get(name, 0) + 1
        workers = list(rd.smembers(f"rq:workers:{self.queue}"))
        states = [rd.hget(w, "state") for w in workers]
        facts = {}
        for key in rd.scan_iter("sluice:worker-facts:*"):
            f = rd.hgetall(key)
            facts[f.get("pid", key)] = {k: f.get(k) for k in (
                "jobs_done", "jobs_failed", "db_checked_out", "model_loads", "embed_threads")}
        return {
            "t": t, "load1": os.getloadavg()[0], "pg": conns, "files": files,
            "pg_sessions": sessions[0] if sessions else None,
            "chunks_done": chunks_done, "redis_clients": clients,
            "queue": rd.llen(f"rq:queue:{self.queue}"), "wip": rd.zcard(f"rq:wip:{self.queue}"),
            "scheduled": rd.zcard(f"rq:scheduled:{self.queue}"),
            "workers": len(workers), "busy": sum(s == "busy" for s in states),
            "facts": facts, "cpu": self._cpu(), "webui": self._webui_metrics(),
        }

    def _webui_metrics(self) -> dict[str, float] | None:
        if not self.metrics_urls:
            return None
        out: dict[str, float] = {}
        for url in self.metrics_urls:
            try:
                text = httpx.get(url, timeout=2).text
            except httpx.HTTPError:
                return None
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if (key := _METRICS.get(sample.name)) is not None:
                        out[key] = out.get(key, 0.0) + sample.value
        return out

    def _cpu(self) -> dict[str, float]:
        """Cores busy since the last sample: machine, ours by component, and the rest."""
        now = time.monotonic()
        dt = max(now - self._t_prev, 1e-3)
        m = psutil.cpu_times()
        busy = (sum(m) - m.idle - m.iowait) - (
            sum(self._machine_prev) - self._machine_prev.idle - self._machine_prev.iowait)
        self._machine_prev, self._t_prev = m, now
        out = {"machine": busy / dt}
        ours = 0.0
        for name, pid in {**self.pids(), "orchestrator": os.getpid()}.items():
            if name == "orchestrator":  # itself only: its children are the other entries
                t = psutil.Process(pid).cpu_times()
                total = t.user + t.system
            else:
                total = _tree_cpu(pid)
            delta = max(total - self._cpu_prev.get(name, total), 0.0)
            self._cpu_prev[name] = total
            group = name.split("-")[0]
            out[group] = out.get(group, 0.0) + delta / dt
            ours += delta / dt
        out["ours"] = ours
        out["others"] = max(out["machine"] - ours, 0.0)
        return out
