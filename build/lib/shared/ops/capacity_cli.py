"""`sluice capacity` on the command line: parse durations, measure job times, print the plan."""

from __future__ import annotations

import argparse
import math
import os
import re

from shared.ops.capacity import Demand, plan, render
from shared.ops.queueing import JobTime

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "": 1.0}


def duration(text: str) -> float:
    """'90', '90s', '3.5m', '1h' → seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h|)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 3.5m, 1h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def job_time(text: str) -> JobTime:
    """'3m' (fixed) or '2m..5m' (uniform between the two)."""
    if ".." in text:
        low, high = text.split("..", 1)
        return JobTime.uniform(duration(low), duration(high))
    return JobTime.fixed(duration(text))


def histogram_stats(metrics_text: str, name: str = "sluice_job_stage_duration_seconds",
                    stage: str = "total") -> tuple[int, float, float]:
    """(count, mean, p95) of one histogram series in Prometheus text, p95 interpolated in
    its bucket the way histogram_quantile() does."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.labels.get("stage") != stage:
                continue
            if s.name == f"{name}_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == f"{name}_count":
                count = s.value
            elif s.name == f"{name}_sum":
                total = s.value
    if not count:
        raise ValueError(f"no {name}{{stage={stage!r}}} observations yet")
    buckets.sort()
    rank, prev_le, prev_n = 0.95 * count, 0.0, 0.0
    p95 = buckets[-1][0]
    for le, n in buckets:
        if n >= rank:
            if math.isinf(le):  # beyond the last finite bucket: its bound is all we know
                p95 = prev_le
            else:
                p95 = prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9)
            break
        prev_le, prev_n = le, n
    return int(count), total / count, p95


def measured_from_metrics(url: str) -> JobTime:
    import httpx

    n, mean, p95 = histogram_stats(httpx.get(url, timeout=10).text)
    print(f"measured from {url}: {n} jobs, mean {mean:.2f} s, p95 {p95:.2f} s")
    return JobTime.from_mean_p95(mean, p95)


def measured_from_db(url: str, days: float) -> JobTime:
    import psycopg

    dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", url)
    with psycopg.connect(dsn, connect_timeout=5, application_name="sluice-capacity") as conn:
        row = conn.execute(
            "SELECT count(*), avg(s), percentile_cont(0.95) WITHIN GROUP (ORDER BY s) FROM ("
            " SELECT extract(epoch FROM finished_at - started_at) AS s FROM files"
            " WHERE status = 'done' AND started_at IS NOT NULL"
            " AND finished_at > now() - make_interval(secs => %s)) AS jobs",
            (days * 86_400,),
        ).fetchone()
    if not row or not row[0]:
        raise SystemExit(f"sluice capacity: no finished files in the last {days:g} days")
    n, mean, p95 = int(row[0]), float(row[1]), float(row[2])
    print(f"measured from the files table: {n} jobs, mean {mean:.2f} s, p95 {p95:.2f} s")
    return JobTime.from_mean_p95(mean, p95)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=100, help="concurrent users (default 100)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--uploads-per-user-hour", type=float, help="steady uploads per user per hour")
    load.add_argument("--burst", type=int, help="N uploads at the same moment (default: one per user)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--job-time", type=job_time, help="'3m' or a range '2m..5m' (default 2m..5m)")
    src.add_argument("--job-mean", type=duration, help="mean job time (with --job-p95)")
    src.add_argument("--from-metrics", metavar="URL", help="a worker's /metrics URL: measured job times")
    src.add_argument("--from-db", action="store_true", help="job times of files done (DATABASE_URL)")
    p.add_argument("--job-p95", type=duration, help="p95 job time (with --job-mean)")
    p.add_argument("--days", type=float, default=7, help="with --from-db: look back this far")
    p.add_argument("--target-p95", type=duration, default=300.0,
                   help="p95 time from upload to searchable (default 5m)")
    p.add_argument("--max-wait", type=duration, help="p95 time a file may wait in the queue")
    p.add_argument("--users-per-webui", type=int, default=100)
    p.add_argument("--requests-per-user-minute", type=float, default=6.0)


def main(args: argparse.Namespace) -> int:
    if args.from_metrics:
        job = measured_from_metrics(args.from_metrics)
    elif args.from_db:
        job = measured_from_db(os.environ.get("DATABASE_URL", ""), args.days)
    elif args.job_mean is not None:
        job = JobTime.from_mean_p95(args.job_mean, args.job_p95 or args.job_mean)
    else:
        job = args.job_time or JobTime.uniform(120, 300)
    steady = args.uploads_per_user_hour is not None
    demand = Demand(
        users=args.users, job=job, target_p95_s=args.target_p95,
        uploads_per_user_hour=args.uploads_per_user_hour or 0.0,
        burst=0 if steady else (args.burst or args.users), max_wait_s=args.max_wait,
        users_per_webui=args.users_per_webui, requests_per_user_minute=args.requests_per_user_minute,
    )
    result = plan(demand)
    print(render(demand, result))
    return 0
