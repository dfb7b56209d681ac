"""`make loadtest`: the 100-user proof on this machine, the old setup against the new one.

Starts embedded Postgres + Redis in a temp folder, bulk-loads --seed-chunks
chunks for a "bulk" user, then for each setup starts `sluice webui` and
`sluice worker` children, runs Locust headless (10 → 50 → 100 users, see
locustfile.py) while sampling the servers every second, waits (bounded) for the
queue to drain, stops the children and writes loadtests/reports/<timestamp>/
with report.md and plots. With --compare (the default) the same shape runs
twice: (a) the seed system's setup (NullPool, 1 worker, model reloaded per
job), (b) Sluice's defaults with --workers workers. Only 127.0.0.1 is used;
only processes started here are stopped, by PID; the temp folder and its
servers are removed on exit, Ctrl-C and errors included.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import report
import seed_chunks
import shapes as shape
from corpus import CORPUS_DIR
from corpus import load as load_corpus
from sampler import Sampler
from stack import SETTING_NAMES, App, Child, Servers, app_env, create_users, free_port

log = logging.getLogger("loadtest")
HERE = Path(__file__).resolve().parent
SEED_SETUP = {"DATABASE_POOL_SIZE": "0", "DATABASE_EXTERNAL_POOLER": "true",
              "BENCH_RELOAD_MODEL_PER_JOB": "true"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1, help="workers of the Sluice-defaults run")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the seed setup first and compare (default: on)")
    p.add_argument("--shape", default=shape.DEFAULT_SHAPE, help="users:ramp_s:hold_s,...")
    p.add_argument("--scale", type=float, help="times every ramp and hold "
                   "(default 1.0; 0.5 with --compare, so both runs fit the time budget)")
    p.add_argument("--upload-interval", type=float, default=300,
                   help="mean seconds between one user's uploads (default 300)")
    p.add_argument("--search-interval", type=float, default=20,
                   help="mean seconds between one user's searches (default 20)")
    p.add_argument("--seed-chunks", type=int, default=100_000,
                   help="chunks bulk-loaded for the bulk user before the runs (0: none)")
    p.add_argument("--drain-timeout", type=float,
                   help="longest wait for the queue to drain after the shape (s; default "
                   "300, 150 with --compare)")
    p.add_argument("--pg-max-connections", type=int, default=100,
                   help="Postgres max_connections (default 100, the stock PostgreSQL value)")
    p.add_argument("--out", type=Path, help="report folder (default loadtests/reports/<time>)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a Sluice setting for the Sluice-defaults run, e.g. EMBED_THREADS=1")
    p.add_argument("--keep-data", action="store_true", help="keep the temp data folder")
    args = p.parse_args(argv)
    args.set = dict(item.split("=", 1) for item in args.set)
    if args.scale is None:
        args.scale = 0.5 if args.compare else 1.0
    if args.drain_timeout is None:
        args.drain_timeout = 150.0 if args.compare else 300.0
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or HERE / "reports" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out / "run.log")])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (`&`)
    started = time.time()
    # Only the settings named here reach the stack: a DATABASE_POOL_SIZE exported in this
    # shell must not quietly change "Sluice defaults".
    ignored = sorted(k for k in os.environ if k.upper() in SETTING_NAMES)
    for k in ignored:
        log.warning("ignoring %s from the environment (use --set for run (b))", k)
        del os.environ[k]
    manifest = load_corpus()
    root = Path(tempfile.mkdtemp(prefix="sluice-loadtest-"))
    servers = Servers(root, args.pg_max_connections)
    meta: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()},
                            "argv": sys.argv[1:], "ignored_env": ignored,
                            "started": started, "cpus": os.cpu_count(), "runs": []}
    try:
        log.info("servers: starting in %s", root)
        servers.start()
        corpus_key = None
        if args.seed_chunks > 0:
            sentences = manifest["sentences"]
            assert isinstance(sentences, list)
            base = seed_chunks.base_vectors(sentences, CORPUS_DIR / "seed-base.npy")
            bulk_id, corpus_key = create_users(servers, 1, "bulk")[0]
            log.info("seed: %d chunks for the bulk user", args.seed_chunks)
            meta["seed"] = seed_chunks.seed(servers.pg.url, bulk_id, args.seed_chunks,
                                            sentences, base)
        plans = [("seed", 1, SEED_SETUP)] if args.compare else []
        plans.append(("defaults", args.workers, args.set))
        for label, workers, overrides in plans:
            meta["runs"].append(run_once(servers, root, out, label, workers, overrides, args,
                                         corpus_key))
    except KeyboardInterrupt:
        log.warning("interrupted: cleaning up")
        meta["interrupted"] = True
    except Exception as err:
        log.exception("failed: cleaning up")
        meta["interrupted"] = f"{type(err).__name__}: {err}"
    finally:
        servers.stop()  # stops both servers even if one fails
        if args.keep_data:
            log.info("data kept in %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    meta["finished"] = time.time()
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    if meta["runs"]:
        path = report.write(out, meta)
        log.info("report: %s (%.1f min in all)", path, (time.time() - started) / 60)
    return 1 if meta.get("interrupted") else 0


def run_once(servers: Servers, root: Path, out: Path, label: str, workers: int,
             overrides: dict[str, str], args: argparse.Namespace, corpus_key: str | None
             ) -> dict[str, Any]:
    """One setup: start it, run the shape, drain, stop it. Returns the run's facts."""
    run_dir = out / label
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = shape.parse_shape(args.shape, args.scale)
    n_users = max(u for u, _, _ in stages)
    rd = servers.redis_client()
    rd.flushdb()  # the previous run's RQ registries and worker facts
    users = create_users(servers, n_users, label)
    keys_file = root / f"{label}-keys.txt"  # keys stay in the temp folder, not in the report
    keys_file.write_text("\n".join(k for _, k in users) + "\n")
    env = app_env(servers, root / label / "uploads", overrides)
    app = App(env, workers, run_dir / "logs", free_port())
    settings = servers.settings(**{k.lower(): v for k, v in overrides.items()})
    with servers.connect() as pg:
        chunks_before = pg.execute("SELECT count(*) FROM chunks").fetchone()[0]  # type: ignore[index]
    nullpool = overrides.get("DATABASE_POOL_SIZE") == "0"
    facts: dict[str, Any] = {
        "label": label, "workers": workers, "overrides": overrides, "stages": stages,
        "users": n_users, "upload_interval": args.upload_interval,
        "chunks_before": chunks_before, "pg_max_connections": servers.max_connections,
        "webui_pool": None if nullpool
        else settings.database_pool_size + settings.database_pool_max_overflow,
        "worker_pool": settings.worker_db_pool_size,
        "redis_max_connections": settings.redis_max_connections,
        "nullpool_shim": app.nullpool_shim,
    }
    locust: Child | None = None
    sampler: Sampler | None = None
    try:
        log.info("[%s] starting webui + %d worker(s)", label, workers)
        t = time.time()
        app.start(rd)
        facts["startup_s"] = time.time() - t
        pids = lambda: {**app.pids, "postgres": servers.pg.pid or 0,  # noqa: E731
                        "redis": servers.redis.pid or 0,
                        **({"locust": locust.pid} if locust else {})}
        sampler = Sampler(servers.pg.url, servers.redis.url, [u for u, _ in users], "ingest",
                          pids, run_dir / "samples.jsonl", metrics_url=app.metrics_url)
        sampler.start()
        locust_env = {**env, "SLUICE_API_KEYS_FILE": str(keys_file),
                      "SLUICE_LEDGER": str(run_dir / "ledger.jsonl"),
                      "SLUICE_REQUEST_LOG": str(run_dir / "requests.jsonl"),
                      "SLUICE_SHAPE": args.shape, "SLUICE_SHAPE_SCALE": str(args.scale),
                      "SLUICE_UPLOAD_INTERVAL": str(args.upload_interval),
                      "SLUICE_SEARCH_INTERVAL": str(args.search_interval),
                      "SLUICE_RUN_LABEL": label}
        if corpus_key:
            locust_env["SLUICE_CORPUS_KEY"] = corpus_key
        cmd = [str(Path(sys.executable).parent / "locust"), "-f", str(HERE / "locustfile.py"),
               "--headless", "--host", app.url, "--only-summary", "--stop-timeout", "10",
               "--csv", str(run_dir / "locust")]
        shape_s = sum(r + h for _, r, h in stages)
        log.info("[%s] locust: %s for %.0f s", label, args.shape, shape_s)
        facts["t_locust_start"] = time.time()
        locust = Child("locust", cmd, locust_env, run_dir / "locust.log")
        try:
            locust.popen.wait(shape_s + 120)
        except subprocess.TimeoutExpired:
            log.error("[%s] locust overran its shape; stopping it", label)
        locust.stop(grace=20)
        facts["t_locust_end"] = time.time()
        facts["locust_rc"] = locust.popen.returncode
        facts["t_drained"] = drain(servers, [u for u, _ in users], args.drain_timeout, label)
        facts["t_drain_deadline"] = facts["t_locust_end"] + args.drain_timeout
        time.sleep(2)
    finally:  # each step on its own: one failing must not leave the others running
        for step in (sampler.stop if sampler else None, locust.stop if locust else None,
                     app.stop, rd.close):
            if step is not None:
                try:
                    step()
                except Exception:
                    log.exception("[%s] cleanup step failed", label)
    facts["sampler_errors"] = sampler.errors if sampler else None
    with servers.connect() as pg:
        facts["chunks_after"] = pg.execute("SELECT count(*) FROM chunks").fetchone()[0]  # type: ignore[index]
        rows = pg.execute(
            "SELECT id::text, status, error, attempts, chunk_count, size_bytes, kind, "
            "extract(epoch FROM created_at), extract(epoch FROM started_at), "
            "extract(epoch FROM finished_at) FROM files WHERE owner_id = ANY(%s::uuid[])",
            ([u for u, _ in users],)).fetchall()
        # Files this run left unfinished would be found by the next run's reconciler (their
        # bytes are in this run's upload folder): remove them once recorded.
        pg.execute("DELETE FROM files WHERE owner_id = ANY(%s::uuid[]) AND status IN "
                   "('queued', 'processing')", ([u for u, _ in users],))
    cols = ["id", "status", "error", "attempts", "chunks", "bytes", "kind", "created", "started",
            "finished"]
    (run_dir / "files.json").write_text(json.dumps(
        [dict(zip(cols, [float(v) if hasattr(v, "is_nan") else v for v in r], strict=True))
         for r in rows]))
    return facts


def drain(servers: Servers, owner_ids: list[str], timeout: float, label: str) -> float | None:
    """Wait until none of the run's files is queued or processing; the time, or None."""
    deadline = time.time() + timeout
    with servers.connect() as pg:
        while True:
            left = pg.execute("SELECT count(*) FROM files WHERE owner_id = ANY(%s::uuid[]) AND "
                              "status IN ('queued', 'processing')", (owner_ids,)).fetchone()
            n = left[0] if left else 0
            if n == 0:
                log.info("[%s] drained", label)
                return time.time()
            if time.time() > deadline:
                log.warning("[%s] %d files still pending after %.0f s", label, n, timeout)
                return None
            time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
