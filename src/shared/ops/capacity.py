"""`sluice capacity`: size a deployment from a queueing model, with the reasoning shown.

Workers come from the queueing math in `shared.ops.queueing` (Erlang C for steady
uploads, a simulated burst for N at once). Webui replicas and pools come from
Little's law (connections busy = request rate × time each holds one), and the
Postgres / Redis limits from the connection budget in `shared.ops.budget`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shared.ops.budget import Group, max_connections_for, redis_budget
from shared.ops.queueing import (
    FileWork,
    JobTime,
    UnitBurst,
    fmt_s,
    simulate_burst,
    simulate_fair_burst,
    steady_state,
    workers_for_burst,
)
from shared.settings import Settings

WORKER_DB_POOL = 2  # one job + the reconciler: a worker runs one job at a time
WORKER_REDIS = 8  # job + heartbeat + reconciler + progress + metrics + RQ maintenance, with room
WEBUI_ASYNC_REDIS = int(Settings.model_fields["redis_async_max_connections"].default)


@dataclass(frozen=True)
class Demand:
    users: int
    job: JobTime
    target_p95_s: float  # upload → searchable, for 95 % of files
    uploads_per_user_hour: float = 0.0  # steady arrivals (Poisson)
    burst: int = 0  # or N uploads at the same moment
    max_wait_s: float | None = None  # p95 time in the queue
    users_per_webui: int = 100  # what one webui replica is proven to serve (loadtests/)
    requests_per_user_minute: float = 6.0  # API calls of an active user (status, list, search)
    db_seconds_per_request: float = 0.02
    burst_window_s: float = 10.0  # a "burst" of uploads arrives within this many seconds


@dataclass
class Plan:
    workers: int | None  # None: the target cannot be met by adding workers
    webui_replicas: int
    webui_pool_size: int
    webui_max_overflow: int
    webui_redis: int
    worker_db_pool: int = WORKER_DB_POOL
    worker_redis: int = WORKER_REDIS
    max_connections: int = 0
    maxclients: int = 0
    reasoning: list[str] = field(default_factory=list)


def _steady_workers(d: Demand, why: list[str]) -> int | None:
    rate = d.users * d.uploads_per_user_hour / 3600
    a = rate * d.job.mean
    why.append(f"Arrivals λ = {d.users} users × {d.uploads_per_user_hour:g}/h = {rate * 3600:.1f} uploads/h "
               f"({rate:.4f}/s); job time {d.job.describe()} (Cs² = {d.job.scv:.2f}).")
    why.append(f"Offered load a = λ·E[S] = {a:.2f} workers busy on average: fewer than "
               f"{math.floor(a) + 1} workers and the queue grows without bound.")
    if d.job.quantile(0.95) > d.target_p95_s:
        why.append(f"The jobs alone have p95 {fmt_s(d.job.quantile(0.95))} > target "
                   f"{fmt_s(d.target_p95_s)}: no number of workers meets it; make jobs faster.")
        return None
    why.append("c workers: P(wait) by Erlang C; the wait tail P(W>t) = P(wait)·e^(−t/θ), "
               "θ = E[S]/(c−a)·(1+Cs²)/2 (Allen–Cunneen); p95 total = p95 of wait + job.")
    c = max(math.floor(a) + 1, 1)
    while True:
        s = steady_state(rate, c, d.job)
        ok = s.p95_total_s <= d.target_p95_s and (d.max_wait_s is None or s.p95_wait_s <= d.max_wait_s)
        why.append(f"  c={c}: utilization {s.utilization:.0%}, P(wait) {s.p_wait:.3f}, mean wait "
                   f"{fmt_s(s.mean_wait_s)}, p95 wait {fmt_s(s.p95_wait_s)}, p95 upload→searchable "
                   f"{fmt_s(s.p95_total_s)}, Lq = λ·Wq = {s.queue_length:.2f}"
                   + ("  ← meets target" if ok else ""))
        if ok:
            return c
        c += 1


def _burst_workers(d: Demand, why: list[str]) -> int | None:
    n, job = d.burst, d.job
    why.append(f"A burst of {n} uploads at once; job time {job.describe()}.")
    why.append(f"With c workers the files run in about ⌈{n}/c⌉ waves: the 95th-percentile file "
               f"(#{math.ceil(0.95 * n)}) starts when ⌊{math.ceil(0.95 * n) - 1}/c⌋ earlier waves are done. "
               "Finish times below are simulated with job times drawn from the distribution.")
    need = workers_for_burst(n, job, d.target_p95_s, d.max_wait_s)
    if need is None:
        why.append(f"Even {n} workers (one per file, no waiting) give p95 {fmt_s(job.quantile(0.95))}: "
                   f"the target {fmt_s(d.target_p95_s)} cannot be met by adding workers; "
                   "only faster jobs (or a later target) help.")
    fixed = [c for c in (5, 10, 20, 40, 50) if c < n]
    results = {c: simulate_burst(n, c, job) for c in sorted({*fixed, *([need] if need else []), n})}
    for c, b in results.items():
        mark = "  ← fewest that meet the target" if c == need else ""
        why.append(f"  c={c}: p95 upload→searchable {fmt_s(b.p95_done_s)}, p95 wait "
                   f"{fmt_s(b.p95_wait_s)}, all {n} done after {fmt_s(b.last_done_s)}{mark}")
    if need is not None and need < n:
        fewer = max((c for c in results if c < need), default=None)
        late = f"; {fewer} workers give {fmt_s(results[fewer].p95_done_s)}" if fewer else ""
        why.append(f"So: possible with ≥ {need} workers. With fewer, more than 5 % of the files wait "
                   f"for an earlier job (≥ {fmt_s(job.quantile(0.05))} for 95 % of jobs) before their own "
                   f"(p95 {fmt_s(job.quantile(0.95))}) starts, and that does not fit in "
                   f"{fmt_s(d.target_p95_s)}{late}.")
    why.append("These treat a file as one job. Sluice parses every file of a burst first, then "
               "embeds them segment by segment in fair turns across users (predict_burst): the "
               "first files finish later than shown, the p95 and the last about the same.")
    waves = math.floor(d.target_p95_s / job.mean)
    if waves >= 1:
        c_fixed = math.ceil(math.ceil(0.95 * n) / waves)
        why.append(f"Cross-check: if every job took exactly E[S] = {fmt_s(job.mean)}, {waves} wave(s) fit "
                   f"in {fmt_s(d.target_p95_s)}, so 95 % of {n} files need c ≥ ⌈{math.ceil(0.95 * n)}/"
                   f"{waves}⌉ = {c_fixed}.")
    else:
        why.append(f"Cross-check: the mean job alone ({fmt_s(job.mean)}) is longer than the target.")
    return need


def plan(d: Demand) -> Plan:
    """Workers, webui replicas, per-process pools and server limits for this demand."""
    why: list[str] = []
    workers = _burst_workers(d, why) if d.burst else _steady_workers(d, why)
    replicas = max(2, math.ceil(d.users / d.users_per_webui))
    rps = d.users * d.requests_per_user_minute / 60 + (d.burst / d.burst_window_s if d.burst else 0)
    busy = rps / replicas * d.db_seconds_per_request  # Little's law, per replica
    pool = max(5, math.ceil(3 * busy))
    overflow = max(2, math.ceil(pool / 2))
    redis = max(10, math.ceil(3 * busy) + 5)
    why.append(f"Webui: {replicas} replicas (≥ 2 for availability; {d.users_per_webui} users each). "
               f"Peak {rps:.1f} requests/s ÷ {replicas} × {d.db_seconds_per_request * 1000:.0f} ms of DB "
               f"each = {busy:.2f} connections busy per replica (Little's law L = λW); pool = max(5, 3 × L) "
               f"= {pool} + overflow {overflow}; Redis pool {redis}.")
    k = workers or d.burst or 1
    groups = [Group("webui", replicas, pool + overflow, redis, WEBUI_ASYNC_REDIS),
              Group("worker", k, WORKER_DB_POOL, WORKER_REDIS)]
    max_conn = max_connections_for(groups)
    maxclients = math.ceil((redis_budget(groups, 0).needed or 0) * 1.2)
    why.append(f"Workers: WORKER_DB_POOL_SIZE={WORKER_DB_POOL} (job + reconciler), "
               f"REDIS_MAX_CONNECTIONS={WORKER_REDIS} each.")
    why.append(f"Postgres: {replicas} × {pool + overflow} + {k} × {WORKER_DB_POOL} + reserved 6, "
               f"+20 % headroom → max_connections ≥ {max_conn}.")
    why.append(f"Redis: every process's pools (webui sync {redis} + async {WEBUI_ASYNC_REDIS}, worker "
               f"{WORKER_REDIS}) + RQ scheduler + reserved, +20 % → maxclients ≥ {maxclients}.")
    return Plan(workers, replicas, pool, overflow, redis, max_connections=max_conn,
                maxclients=maxclients, reasoning=why)


def render(d: Demand, p: Plan) -> str:
    head = "CANNOT MEET TARGET" if p.workers is None else f"{p.workers} workers"
    rows = [
        ("worker replicas", str(p.workers) if p.workers is not None else "— (see above)"),
        ("webui replicas", str(p.webui_replicas)),
        ("DATABASE_POOL_SIZE", str(p.webui_pool_size)),
        ("DATABASE_POOL_MAX_OVERFLOW", str(p.webui_max_overflow)),
        ("WORKER_DB_POOL_SIZE", str(p.worker_db_pool)),
        ("REDIS_MAX_CONNECTIONS", f"webui {p.webui_redis}, worker {p.worker_redis}"),
        ("REDIS_ASYNC_MAX_CONNECTIONS", f"webui {WEBUI_ASYNC_REDIS}"),
        ("Postgres max_connections", f"≥ {p.max_connections}"),
        ("Redis maxclients", f"≥ {p.maxclients}"),
    ]
    lines = [
        f"sluice capacity: {head} for p95 upload→searchable ≤ {fmt_s(d.target_p95_s)}",
        "", "Reasoning:", *[f"  {line}" for line in p.reasoning], "", "Recommended:",
        *[f"  {label:<28} {value}" for label, value in rows],
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class BurstPrediction:
    fair: UnitBurst  # as Sluice runs it: parse units, then segments in fair turns
    whole_file: UnitBurst  # each file one job, first come first served (the textbook view)


def predict_burst(files: list[FileWork], workers: int, per_owner_in_flight: int | None = None
                  ) -> BurstPrediction:
    """First / median / p95 / last time-to-searchable of a burst (one file per user, all at
    once) from each file's unit times, as Sluice runs it and as one job per file."""
    whole = [FileWork(f.parse_s + sum(f.segments_s)) for f in files]
    return BurstPrediction(simulate_fair_burst(files, workers, per_owner_in_flight),
                           simulate_fair_burst(whole, workers))
