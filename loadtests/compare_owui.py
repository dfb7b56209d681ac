"""`make compare`: the same burst against Open WebUI and against Sluice, one after the other.

The burst: N Markdown files of ~30 KB (default 100, ~3 MB; `--quick`: 10), built
from the Markdown found on this machine (loadtests/corpus.py's sources) with a
fixed seed, uploaded all at once over HTTP by one user (N concurrent requests),
then watched until every file is processed. Both systems run on one embedded
PostgreSQL + pgvector (a database each), one at a time, with nothing else of
ours running:

- Open WebUI (owui.py): its own venv, its defaults, in-process
  sentence-transformers on the same all-MiniLM-L6-v2 files, pgvector, offline.
  Upload `POST /api/v1/files/`; processed = `file.data.status` `completed`.
- Sluice: `sluice webui` + `--workers` workers (default 2; loadtests/stack.py, as
  `sluice up` runs them) with its defaults, except the per-user upload limits lifted so one
  user may upload N files at once (UPLOADS_IN_FLIGHT_PER_USER,
  RATE_LIMIT_PER_MINUTE). Processed = `files.status` `done`.

Both are timed the same way: the harness polls each system's table every
0.25 s (a query on Postgres, no load on the app) and records when it first sees
a file processed, from the moment the first upload starts. At the end every
file's status is checked once through each system's HTTP API. Printed side by
side, with ratios: all processed, first / median / p95 file done, chunks and
tokens stored, chunks/s, CPU per chunk of the app's processes (and of
Postgres), peak memory of the app's processes, the load average and the cores
other work used meanwhile. Written to loadtests/reports/compare-<time>/, with
Sluice's logs (sluice-logs/).

    .venv/bin/python loadtests/compare_owui.py [--quick] [--files 100] [--workers 2]
        [--sluice-env EMBEDDING_BACKEND=onnx-int8] [--only owui|sluice]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import owui
from burst import BurstResult, render, run_burst
from corpus import PLACEHOLDER, _markdown_docs, _take
from stack import App, Servers, app_env, create_users, free_port, interrupt_on_sigterm

from shared.embedding import model_path
from shared.settings import load_settings

REPORTS = Path(__file__).resolve().parent / "reports"


def burst_files(n: int, seed: int = 19) -> list[tuple[str, bytes]]:
    """n Markdown files of 25-35 KB, each with a unique reference line (no deduplication)."""
    rng = random.Random(seed)
    docs = _markdown_docs()
    if not docs:
        raise RuntimeError("no Markdown found under /usr/share/doc or in installed packages")
    out = []
    for i in range(n):
        text = _take(docs, rng, rng.randint(25_000, 35_000))
        out.append((f"burst-{i:03d}.md", f"{text}\n\ncompare-ref: {i:03d}-{seed}\n".encode()))
    assert all(PLACEHOLDER not in b for _, b in out)
    return out


def run_owui(servers: Servers, root: Path, files: list[tuple[str, bytes]]) -> BurstResult:
    facts = owui.ensure_venv()
    db_url = owui.create_database(servers.pg.url, "owui")
    server = owui.OpenWebUI(owui.VENV, db_url, root / "owui", model_path(load_settings()))
    try:
        started = server.start()
        print(f"  Open WebUI {owui.VERSION} up in {started:.0f} s (pid {server.pid})", flush=True)
        token = server.signup()
        return run_burst(
            "Open WebUI", server.url, {"Authorization": f"Bearer {token}"}, files,
            upload_path=owui.UPLOAD_PATH, db_url=db_url, status_sql=owui.STATUS_SQL,
            status_params=(), done=owui.DONE, failed=owui.FAILED, chunks_sql=owui.CHUNKS_SQL,
            chunks_params=(), app_pids=[server.pid], servers=servers,
            api_status=owui.api_status, done_api=owui.DONE,
            facts={"version": owui.VERSION, "install": facts, "start_s": started},
        )
    finally:
        server.stop()


def run_sluice(servers: Servers, root: Path, files: list[tuple[str, bytes]], workers: int,
               overrides: dict[str, str]) -> BurstResult:
    env = app_env(servers, root / "sluice" / "uploads", {
        "UPLOADS_IN_FLIGHT_PER_USER": str(max(len(files), 4)), "RATE_LIMIT_PER_MINUTE": "0",
        **overrides})
    app = App(env, workers=workers, log_dir=root / "sluice" / "logs", port=free_port())
    rd = servers.redis_client()
    user_id, key = create_users(servers, 1, "compare")[0]
    try:
        t0 = time.perf_counter()
        app.start(rd)
        started = time.perf_counter() - t0
        print(f"  Sluice up in {started:.0f} s ({workers} worker(s))", flush=True)

        def api_status(client: Any, file_id: str) -> str:
            r = client.get(f"/api/v1/files/{file_id}")
            r.raise_for_status()
            status: str = r.json()["status"]
            return status

        return run_burst(
            "Sluice", app.url, {"Authorization": f"Bearer {key}"}, files,
            upload_path="/api/v1/files", db_url=servers.pg.url,
            status_sql="SELECT id::text, status FROM files WHERE owner_id = %s",
            status_params=(user_id,), done="done", failed="failed",
            chunks_sql="SELECT text FROM chunks WHERE owner_id = %s", chunks_params=(user_id,),
            app_pids=list(app.pids.values()), servers=servers, api_status=api_status,
            done_api="done", facts={"workers": workers, "start_s": started,
                                    "overrides": {k: v for k, v in env.items()
                                                  if k in ("UPLOADS_IN_FLIGHT_PER_USER",
                                                           "RATE_LIMIT_PER_MINUTE", *overrides)}},
        )
    finally:
        app.stop()
        rd.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="10 files: check the harness end to end")
    p.add_argument("--workers", type=int, default=2,
                   help="Sluice workers (default 2, as `sluice up` and `make run` start)")
    p.add_argument("--sluice-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--only", choices=("owui", "sluice"))
    p.add_argument("--report", type=Path, help="folder (default loadtests/reports/compare-<time>)")
    args = p.parse_args()
    n = 10 if args.quick else args.files
    overrides = dict(kv.split("=", 1) for kv in args.sluice_env)
    files = burst_files(n)
    print(f"burst: {n} Markdown files, {sum(len(b) for _, b in files) / 1e6:.2f} MB; load average "
          f"{os.getloadavg()}", flush=True)
    interrupt_on_sigterm()  # Ctrl-C or SIGTERM: the finally blocks stop what we started
    results: list[BurstResult] = []
    folder = args.report or REPORTS / time.strftime("compare-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sluice-compare-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # the embedded server may run as another user
        servers = Servers(root / "servers", max_connections=200)
        servers.start()
        try:
            if args.only != "sluice":
                results.append(run_owui(servers, root, files))
            if args.only != "owui":
                results.append(run_sluice(servers, root, files, args.workers, overrides))
        finally:
            servers.stop()
            if (root / "sluice" / "logs").is_dir():  # the webui's and workers' own account
                shutil.copytree(root / "sluice" / "logs", folder / "sluice-logs")
    text = render(results, n)
    print("\n" + text)
    (folder / "report.md").write_text(text)
    (folder / "results.json").write_text(json.dumps([r.as_dict() for r in results], indent=1))
    print(f"report: {folder / 'report.md'}")


if __name__ == "__main__":
    main()
