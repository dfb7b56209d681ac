"""Segments and fair turns, measured on this machine (embedded servers, real workers).

1. One big text file: time to `done` with 1, 2 and 4 workers, the per-segment overhead
   (a segment job's wall time minus its embedding time, and the idle gap between units),
   and the 4-worker/1-worker ratio a fleet with one core per worker would get, simulated
   from the measured per-unit times (this machine has fewer cores than workers).
2. Fairness, one worker: user B's one small file, alone and behind user A's backlog.

    python loadtests/bench_segments.py --quick     # ~1 MB file, 1 and 2 workers, A = 40 files
    python loadtests/bench_segments.py             # 20 MB file, 1/2/4 workers, A = 200 files

Prints a table and writes loadtests/reports/segments-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from stack import App, Servers, app_env, create_users, free_port

WORDS = ("tide estuary sluice canal gate lock weir marsh creek delta silt harbour river flow "
         "water level flood ebb basin channel dam reservoir pump barrier dyke polder").split()
_JOB = re.compile(r"Successfully completed work unit (\d+) attempt \d+ job in (\d+):(\d+):([\d.]+)s")
_SEG = re.compile(r"segment\.stored .* embed=([\d.]+)s store=([\d.]+)s")
_PARSED = re.compile(r"file\.parsed .* parse=([\d.]+)s chunk=([\d.]+)s")


def big_text(mb: float, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    out, size = [], 0
    while size < mb * 1024 * 1024:
        para = " ".join(" ".join(rng.choices(WORDS, k=rng.randint(8, 20))).capitalize() + "."
                        for _ in range(rng.randint(3, 8)))
        out.append(para)
        size += len(para) + 2
    return f"{uuid.uuid4()}\n\n".encode() + "\n\n".join(out).encode()


def _wait_done(client: httpx.Client, fid: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/api/v1/files/{fid}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.2)
    raise TimeoutError(f"file {fid} not done within {timeout:.0f} s")


def run_big(servers: Servers, root: Path, data: bytes, workers: int, env: dict[str, str],
            timeout: float) -> dict[str, Any]:
    logs = root / f"big-{workers}w"
    app = App(app_env(servers, root / "uploads", env), workers, logs, free_port())
    app.start(servers.redis_client())
    try:
        (_, key), = create_users(servers, 1, f"big{workers}-{uuid.uuid4().hex[:6]}")
        with httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {key}"},
                          timeout=120) as c:
            t0 = time.monotonic()
            fid = c.post("/api/v1/files", files={"file": ("big.txt", data)}).json()["id"]
            body = _wait_done(c, fid, timeout)
            wall = time.monotonic() - t0
    finally:
        app.stop()
    text = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.log"))
    by_unit = {int(u): int(h) * 3600 + int(m) * 60 + float(s) for u, h, m, s in _JOB.findall(text)}
    jobs = list(by_unit.values())
    seg_jobs = [t for u, t in by_unit.items() if u != min(by_unit)]  # the parse unit comes first
    segs = [(float(e), float(s)) for e, s in _SEG.findall(text)]
    parse = [float(p) + float(c) for p, c in _PARSED.findall(text)]
    embed = sum(e for e, _ in segs)
    # A segment job's time beyond embedding: claim, payload read, store, commit, events.
    overhead = (sum(seg_jobs) - embed) / max(len(segs), 1)
    return {
        "workers": workers, "status": body["status"], "wall_s": round(wall, 1),
        "chunks": body["chunk_count"], "segments": body["segments_total"],
        "parse_s": round(sum(parse), 2), "embed_s_total": round(embed, 1),
        "segment_job_s_mean": round(statistics.mean(seg_jobs), 3) if seg_jobs else None,
        "overhead_per_segment_s": round(overhead, 3),
        "idle_gap_per_unit_s": round(max(wall * workers - sum(jobs), 0) / max(len(jobs), 1), 3),
    }


def simulate(one: dict[str, Any], workers: int) -> float:
    """Time to done for `workers` workers on a core each, from the 1-worker run: the parse,
    then the segments in rounds of `workers` (each segment as long as measured)."""
    per_segment = (one["embed_s_total"] / max(one["segments"], 1)) + one["overhead_per_segment_s"]
    gap = one["idle_gap_per_unit_s"]
    return one["parse_s"] + math.ceil(one["segments"] / workers) * (per_segment + gap)


def run_fairness(servers: Servers, root: Path, a_files: int, env: dict[str, str]) -> dict[str, Any]:
    app = App(app_env(servers, root / "uploads", env), 1, root / "fair", free_port())
    app.start(servers.redis_client())
    try:
        (_, ka), (_, kb) = create_users(servers, 2, f"fair-{uuid.uuid4().hex[:6]}")
        with httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {ka}"}, timeout=60) as a, \
                httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {kb}"}, timeout=60) as b:
            def b_latency() -> float:
                t0 = time.monotonic()
                fid = b.post("/api/v1/files", files={
                    "file": ("b.txt", f"B's file {uuid.uuid4()} about the tide".encode())}).json()["id"]
                _wait_done(b, fid, 600)
                return time.monotonic() - t0

            alone = b_latency()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda i: a.post("/api/v1/files", files={
                    "file": (f"a{i}.txt", f"A's note {i} {uuid.uuid4()} on sluices".encode())}),
                    range(a_files)))
            behind = b_latency()
            a_done = a.get("/api/v1/files", params={"status": "done", "limit": 1}).json()["total"]
    finally:
        app.stop()
    return {"a_files": a_files, "b_alone_s": round(alone, 2), "b_behind_a_s": round(behind, 2),
            "a_done_when_b_done": a_done}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~1 MB, 1 and 2 workers, A = 40 files")
    ap.add_argument("--mb", type=float, default=None)
    ap.add_argument("--workers", default=None, help="comma-separated worker counts")
    ap.add_argument("--segment-chunks", type=int, default=256)
    args = ap.parse_args(argv)
    mb = args.mb or (1.0 if args.quick else 20.0)
    counts = [int(w) for w in (args.workers or ("1,2" if args.quick else "1,2,4")).split(",")]
    a_files = 40 if args.quick else 200
    env = {"SEGMENT_CHUNKS": str(args.segment_chunks), "MAX_UPLOAD_MB": str(int(mb) + 5),
           "EMBED_THREADS": "1", "RATE_LIMIT_PER_MINUTE": "0", "UPLOADS_IN_FLIGHT_PER_USER": "64"}
    root = Path(tempfile.mkdtemp(prefix="sluice-bench-segments-"))
    servers = Servers(root / "servers", max_connections=100)
    servers.start()
    try:
        data = big_text(mb)
        big = [run_big(servers, root, data, w, env, timeout=7200) for w in counts]
        fair = run_fairness(servers, root, a_files, env)
    finally:
        servers.stop()
    one = big[0]
    sim = {w: round(simulate(one, w), 1) for w in (1, 2, 4)}
    report = {"mb": mb, "segment_chunks": args.segment_chunks, "big_file": big,
              "simulated_one_core_per_worker_s": sim,
              "simulated_ratio_4_to_1": round(sim[4] / sim[1], 3), "fairness": fair}
    print(f"big file {mb:g} MB, SEGMENT_CHUNKS={args.segment_chunks}")
    print("workers  wall_s  chunks  segments  seg_job_s  overhead/seg_s  idle_gap/unit_s")
    for r in big:
        print(f"{r['workers']:>7}  {r['wall_s']:>6}  {r['chunks']:>6}  {r['segments']:>8}  "
              f"{r['segment_job_s_mean']!s:>9}  {r['overhead_per_segment_s']:>14}  "
              f"{r['idle_gap_per_unit_s']:>15}")
    print(f"simulated, one core per worker: {sim} s; 4w/1w = {report['simulated_ratio_4_to_1']}")
    print(f"fairness (1 worker): B alone {fair['b_alone_s']} s, behind A's {a_files} files "
          f"{fair['b_behind_a_s']} s (A files done by then: {fair['a_done_when_b_done']})")
    out = Path(__file__).with_name("reports")
    out.mkdir(exist_ok=True)
    path = out / f"segments-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"report: {path}")
    return 0 if all(r["status"] == "done" for r in big) else 1


if __name__ == "__main__":
    sys.exit(main())
