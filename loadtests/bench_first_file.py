"""`make bench-first`: how soon the first file of the `make compare` burst is done, with
Sluice's defaults and with other settings, in interleaved trials.

`make compare` times the first file once per run, and one run moves by half a second
with the machine's noise. Here the same burst (100 Markdown files of ~30 KB uploaded at
once by one user, compare_owui.burst_files) runs against a fresh Sluice stack (embedded
Postgres + Redis, `sluice webui` + `--workers` workers, as `sluice up` runs them) for
each trial, the configurations taking turns, and stops once the first file is done and
every upload answered. Per trial: when the first file was done (Postgres polled every
10 ms), and when the first, the median and the last upload were answered.

    .venv/bin/python loadtests/bench_first_file.py [--trials 4] [--workers 2]
        [--config NAME=K=V,K=V ...]   (default: defaults vs. without the
         oldest-first admission and the spreading over an idle fleet)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from compare_owui import burst_files
from stack import App, Servers, app_env, create_users, free_port, interrupt_on_sigterm

CONFIGS = {
    "defaults": {},
    "without": {"SPREAD_MIN_CHUNKS": "0", "UPLOAD_ADMISSION_SLOTS": "1000"},
}


def trial(files: list[tuple[str, bytes]], workers: int, overrides: dict[str, str]
          ) -> tuple[float, float, float, float]:
    """(first upload answered, first file done, median upload answered, last upload
    answered), seconds from the start of the burst."""
    with tempfile.TemporaryDirectory(prefix="sluice-first-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # the embedded server may run as another user
        servers = Servers(root / "servers", max_connections=200)
        servers.start()
        rd = servers.redis_client()
        try:
            user_id, key = create_users(servers, 1, "first")[0]
            env = app_env(servers, root / "uploads", {
                "UPLOADS_IN_FLIGHT_PER_USER": str(len(files)), "RATE_LIMIT_PER_MINUTE": "0",
                **overrides})
            app = App(env, workers=workers, log_dir=root / "logs", port=free_port())
            try:
                app.start(rd)
                time.sleep(2)  # let the workers settle (registration, first dispatch pass)
                return _burst(app.url, key, user_id, servers.pg.url, files)
            finally:
                app.stop()
        finally:
            rd.close()
            servers.stop()


def _burst(url: str, key: str, user_id: str, db_url: str, files: list[tuple[str, bytes]]
           ) -> tuple[float, float, float, float]:
    answered: list[float] = []

    async def upload_all() -> None:
        limits = httpx.Limits(max_connections=len(files), max_keepalive_connections=len(files))
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=600, limits=limits) as client:
            async def one(name: str, data: bytes) -> None:
                r = await client.post("/api/v1/files",
                                      files={"file": (name, data, "text/markdown")})
                r.raise_for_status()
                answered.append(time.perf_counter() - t0)
            await asyncio.gather(*(one(n, d) for n, d in files))

    uploads = threading.Thread(target=lambda: asyncio.run(upload_all()), daemon=True)
    with psycopg.connect(db_url, autocommit=True) as conn:
        t0 = time.perf_counter()
        uploads.start()
        while not conn.execute("SELECT 1 FROM files WHERE owner_id = %s AND status = 'done' "
                               "LIMIT 1", (user_id,)).fetchone():
            if time.perf_counter() - t0 > 300:
                raise RuntimeError("no file done within 300 s")
            time.sleep(0.01)
        first = time.perf_counter() - t0
    uploads.join()
    return min(answered), first, statistics.median(answered), max(answered)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4, help="per configuration")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--config", action="append", default=[], metavar="NAME=K=V,K=V",
                   help="a configuration to compare (repeatable; default: defaults, without)")
    args = p.parse_args()
    configs = CONFIGS
    if args.config:
        configs = {}
        for spec in args.config:
            name, _, pairs = spec.partition("=")
            configs[name] = dict(kv.split("=", 1) for kv in pairs.split(",") if kv)
    files = burst_files(args.files)
    interrupt_on_sigterm()
    print(f"burst: {len(files)} files, {args.workers} worker(s), {args.trials} trials per "
          f"configuration, interleaved; load average {os.getloadavg()}", flush=True)
    got: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in configs}
    for n in range(args.trials):
        for name, overrides in configs.items():
            result = trial(files, args.workers, overrides)
            got[name].append(result)
            print(f"  trial {n + 1} {name:>10}: uploads answered first {result[0]:.2f} s, "
                  f"median {result[2]:.2f} s, last {result[3]:.2f} s; first file done "
                  f"{result[1]:.2f} s", flush=True)
    print(f"\nload average {os.getloadavg()}\n")
    print("Medians over the trials (seconds from the start of the burst):\n")
    print("| configuration | first file done | (min-max) | first upload answered | "
          "median upload answered | last upload answered |")
    print("|---|---|---|---|---|---|")
    for name, rows in got.items():
        firsts = [r[1] for r in rows]

        def med(k: int, rows: list[tuple[float, float, float, float]] = rows) -> str:
            return f"{statistics.median(r[k] for r in rows):.2f}"
        print(f"| {name} {configs[name] or ''} | **{med(1)}** | {min(firsts):.2f}-"
              f"{max(firsts):.2f} | {med(0)} | {med(2)} | {med(3)} |")


if __name__ == "__main__":
    main()
