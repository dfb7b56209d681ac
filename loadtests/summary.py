"""Numbers of one run, from its files: requests.jsonl and ledger.jsonl (Locust),
samples.jsonl (the sampler), files.json (the files table at the end)."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

UPLOAD = "POST /files"
POLL = "GET /files/{id}"
SEARCHES = {"own": "POST /search (own files)", "bulk": "POST /search (bulk corpus)",
            "check": "POST /search (just-done check)"}
OURS = ("sluice-loadtest", "sluice-loadtest-sampler", "sluice-loadtest-seed")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def latency(reqs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r["ms"] for r in reqs if r["ok"]]
    took = [r["took_ms"] for r in reqs if r["ok"] and r.get("took_ms") is not None]
    return {"n": len(reqs), "errors": sum(not r["ok"] for r in reqs), "p50": pct(ok, 50),
            "p95": pct(ok, 95), "p99": pct(ok, 99), "max": max(ok) if ok else None,
            "server_p50": pct(took, 50), "server_p95": pct(took, 95)}


def processing_by_file(data: dict[str, Any]) -> dict[str, float]:
    """Processing time (finished − started) of each done upload, by corpus file name."""
    out = {}
    for e in data["ledger"]:
        row = data["files"].get(e.get("id")) if e["event"] == "ack" else None
        if row and row["status"] == "done":
            out[e["file"]] = row["finished"] - row["started"]
    return out


def load_run(run_dir: Path) -> dict[str, Any]:
    files = json.loads((run_dir / "files.json").read_text()) if (
        run_dir / "files.json").exists() else []
    return {"requests": read_jsonl(run_dir / "requests.jsonl"),
            "ledger": read_jsonl(run_dir / "ledger.jsonl"),
            "samples": [s for s in read_jsonl(run_dir / "samples.jsonl") if "error" not in s],
            "files": {f["id"]: f for f in files}}


def summarize(data: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    reqs, ledger, samples, files = (data[k] for k in ("requests", "ledger", "samples", "files"))
    stage_names = [f"{u} users" for u, _, _ in facts["stages"]]
    s: dict[str, Any] = {"label": facts["label"], "workers": facts["workers"]}

    uploads = [r for r in reqs if r["name"] == UPLOAD]
    s["upload"] = {st: latency([r for r in uploads if r["stage"] == st]) for st in stage_names}
    s["upload"]["all"] = latency(uploads)
    s["search"] = {k: latency([r for r in reqs if r["name"] == n]) for k, n in SEARCHES.items()}
    top = stage_names[-1]
    s["search_top"] = {k: latency([r for r in reqs if r["name"] == n and r["stage"] == top])
                       for k, n in SEARCHES.items()}
    s["top_stage"] = top
    s["poll"] = latency([r for r in reqs if r["name"] == POLL])
    s["requests"] = len(reqs)
    s["errors_by_kind"] = Counter(
        f"{r['name']}: {(r.get('err') or '')[:90]}" for r in reqs if not r["ok"]).most_common(8)

    acks = {e["id"]: e for e in ledger if e["event"] == "ack"}
    verify = [e for e in ledger if e["event"] == "verify"]
    s["verify"] = {"n": len(verify), "found": sum(e["found"] for e in verify)}
    s["upload_errors"] = sum(e["event"] == "upload_error" for e in ledger)
    end: dict[str, list[Any]] = {"done": [], "failed": [], "pending": [], "missing": []}
    to_search, waits, procs = [], [], []
    for fid, ack in acks.items():
        row = files.get(fid)
        if row is None:
            end["missing"].append((fid, ack["file"], "not in the files table"))
        elif row["status"] == "done":
            end["done"].append(fid)
            to_search.append(row["finished"] - ack["t_ack"])
            waits.append(row["started"] - row["created"])
            procs.append(row["finished"] - row["started"])
        elif row["status"] == "failed":
            end["failed"].append((fid, ack["file"], row["error"]))
        else:
            end["pending"].append((fid, ack["file"], f"{row['status']} (attempts "
                                   f"{row['attempts']})"))
    s["acked"] = len(acks)
    s["end"] = {k: len(v) for k, v in end.items()}
    s["not_done"] = end["failed"] + end["pending"] + end["missing"]
    s["unacked_in_db"] = sorted(set(files) - set(acks))
    s["searchable"] = {"p50": pct(to_search, 50), "p95": pct(to_search, 95),
                       "max": max(to_search) if to_search else None}
    s["queue_wait"] = {"p50": pct(waits, 50), "p95": pct(waits, 95)}
    s["processing"] = {"p50": pct(procs, 50), "p95": pct(procs, 95),
                       "mean": float(np.mean(procs)) if procs else None}
    done_rows = [files[f] for f in end["done"]]
    s["chunks_indexed"] = sum(r["chunks"] for r in done_rows)
    s["bytes_acked"] = sum(a["bytes"] for a in acks.values())
    if done_rows:
        span = max(r["finished"] for r in done_rows) - min(r["started"] for r in done_rows)
        s["throughput"] = {"chunks_s": s["chunks_indexed"] / max(span, 1e-9),
                           "files_s": len(done_rows) / max(span, 1e-9), "span_s": span,
                           "processing_share": sum(procs) / (facts["workers"] * max(span, 1e-9))}
    s.update(_from_samples(samples, facts))
    drain(s, files, facts)
    return s


def _from_samples(samples: list[dict[str, Any]], facts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"samples": len(samples)}
    if not samples:
        return out
    apps: dict[str, int] = {}
    totals, webui_busy, redis_total = [], [], []
    redis_by: dict[str, int] = {}
    for smp in samples:
        sluice = 0
        for app, n in smp.get("pg_peak", {}).items():
            apps[app] = max(apps.get(app, 0), n)
        for app, c in smp["pg"].items():
            apps[app] = max(apps.get(app, 0), c["total"])
            if app not in OURS:
                sluice += c["total"]
        totals.append(sluice)
        webui_busy.append(smp["pg"].get("sluice-webui", {}).get("busy", 0))
        rtot = 0
        for name, n in smp["redis_clients"].items():
            redis_by[name] = max(redis_by.get(name, 0), n)
            if name not in OURS:
                rtot += n
        redis_total.append(rtot)
    out["pg_peak"] = max(totals)
    fast = [sum(n for a, n in smp["pg_peak"].items() if a not in OURS)
            for smp in samples if "pg_peak" in smp]
    out["pg_peak_5hz"] = max(fast) if fast else None
    sessions = [smp["pg_sessions"] for smp in samples if smp.get("pg_sessions") is not None]
    if len(sessions) > 1:
        rates = [b - a for a, b in pairwise(sessions)]
        out["pg_sessions"] = {"opened": sessions[-1] - sessions[0], "peak_per_s": max(rates)}
    out["pg_peak_by_app"] = dict(sorted(apps.items()))
    out["webui_busy_peak"] = max(webui_busy)
    out["redis_peak"] = max(redis_total)
    out["redis_peak_by_name"] = dict(sorted(redis_by.items()))
    nonempty = [smp for smp in samples if smp["queue"] > 0]
    out["queue_peak"] = max(smp["queue"] for smp in samples)
    out["backlog_peak"] = max(smp["queue"] + smp["wip"] + smp["scheduled"] for smp in samples)
    out["queue_nonempty_s"] = len(nonempty)
    out["busy_fraction"] = (float(np.mean([smp["busy"] / max(smp["workers"], 1)
                                           for smp in nonempty])) if nonempty else None)
    loads = [smp["load1"] for smp in samples]
    out["load1"] = {"min": min(loads), "mean": float(np.mean(loads)), "max": max(loads)}
    cpu_keys = sorted({k for smp in samples for k in smp["cpu"]})
    out["cpu_mean"] = {k: float(np.mean([smp["cpu"].get(k, 0.0) for smp in samples[1:]]))
                       for k in cpu_keys} if len(samples) > 1 else {}
    loads_per_worker = [int(f.get("model_loads") or 0) for f in samples[-1]["facts"].values()]
    out["model_loads"] = sum(loads_per_worker) if loads_per_worker else None
    out["db_checked_out_peak"] = max(
        (int(f.get("db_checked_out") or 0) for smp in samples for f in smp["facts"].values()),
        default=0)
    web = [smp["webui"] for smp in samples if smp.get("webui")]
    if web and "db_checked_out" in web[-1]:
        first, last = web[0], web[-1]
        n = last.get("db_wait_count", 0) - first.get("db_wait_count", 0)
        out["webui_metrics"] = {
            "checked_out_peak": max(w.get("db_checked_out", 0) for w in web),
            "pool_max": last.get("db_pool_max"),
            "checkouts": n,
            "checkout_mean_ms": (last.get("db_wait_sum", 0) - first.get("db_wait_sum", 0))
            / n * 1000 if n > 0 else None,
            "pool_timeouts": last.get("db_timeouts", 0) - first.get("db_timeouts", 0),
            "redis_in_use_peak": max(w.get("redis_in_use", 0) for w in web),
            "redis_errors": last.get("redis_errors", 0) - first.get("redis_errors", 0),
        }
    budget = facts["webui_pool"]
    out["budget"] = None if budget is None else budget + facts["workers"] * facts["worker_pool"]
    return out


def drain(s: dict[str, Any], files: dict[str, dict[str, Any]], facts: dict[str, Any]) -> None:
    """When the last file of the run finished, counted from the end of the shape.

    Read from the files table, not from the drain loop: a worker stopped at the drain
    deadline still finishes its current job (RQ's warm shutdown).
    """
    pending = [f for f in files.values() if f["status"] in ("queued", "processing")]
    finished = [f["finished"] for f in files.values() if f["finished"]]
    s["drained"] = not pending
    s["pending_at_end"] = len(pending)
    if not pending and finished:
        s["drain_s"] = max(max(finished) - facts["t_locust_end"], 0.0)
        s["drained_late"] = max(finished) > facts["t_drain_deadline"]
