"""report.md (+ PNGs) for one run or the seed-vs-defaults pair."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import plots
from summary import load_run, processing_by_file, summarize

SETUP_NAMES = {"seed": "(a) seed setup", "defaults": "(b) Sluice defaults"}


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f} ms" if v >= 10 else f"{v:.1f} ms"


def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:,.1f} s"


def _n(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "–"
    return f"{b / a:.2f}×"


def key_rows(s: dict[str, Any]) -> list[tuple[str, float | None, str]]:
    """(metric, value, formatted) for the side-by-side table."""
    top, rows = s["top_stage"], []

    def add(name: str, v: float | None, fmt: Any = _n) -> None:
        rows.append((name, v, fmt(v)))

    add("uploads acknowledged (202)", s["acked"])
    add("upload errors (all stages)", s["upload"]["all"]["errors"])
    for stage, lat in s["upload"].items():
        if stage != "all":
            add(f"upload p95 at {stage}", lat["p95"], _ms)
    add(f"upload p50 at {top}", s["upload"][top]["p50"], _ms)
    add(f"upload p99 at {top}", s["upload"][top]["p99"], _ms)
    add("search (own files) p50", s["search"]["own"]["p50"], _ms)
    add("search (own files) p95", s["search"]["own"]["p95"], _ms)
    add("search (own files) server time p50 (took_ms)", s["search"]["own"]["server_p50"], _ms)
    add(f"search (bulk corpus) p95 at {top}", s["search_top"]["bulk"]["p95"], _ms)
    add("search errors (incl. 0-hit and not-found checks)",
        sum(v["errors"] for v in s["search"].values()))
    add("upload → searchable p50", s["searchable"]["p50"], _s)
    add("upload → searchable p95", s["searchable"]["p95"], _s)
    add("upload → searchable max", s["searchable"]["max"], _s)
    add("acknowledged uploads not done at the end", len(s["not_done"]))
    add("peak Postgres connections (Sluice, 5 Hz polling)", s.get("pg_peak_5hz"))
    add("Postgres sessions opened during the run", (s.get("pg_sessions") or {}).get("opened"))
    add("Postgres sessions opened, peak per second",
        (s.get("pg_sessions") or {}).get("peak_per_s"))
    wm = s.get("webui_metrics") or {}
    add("webui DB pool checked out, peak (/metrics)", wm.get("checked_out_peak"))
    add("webui DB checkout mean (wait + connect, /metrics)", wm.get("checkout_mean_ms"), _ms)
    add("webui DB pool timeouts (/metrics)", wm.get("pool_timeouts"))
    add("peak Redis clients (Sluice)", s.get("redis_peak"))
    add("peak queue depth (jobs waiting)", s.get("queue_peak"))
    if s.get("drained"):
        add("drain time after the shape", s.get("drain_s"), _s)
    else:
        rows.append(("drain time after the shape", None,
                     f"not drained ({s.get('pending_at_end')} pending when cut off)"))
    tp = s.get("throughput", {})
    add("ingest throughput (chunks/s, first start → last finish)", tp.get("chunks_s"),
        lambda v: _n(v, "{:.1f}"))
    add("job processing time p50", s["processing"]["p50"], _s)
    add("worker busy fraction while queue non-empty", s.get("busy_fraction"),
        lambda v: _n(v, "{:.0%}"))
    add("model loads", s.get("model_loads"))
    add("machine load average (mean)", s.get("load1", {}).get("mean"), lambda v: _n(v, "{:.2f}"))
    add("CPU used by other processes (mean cores)", s.get("cpu_mean", {}).get("others"),
        lambda v: _n(v, "{:.2f}"))
    return rows


def _run_section(s: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    env = ", ".join(f"{k}={v}" for k, v in facts["overrides"].items()) or "none (all defaults)"
    budget = ("unbounded (NullPool: one connection per checkout)" if s.get("budget") is None
              else f"{s['budget']} = webui {facts['webui_pool']} + {facts['workers']} × "
              f"{facts['worker_pool']}")
    L = [f"### {SETUP_NAMES.get(s['label'], s['label'])}", "",
         f"Workers: {facts['workers']}; settings changed: {env}; start-up {_s(facts.get('startup_s'))}; "
         f"chunks in the table: {facts['chunks_before']:,} before, {facts['chunks_after']:,} after.",
         ""]
    if facts.get("nullpool_shim"):
        L += ["Workers ran through `loadtests/nullpool_shim.py`: with NullPool, `sluice worker` "
              "dies at boot (src/worker/runtime.py `Runtime.facts()` calls "
              "`engine.pool.checkedout()`, which NullPool lacks); the shim gives NullPool a "
              "`checkedout()` returning 0, so only the published `db_checked_out` fact is "
              "affected.", ""]
    interval = float(facts.get("upload_interval") or 300)
    expected = {f"{u} users": (u * h + (u + p) / 2 * r) / interval
                for (u, r, h), p in zip(facts["stages"], [0] + [u for u, _, _ in facts["stages"]],
                                        strict=False)}
    L += ["| stage | uploads (expected) | errors | p50 | p95 | p99 | max |",
          "|---|---|---|---|---|---|---|"]
    for stage, v in s["upload"].items():
        exp = f" ({expected[stage]:.0f})" if stage in expected else ""
        L.append(f"| {stage} | {v['n']}{exp} | {v['errors']} | {_ms(v['p50'])} | "
                 f"{_ms(v['p95'])} | {_ms(v['p99'])} | {_ms(v['max'])} |")
    L += ["", f"| request | n | errors | p50 | p95 | p99 | p95 at {s['top_stage']} | "
          "server took_ms p50 / p95 |", "|---|---|---|---|---|---|---|---|"]
    for k, name in (("own", "search, own files"), ("bulk", "search, bulk corpus"),
                    ("check", "search, just-done check")):
        v, top = s["search"][k], s["search_top"][k]
        L.append(f"| {name} | {v['n']} | {v['errors']} | {_ms(v['p50'])} | {_ms(v['p95'])} | "
                 f"{_ms(v['p99'])} | {_ms(top['p95'])} | {_ms(v['server_p50'])} / "
                 f"{_ms(v['server_p95'])} |")
    p = s["poll"]
    L.append(f"| status poll | {p['n']} | {p['errors']} | {_ms(p['p50'])} | {_ms(p['p95'])} | "
             f"{_ms(p['p99'])} | | |")
    e, tp = s["end"], s.get("throughput", {})
    L += ["", f"- Acknowledged uploads: {s['acked']} ({s['bytes_acked'] / 1e6:.1f} MB); at the end "
          f"done {e['done']}, failed {e['failed']}, still queued/processing {e['pending']}, "
          f"missing from the table {e['missing']}. Server-side rows never acknowledged to the "
          f"client (Locust stopped mid-request or errored): {len(s['unacked_in_db'])}.",
          f"- Just-done checks (search restricted to a file that just became done): "
          f"{s['verify']['found']}/{s['verify']['n']} found it.",
          f"- Upload → searchable (server finished_at − client ack): p50 "
          f"{_s(s['searchable']['p50'])}, p95 {_s(s['searchable']['p95'])}, max "
          f"{_s(s['searchable']['max'])}; of which waiting in the queue p50 "
          f"{_s(s['queue_wait']['p50'])} / p95 {_s(s['queue_wait']['p95'])}, processing p50 "
          f"{_s(s['processing']['p50'])} / p95 {_s(s['processing']['p95'])}.",
          f"- Ingest: {s['chunks_indexed']:,} chunks; {_n(tp.get('chunks_s'), '{:.1f}')} chunks/s, "
          f"{_n(tp.get('files_s'), '{:.2f}')} files/s from first start to last finish; workers "
          f"busy {_n(s.get('busy_fraction'), '{:.0%}')} of the time the queue was non-empty "
          f"({s.get('queue_nonempty_s', 0)} s sampled); processing-time share "
          f"{_n(tp.get('processing_share'), '{:.0%}')}; model loads {s.get('model_loads')}.",
          f"- Postgres: peak {s.get('pg_peak_5hz')} Sluice connections polling at 5 Hz, "
          f"{s.get('pg_peak')} in the 1 Hz snapshots (budget {budget}; "
          f"max_connections {facts['pg_max_connections']}); peak per application_name "
          f"{s.get('pg_peak_by_app')}; webui connections not idle (≈ pool checked out) peak "
          f"{s.get('webui_busy_peak')}; worker facts db_checked_out peak "
          f"{s.get('db_checked_out_peak')}; sessions opened during the run "
          f"{(s.get('pg_sessions') or {}).get('opened')} (peak "
          f"{(s.get('pg_sessions') or {}).get('peak_per_s')}/s).",
          "- Webui /metrics: " + (", ".join(f"{k} {_n(v, '{:,.2f}')}" for k, v in (
              s.get("webui_metrics") or {}).items()) or "no pool gauges exposed") + ".",
          f"- Redis: peak {s.get('redis_peak')} Sluice clients; per client name "
          f"{s.get('redis_peak_by_name')} (REDIS_MAX_CONNECTIONS {facts['redis_max_connections']} "
          f"per process).",
          f"- Queue: peak {s.get('queue_peak')} waiting, {s.get('backlog_peak')} incl. in progress"
          " and retry waits; " + (
              f"the last file finished {_s(s.get('drain_s'))} after the shape ended"
              + (" (after the drain deadline: the job in progress then was finished by the "
                 "worker's warm shutdown)" if s.get("drained_late") else "")
              if s.get("drained") else
              f"NOT drained: {s.get('pending_at_end')} files were still queued or processing "
              f"after the workers were stopped {facts['t_drain_deadline'] - facts['t_locust_end']:.0f}"
              " s after the shape (the run was cut off; nothing failed)") + ".",
          f"- Machine: load average min/mean/max {_n(s.get('load1', {}).get('min'), '{:.2f}')} / "
          f"{_n(s.get('load1', {}).get('mean'), '{:.2f}')} / "
          f"{_n(s.get('load1', {}).get('max'), '{:.2f}')}; mean cores busy "
          + ", ".join(f"{k} {v:.2f}" for k, v in s.get("cpu_mean", {}).items()) + "."]
    if s["not_done"]:
        L += ["", "Acknowledged uploads that did not end done:", ""]
        L += [f"- `{fid}` {name}: {why}" for fid, name, why in s["not_done"][:50]]
    if s["errors_by_kind"]:
        L += ["", "Failed requests by kind:", ""]
        L += [f"- {n} × {k}" for k, n in s["errors_by_kind"]]
    return [*L, ""]


def write(out: Path, meta: dict[str, Any]) -> Path:
    runs = [(f, load_run(out / f["label"])) for f in meta["runs"]]
    sums = [summarize(data, facts) for facts, data in runs]
    pngs = plots.write_all(out, runs)
    args, seed = meta["args"], meta.get("seed")
    first = runs[0][0]
    flags = " ".join(meta.get("argv", []))
    L = [f"# Sluice load test, {time.strftime('%Y-%m-%d %H:%M', time.localtime(meta['started']))}",
         "", f"Machine: {meta['cpus']} CPUs, {platform.processor() or platform.machine()}, "
         f"Python {platform.python_version()}. Everything on 127.0.0.1 (embedded Postgres "
         f"max_connections {first['pg_max_connections']}, embedded Redis).",
         f"Command: `.venv/bin/python loadtests/local_proof.py {flags}`"
         + (f" (ignored from the environment: {', '.join(meta['ignored_env'])})"
            if meta.get("ignored_env") else "") + ".",
         f"Shape: {', '.join(f'{u} users (ramp {r:.0f} s, hold {h:.0f} s)' for u, r, h in first['stages'])}"
         f" = scale {args['scale']} of `{args['shape']}`"
         + (" (each compare run is shortened to fit the time budget)" if args["compare"] == "True"
            else "") + ".",
         f"Each user uploads every {args['upload_interval']} s and searches every "
         f"{args['search_interval']} s on average (open loop); 30% of searches go to the bulk "
         "corpus user.",
         f"Bulk corpus: {seed['chunks']:,} chunks seeded for one user (COPY {seed['copy_s']:.0f} s,"
         f" HNSW build {seed['index_s']:.0f} s, table + indexes {seed['table_mb']:.0f} MB, HNSW "
         f"{seed['index_mb']:.0f} MB)." if seed else "Bulk corpus: none (--seed-chunks 0).",
         f"Total wall time: {(meta['finished'] - meta['started']) / 60:.1f} min."
         + (" INTERRUPTED: numbers are partial." if meta.get("interrupted") else ""), ""]
    if len(sums) == 2:
        a, b = (key_rows(x) for x in sums)
        L += ["## Side by side", "", "| metric | (a) seed setup | (b) Sluice defaults | b/a |",
              "|---|---|---|---|"]
        L += [f"| {ra[0]} | {ra[2]} | {rb[2]} | {_ratio(ra[1], rb[1])} |"
              for ra, rb in zip(a, b, strict=True)]
        pa, pb = (processing_by_file(data) for _, data in runs)
        same = sorted(set(pa) & set(pb))
        if same:
            ratios = sorted(pb[f] / pa[f] for f in same if pa[f] > 0)
            L.append(f"| job processing time of the same files ({len(same)} files), median "
                     f"of b/a | | | {ratios[len(ratios) // 2]:.2f}× |")
        L.append("")
    else:
        L += ["## Key numbers", "", "| metric | value |", "|---|---|"]
        L += [f"| {r[0]} | {r[2]} |" for r in key_rows(sums[0])] + [""]
    L += ["## Runs", ""]
    for s, (facts, _) in zip(sums, runs, strict=True):
        L += _run_section(s, facts)
    L += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    L += [
        "## How to read this", "",
        "- Stages: a ramp counts as the stage it leads to. Latencies are Locust's, client side, "
        "for successful requests; errors are non-2xx, timeouts, connection errors, and searches "
        "that returned nothing although the caller has indexed documents.",
        "- 'Checked out' comes from the webui's /metrics (sluice_db_pool_checked_out, scraped "
        "each second) when it has it; 'not idle' connections in pg_stat_activity are shown too. "
        "'Checkout mean' is sluice_db_pool_wait_seconds sum/count over the run: the wait for a "
        "free pooled connection, or with NullPool the cost of opening a new one.",
        "- The machine is shared: 'CPU used by other processes' is what the rest of the machine "
        "used meanwhile (e.g. someone's test suite); it slows everything here.",
        "- Seed setup = DATABASE_POOL_SIZE=0 + DATABASE_EXTERNAL_POOLER=true (NullPool), one "
        "worker, BENCH_RELOAD_MODEL_PER_JOB=true. It does not reproduce the seed's fork per job, "
        "its AppConfig per job or its session leaks.", ""]
    path = out / "report.md"
    path.write_text("\n".join(L))
    return path
