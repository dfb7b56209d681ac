"""Search under load: searches/s and latency at 1, 10, 50 and 100 concurrent clients,
before and after the hybrid / micro-batched search, on one seeded table.

    .venv/bin/python loadtests/bench_search.py [--quick] [--chunks 100000] [--users 5]
        [--levels 1,10,50,100] [--duration 20] [--before 5bc8bc8] [--json out.json]

1. Embedded Postgres + Redis in a temp folder, migrated; `--users` users with a key.
2. `--chunks` chunks (seed_chunks.py: realistic vectors, real sentences as text) dealt
   round robin over the users' files; HNSW and GIN indexes built.
3. The ceiling: the query encoder's raw rate in this process (one thread, as the
   webui runs it), one query at a time and in batches of QUERY_BATCH_MAX.
4. For each variant: `sluice webui` (default pool 10 + 5, rate limit off) from the
   `--before` git revision's src/ (`git archive`), then from this checkout; each level
   runs closed-loop clients for `--duration` s: every client posts a search (a query
   of the labelled eval set, as a random user), waits for the answer, and repeats.
   Reported per level: searches/s, p50/p95/p99, errors by status.

`--quick`: 10k chunks, 8 s per level, 300 base sentences. Traffic goes only to
127.0.0.1; servers and webuis are stopped on exit. Numbers depend on the machine:
on a shared one, read them side by side, not alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import seed_chunks
from stack import Child, Servers, app_env, create_users, free_port, sluice_cmd

log = logging.getLogger("loadtest.bench_search")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def eval_texts() -> tuple[list[str], list[str]]:
    """(sentences for the seeded chunks, queries): from the labelled eval set."""
    from corpus import _sentences

    docs, queries = [], []
    for line in (HERE / "data" / "retrieval_eval.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["type"] == "doc":
            docs.append(row["text"])
        elif row["type"] == "query":
            queries.append(row["query"])
    return _sentences(docs), queries


def encoder_ceiling(queries: list[str], batch: int, seconds: float) -> dict[str, float]:
    """Queries/s of the webui's encoder (1 thread) one at a time and in batches."""
    from shared.encoders import load_embedder
    from shared.settings import load_settings
    from webui.query_encoder import encode_by_length

    embedder = load_embedder(load_settings(), 1)
    embedder.warm_up()
    out = {}
    for size in (1, batch):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            start = (done * 7) % len(queries)
            texts = (queries[start:] + queries[:start])[:size]
            encode_by_length(embedder, texts)  # as the webui's QueryEncoder does
            done += size
        out[f"batch{size}_qps"] = done / (time.perf_counter() - started)
    return out


def source_of(ref: str, into: Path) -> Path:
    """src/ of git revision `ref`, extracted under `into`."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


async def _client_loop(client: httpx.AsyncClient, keys: list[str], queries: list[str],
                       until: float, rng: random.Random, out: list[tuple[float, int]],
                       server: list[tuple[float, float]]) -> None:
    while time.perf_counter() < until:
        body = {"query": rng.choice(queries), "top_k": 10}
        headers = {"Authorization": f"Bearer {rng.choice(keys)}"}
        t = time.perf_counter()
        try:
            r = await client.post("/api/v1/search", json=body, headers=headers)
            status = r.status_code
            if status == 200:  # the server's own view: whole handler, and encoder wait
                data = r.json()
                server.append((data["took_ms"], data.get("encode_ms", float("nan"))))
        except httpx.HTTPError:
            status = 0
        out.append((time.perf_counter() - t, status))


async def run_level(url: str, keys: list[str], queries: list[str], clients: int,
                    seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        results: list[tuple[float, int]] = []
        server: list[tuple[float, float]] = []
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(_client_loop(client, keys, queries, until, random.Random(i),
                                            results, server) for i in range(clients)))
        elapsed = time.perf_counter() - started
    ok = np.array([t for t, s in results if s == 200]) * 1000
    errors: dict[str, int] = {}
    for _, s in results:
        if s != 200:
            errors[str(s)] = errors.get(str(s), 0) + 1
    pct = (lambda q: float(np.percentile(ok, q))) if len(ok) else (lambda q: float("nan"))
    return {"clients": clients, "searches": len(results), "per_s": len(ok) / elapsed,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "errors": errors,
            "server_took_ms": float(np.mean([t for t, _ in server])) if server else float("nan"),
            "server_encode_ms": float(np.mean([e for _, e in server])) if server else float("nan")}


def bench_variant(name: str, src: Path, servers: Servers, root: Path, keys: list[str],
                  queries: list[str], levels: list[int], seconds: float) -> list[dict[str, Any]]:
    port = free_port()
    env = app_env(servers, root / "uploads", {"RATE_LIMIT_PER_MINUTE": "0", "PYTHONPATH": str(src),
                                              "EMBED_THREADS": "1"})
    webui = Child(f"webui-{name}", sluice_cmd("webui", "--port", str(port)), env,
                  root / f"webui-{name}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not webui.running():
                raise RuntimeError(f"webui {name} did not start:\n{webui.tail()}")
            time.sleep(0.5)
        asyncio.run(run_level(url, keys, queries, 4, 2))  # warm-up
        rows = []
        for c in levels:
            row = asyncio.run(run_level(url, keys, queries, c, seconds))
            print(f"  {name:6} {c:4} clients: {row['per_s']:6.1f} searches/s  p50 "
                  f"{row['p50_ms']:7.1f}  p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  "
                  f"errors {row['errors'] or 0}  server took {row['server_took_ms']:.0f} ms "
                  f"(encoder {row['server_encode_ms']:.0f})", flush=True)
            rows.append(row)
        return rows
    finally:
        webui.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--chunks", type=int)
    p.add_argument("--users", type=int, default=5)
    p.add_argument("--levels", default="1,10,50,100")
    p.add_argument("--duration", type=float)
    p.add_argument("--before", default="5bc8bc8", help="git revision for the 'before' run")
    p.add_argument("--json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    chunks = args.chunks or (10_000 if args.quick else 100_000)
    seconds = args.duration or (8.0 if args.quick else 20.0)
    levels = [int(x) for x in args.levels.split(",")]
    sentences, queries = eval_texts()
    sentences = sentences[:300] if args.quick else sentences[:1500]
    report: dict[str, Any] = {"chunks": chunks, "users": args.users, "seconds": seconds,
                              "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="sluice-bench-search-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # the embedded server may run as another user
        servers = Servers(root, max_connections=100)
        try:
            servers.start()
            users = create_users(servers, args.users, "bench")
            cache = HERE / ".corpus" / f"bench-search-base-{len(sentences)}.npy"
            cache.parent.mkdir(exist_ok=True)
            base = seed_chunks.base_vectors(sentences, cache)
            report["seed"] = seed_chunks.seed(servers.pg.url, [u for u, _ in users], chunks,
                                              sentences, base)
            report["encoder"] = encoder_ceiling(queries, 16, 2.0 if args.quick else 5.0)
            enc = report["encoder"]
            print(f"{chunks} chunks of {args.users} users; encoder ceiling (1 thread): "
                  f"{enc['batch1_qps']:.0f} queries/s one at a time, {enc['batch16_qps']:.0f} "
                  f"in batches of 16", flush=True)
            keys = [k for _, k in users]
            before = source_of(args.before, root / "before")
            for name, src in [("before", before), ("after", REPO / "src")]:
                report[name] = bench_variant(name, src, servers, root, keys, queries, levels,
                                             seconds)
        finally:
            servers.stop()
    report["loadavg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
