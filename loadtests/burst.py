"""One burst against one system: upload every file at once, watch them in Postgres, measure.

Used by compare_owui.py for Open WebUI and Sluice alike, so both are timed,
counted and metered by the same code.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import psycopg
from meter import CpuMeter, PeakRss, tree_cpu_seconds
from stack import Servers

from shared.embedding import model_path
from shared.settings import load_settings

POLL_S = 0.25


@dataclass
class BurstResult:
    name: str
    files: int
    uploaded: int = 0
    upload_429s: int = 0
    upload_s: float = 0.0
    done_at: dict[str, float] = field(default_factory=dict)  # file id -> s after the first upload
    failed: list[str] = field(default_factory=list)
    api_mismatches: list[str] = field(default_factory=list)
    chunks: int = 0
    tokens: int = 0
    app_cpu_s: float = 0.0
    pg_cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    wall_s: float = 0.0
    loadavg: list[float] = field(default_factory=list)  # 1-minute, at start and end
    other_cores: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    def times(self) -> list[float]:
        return sorted(self.done_at.values())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _upload_all(url: str, headers: dict[str, str], path: str,
                      files: list[tuple[str, bytes]], result: BurstResult) -> list[str]:
    """All files at once, one request each; a 429 is retried after its Retry-After."""
    limits = httpx.Limits(max_connections=len(files), max_keepalive_connections=len(files))
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as c:
        async def one(name: str, data: bytes) -> str:
            while True:
                r = await c.post(path, files={"file": (name, data, "text/markdown")})
                if r.status_code == 429:
                    result.upload_429s += 1
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                r.raise_for_status()
                file_id: str = r.json()["id"]
                return file_id

        return list(await asyncio.gather(*(one(n, d) for n, d in files)))


def _tokens(texts: list[str]) -> int:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path(load_settings()) / "tokenizer.json"))
    tok.enable_truncation(max_length=256)  # what the model sees
    tok.no_padding()
    return sum(len(e.ids) for e in tok.encode_batch(texts)) if texts else 0


def run_burst(
    name: str, url: str, headers: dict[str, str], files: list[tuple[str, bytes]], *,
    upload_path: str, db_url: str, status_sql: str, status_params: tuple[Any, ...], done: str,
    failed: str, chunks_sql: str, chunks_params: tuple[Any, ...], app_pids: list[int],
    servers: Servers, api_status: Callable[[httpx.Client, str], str], done_api: str,
    facts: dict[str, Any], timeout_s: float = 3600,
) -> BurstResult:
    result = BurstResult(name, len(files), facts=facts)
    pg_pids = [p for p in (servers.pg.pid,) if p]
    ours = app_pids + pg_pids + [p for p in (servers.redis.pid,) if p] + [os.getpid()]
    ids: list[str] = []
    errors: list[BaseException] = []

    def uploader() -> None:
        try:
            ids.extend(asyncio.run(_upload_all(url, headers, upload_path, files, result)))
            result.upload_s = time.perf_counter() - t0
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    print(f"  {name}: uploading {len(files)} files at once", flush=True)
    app0, pg0 = tree_cpu_seconds(app_pids), tree_cpu_seconds(pg_pids)
    with psycopg.connect(db_url, autocommit=True) as conn, PeakRss(app_pids) as rss, \
            CpuMeter(ours) as cpu:
        t0 = time.perf_counter()
        thread = threading.Thread(target=uploader, name="uploads", daemon=True)
        thread.start()
        next_note = 10.0
        while True:
            now = time.perf_counter() - t0
            for fid, status in conn.execute(status_sql, status_params).fetchall():
                if status == done and fid not in result.done_at:
                    result.done_at[fid] = now
                elif status == failed and fid not in result.failed:
                    result.failed.append(fid)
            if errors:
                raise RuntimeError(f"{name}: an upload failed") from errors[0]
            finished = len(result.done_at) + len(result.failed)
            if not thread.is_alive() and finished >= len(files):
                break
            if now > timeout_s:
                raise RuntimeError(f"{name}: {len(files) - finished} files not processed in "
                                   f"{timeout_s:.0f} s")
            if now >= next_note:
                print(f"    {now:5.0f} s: {len(result.done_at)} done, {len(result.failed)} failed",
                      flush=True)
                next_note += 10
            time.sleep(POLL_S)
        result.app_cpu_s = tree_cpu_seconds(app_pids) - app0
        result.pg_cpu_s = tree_cpu_seconds(pg_pids) - pg0
        texts = [t for (t,) in conn.execute(chunks_sql, chunks_params).fetchall()]
    result.wall_s, result.other_cores = cpu.wall, cpu.others
    result.loadavg = [cpu.load0, cpu.load1]
    result.peak_rss_mb = rss.peak / 1e6
    result.uploaded, result.chunks, result.tokens = len(ids), len(texts), _tokens(texts)
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for fid in ids:  # each system's own answer agrees with what its table said
            if fid in result.done_at and api_status(client, fid) != done_api:
                result.api_mismatches.append(fid)
    print(f"  {name}: {len(result.done_at)} done, {len(result.failed)} failed, last at "
          f"{max(result.done_at.values(), default=0):.1f} s, {result.chunks} chunks", flush=True)
    return result


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def metrics(r: BurstResult) -> dict[str, float]:
    t = r.times()
    last = t[-1] if t else float("nan")
    return {
        "all processed (s)": last, "first file done (s)": t[0] if t else float("nan"),
        "median file done (s)": statistics.median(t) if t else float("nan"),
        "p95 file done (s)": _pct(t, 0.95), "files failed": float(len(r.failed)),
        "chunks stored": float(r.chunks), "tokens per file": r.tokens / max(r.files, 1),
        "chunks/s": r.chunks / last if t else float("nan"),
        "tokens/s": r.tokens / last if t else float("nan"),
        "app CPU per chunk (ms)": 1000 * r.app_cpu_s / max(r.chunks, 1),
        "Postgres CPU per chunk (ms)": 1000 * r.pg_cpu_s / max(r.chunks, 1),
        "app peak memory (MB)": r.peak_rss_mb, "upload of all files (s)": r.upload_s,
        "uploads answered 429 (retried)": float(r.upload_429s),
    }


def render(results: list[BurstResult], n: int) -> str:
    rows = [metrics(r) for r in results]
    head = f"| ({n} files) | " + " | ".join(r.name for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    if len(results) == 2:
        lines[0] += " Sluice ÷ Open WebUI |"
        lines[1] += "---|"
    for key in rows[0]:
        cells = [f"{row[key]:.1f}" if row[key] % 1 else f"{row[key]:.0f}" for row in rows]
        line = f"| {key} | " + " | ".join(cells) + " |"
        if len(results) == 2:
            a, b = rows[0][key], rows[1][key]
            line += f" {b / a:.2f} |" if a else " |"
        lines.append(line)
    out = ["# Burst: Open WebUI vs Sluice", "", *lines, ""]
    if len(results) == 2:
        a, b = rows[0]["all processed (s)"], rows[1]["all processed (s)"]
        out.append(f"Sluice processed the burst {a / b:.2f}× as fast as Open WebUI "
                   f"(goal: ≥ 2×).")
    for r in results:
        out.append(f"- {r.name}: load average (1 min) {r.loadavg[0]:.2f} → {r.loadavg[1]:.2f}; "
                   f"other work used {r.other_cores:.2f} cores during the run; "
                   f"{len(r.api_mismatches)} files whose API status disagreed; facts: {r.facts}")
    out.append(f"- machine: {os.cpu_count()} CPUs; "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    return "\n".join(out) + "\n"
