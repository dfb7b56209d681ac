"""`make burst`: the seed's burst. N users (default 100), each with their own API key, each
upload ONE document at the same instant, watch it, and search for a phrase from it until
their file is a hit (time to searchable).

Starts embedded Postgres + Redis in a temp folder, then for each `--setup`:

1. starts `--webui` webui processes (more than one behind `sluice front`, as
   `sluice up --webui N`) and `--workers` workers; the seed setup is always 1 webui and
   1 worker with NullPool and the model reloaded per job, as local_proof.py runs it;
2. calibrates: 3 documents processed one at a time on that stack, their unit times fitted
   (burst_calibrate.py), then the capacity model predicts first / median / p95 / all
   done for the burst's own files on that many workers;
3. runs the burst while the sampler records Postgres connections and the queue;
4. writes loadtests/reports/burst-<time>/: report.md, results.json, plots.

Documents are mixed pdf / docx / md / txt / html from the upload corpus (10 KB–5 MB,
burst_docs.py); `--quick` takes 8 users and only files under `--max-kb` (30 KB).
Only 127.0.0.1 is used; only processes started here are stopped, by PID; the temp
folder and its servers are removed on exit, Ctrl-C and errors included.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import burst_report
import psycopg
from burst_calibrate import calibrate, predict
from burst_docs import KINDS, Doc, pick
from burst_users import run_users
from corpus import CORPUS_DIR
from local_proof import SEED_SETUP
from sampler import Sampler
from stack import SETTING_NAMES, App, Servers, app_env, create_users, free_port, interrupt_on_sigterm

from shared.ops.budget import Group, postgres_budget
from shared.ops.queueing import order_stat

log = logging.getLogger("loadtest.burst")
HERE = Path(__file__).resolve().parent
CALIBRATION_DOCS = 3
_FILES_SQL = """
SELECT id::text, status, extract(epoch FROM created_at), extract(epoch FROM started_at),
       extract(epoch FROM finished_at), chunk_count
FROM files WHERE owner_id = ANY(%s::uuid[])
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, help="users, one document each (default 100; 8 quick)")
    p.add_argument("--webui", type=int, default=1, help="webui processes (Sluice setup)")
    p.add_argument("--workers", type=int, default=1, help="workers (Sluice setup)")
    p.add_argument("--setup", action="append", choices=["seed", "sluice"],
                   help="seed (NullPool, 1 worker, model per job) and/or sluice; repeat for "
                   "both, seed first (default: sluice)")
    p.add_argument("--quick", action="store_true", help="fewer users, documents under --max-kb")
    p.add_argument("--max-kb", type=float, default=30, help="largest document with --quick")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between a user's polls")
    p.add_argument("--timeout", type=float, default=3600, help="longest wait for the burst (s)")
    p.add_argument("--pg-max-connections", type=int, default=100)
    p.add_argument("--corpus-dir", type=Path, default=CORPUS_DIR)
    p.add_argument("--corpus-files", type=int,
                   help="build a corpus this small if --corpus-dir has none (tests)")
    p.add_argument("--out", type=Path, help="report folder (default loadtests/reports/burst-<time>)")
    p.add_argument("--keep-data", action="store_true", help="keep the temp data folder")
    args = p.parse_args(argv)
    if args.users is None:
        args.users = 8 if args.quick else 100
    args.setup = sorted(set(args.setup or ["sluice"]), key=["seed", "sluice"].index)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or HERE / "reports" / time.strftime("burst-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out / "run.log")])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    interrupt_on_sigterm()
    for k in sorted(k for k in os.environ if k.upper() in SETTING_NAMES):
        log.warning("ignoring %s from the environment: the setups define the settings", k)
        del os.environ[k]
    max_kb = args.max_kb if args.quick else None
    # The first one warms a worker up, untimed (burst_calibrate.py).
    cal_docs = pick(CALIBRATION_DOCS + 1, max_kb, corpus_dir=args.corpus_dir,
                    corpus_files=args.corpus_files, prefix="calibration")
    docs = pick(args.users, max_kb, skip=1, corpus_dir=args.corpus_dir)
    root = Path(tempfile.mkdtemp(prefix="sluice-burst-"))
    servers = Servers(root, args.pg_max_connections)
    meta: dict[str, Any] = {"argv": sys.argv[1:], "users": args.users, "quick": args.quick,
                            "kinds": sorted({d.kind for d in docs}), "wanted_kinds": list(KINDS),
                            "cpus": os.cpu_count(), "started": time.time(), "runs": []}
    code = 0
    try:
        servers.start()
        for label in args.setup:
            meta["runs"].append(run_setup(servers, root, out, label, args, docs, cal_docs))
    except KeyboardInterrupt:
        log.warning("interrupted: cleaning up")
        meta["interrupted"], code = True, 1
    except Exception as err:
        log.exception("failed: cleaning up")
        meta["interrupted"], code = f"{type(err).__name__}: {err}", 1
    finally:
        servers.stop()
        if args.keep_data:
            log.info("data kept in %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    meta["finished"] = time.time()
    if meta["runs"]:
        burst_report.write(out, meta)
        log.info("report: %s", out / "report.md")
    (out / "results.json").write_text(json.dumps(meta, indent=1, default=str))
    failed = any(r["overall"]["not_searchable"] for r in meta["runs"])
    return code or (1 if failed else 0)


def run_setup(servers: Servers, root: Path, out: Path, label: str, args: argparse.Namespace,
              docs: list[Doc], cal_docs: list[Doc]) -> dict[str, Any]:
    seed = label == "seed"
    overrides = dict(SEED_SETUP) if seed else {}
    webuis, workers = (1, 1) if seed else (args.webui, args.workers)
    run_dir = out / label
    run_dir.mkdir(parents=True, exist_ok=True)
    rd = servers.redis_client()
    rd.flushdb()  # the previous setup's RQ registries and worker facts
    users = create_users(servers, len(docs) + 1, f"burst-{label}")
    cal_key, burst_users = users[-1][1], users[:-1]
    owners = [u for u, _ in burst_users]
    settings = servers.settings(**{k.lower(): v for k, v in overrides.items()})
    app = App(app_env(servers, root / label / "uploads", overrides), workers, run_dir / "logs",
              free_port(), webuis=webuis)
    run: dict[str, Any] = {"label": label, "webui": webuis, "workers": workers,
                           "overrides": overrides, "pg_max_connections": servers.max_connections}
    sampler: Sampler | None = None
    try:
        log.info("[%s] starting %d webui + %d worker(s)", label, webuis, workers)
        app.start(rd)
        log.info("[%s] calibrating on %d documents, one at a time", label, len(cal_docs) - 1)
        cal = calibrate(app.url, cal_key, servers.pg.url, cal_docs[1:], settings.segment_chunks,
                        warm_up=cal_docs[0])
        prediction = predict(cal, docs, workers, settings.user_units_in_flight)
        run["calibration"], run["prediction"] = cal.as_dict(), vars(prediction)
        pids = lambda: {**app.pids, "postgres": servers.pg.pid or 0,  # noqa: E731
                        "redis": servers.redis.pid or 0}
        sampler = Sampler(servers.pg.url, servers.redis.url, owners, "ingest", pids,
                          run_dir / "samples.jsonl", metrics_url=app.metrics_urls)
        sampler.start()
        log.info("[%s] burst: %d users upload at once", label, len(docs))
        wall0, results = run_users(app.url, [k for _, k in burst_users], docs, args.poll,
                                   args.timeout)
        time.sleep(1.5)  # one more sample after the last file
    finally:
        for step in (sampler.stop if sampler else None, app.stop, rd.close):
            if step is not None:
                try:
                    step()
                except Exception:
                    log.exception("[%s] cleanup step failed", label)
    with psycopg.connect(servers.pg.url, autocommit=True) as pg:
        rows = {r[0]: r for r in pg.execute(_FILES_SQL, (owners,)).fetchall()}
    users_out = []
    for r in results:
        row = rows.get(r.file_id or "")
        entry = r.as_dict()
        if row is not None:
            _, status, created, started, finished, chunks = row
            entry.update(server_status=status, chunks=chunks,
                         done_s=float(finished) - wall0 if finished else None,
                         queue_wait_s=float(started - created) if started else None)
        users_out.append(entry)
    run["users"] = users_out
    run["overall"] = overall(users_out, sampler, settings, webuis, workers, servers, seed)
    run["series"] = series(sampler, wall0) if sampler else []
    log.info("[%s] %s", label, run["overall"])
    return run


def _four(times: list[float], n: int) -> dict[str, float | None]:
    """First / median / p95 / all done, counted over all n users (a missing file: never)."""
    if not times:
        return {"first": None, "p50": None, "p95": None, "all": None}
    padded = times + [math.inf] * (n - len(times))
    out = {"first": min(times), "p50": order_stat(padded, 0.5), "p95": order_stat(padded, 0.95),
           "all": max(padded)}
    return {k: (None if v == math.inf else v) for k, v in out.items()}


def overall(users: list[dict[str, Any]], sampler: Sampler | None, settings: Any, webuis: int,
            workers: int, servers: Servers, seed: bool) -> dict[str, Any]:
    n = len(users)
    done = [u["done_s"] for u in users if u.get("done_s") is not None]
    searchable = [u["searchable_s"] for u in users if u["searchable_s"] is not None]
    uploads = sorted(u["upload_s"] for u in users if u["upload_s"] is not None)
    last = max((u for u in users if u.get("done_s") is not None), key=lambda u: u["done_s"],
               default=None)
    samples = [s for s in (sampler.samples if sampler else []) if "pg" in s]
    peak_by_app: dict[str, int] = {}
    for s in samples:
        for app, k in s.get("pg_peak", {}).items():
            peak_by_app[app] = max(peak_by_app.get(app, 0), k)
    peak = max((sum(s.get("pg_peak", {}).values()) for s in samples), default=0)
    webui_pool = None if seed else settings.database_pool_size + settings.database_pool_max_overflow
    budget = postgres_budget([Group("webui", webuis, webui_pool, settings.redis_max_connections),
                              Group("worker", workers, settings.worker_db_pool_size,
                                    settings.redis_max_connections)], servers.max_connections)
    return {
        "done": _four(done, n), "searchable": _four(searchable, n),
        "upload_p50_s": order_stat(uploads, 0.5) if uploads else None,
        "upload_p95_s": order_stat(uploads, 0.95) if uploads else None,
        "errors": [f"user {u['user']}: {u['error']}" for u in users if u["error"]],
        "not_searchable": n - len(searchable),
        "upload_429s": sum(u["upload_429s"] for u in users),
        "last_file_queue_wait_s": last.get("queue_wait_s") if last else None,
        "max_queue_wait_s": max((u["queue_wait_s"] for u in users
                                 if u.get("queue_wait_s") is not None), default=None),
        "pg_peak_connections": peak, "pg_peak_by_app": peak_by_app,
        "pg_budget_needed": budget.needed, "pg_budget_terms": budget.terms,
        "pg_max_connections": servers.max_connections,
        "max_files_queued": max((s["files"].get("queued", 0) for s in samples), default=0),
        "max_rq_queue": max((s["queue"] for s in samples), default=0),
        "chunks": sum(u.get("chunks") or 0 for u in users),
        "sampler_errors": sampler.errors if sampler else None,
    }


def series(sampler: Sampler, wall0: float) -> list[dict[str, Any]]:
    """Queue depth over time: files by status and the RQ queue, seconds since the burst."""
    return [{"t": s["t"] - wall0, "queued": s["files"].get("queued", 0),
             "processing": s["files"].get("processing", 0), "done": s["files"].get("done", 0),
             "failed": s["files"].get("failed", 0), "rq_queue": s["queue"],
             "pg": sum(s.get("pg_peak", {}).values())}
            for s in sampler.samples if "files" in s]


if __name__ == "__main__":
    sys.exit(main())
