"""report.md and plots of the seed's burst (seed_burst.py): prediction beside measurement,
per user, and the seed setup beside Sluice's when both ran."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported
import matplotlib.pyplot as plt

FOUR = (("first", "first file searchable"), ("p50", "half the files"),
        ("p95", "95 % of the files"), ("all", "all files"))


def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:,.1f} s"


def _ratio(measured: float | None, predicted: float | None) -> str:
    if measured is None or not predicted:
        return "–"
    return f"{measured / predicted:.2f}"


def _prediction_table(run: dict[str, Any]) -> list[str]:
    pred, o = run["prediction"], run["overall"]
    lines = ["| | predicted: Sluice's units, fair turns | predicted: one job per file, FIFO | "
             "measured: file done (server) | measured: found by search (client) | "
             "measured ÷ predicted (done ÷ units) |", "|---|---|---|---|---|---|"]
    for key, name in FOUR:
        lines.append(f"| {name} | {_s(pred['fair'][key])} | {_s(pred['whole_file'][key])} | "
                     f"{_s(o['done'][key])} | {_s(o['searchable'][key])} | "
                     f"{_ratio(o['done'][key], pred['fair'][key])} |")
    return lines


def _calibration(run: dict[str, Any]) -> list[str]:
    cal = run["calibration"]
    lines = ["| calibration document | kind | KB | text chars | chunks | parse | embed + store |",
             "|---|---|---|---|---|---|---|"]
    for d in cal["docs"]:
        lines.append(f"| {d['name']} | {d['kind']} | {d['bytes'] / 1000:,.0f} | "
                     f"{d['text_chars']:,} | {d['chunks']} | {_s(d['parse_s'])} | "
                     f"{_s(d['embed_s'])} |")
    lines += ["", f"Fitted: parse = {cal['parse_fixed_s']:.2f} s + {cal['parse_s_per_kchar']:.4f} s "
              f"per 1,000 characters; embed + store {cal['embed_s_per_chunk'] * 1000:.0f} ms per "
              f"chunk; {cal['chunks_per_kchar']:.2f} chunks per 1,000 characters (by kind: "
              + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cal["chunks_per_kchar_by_kind"].items()))
              + ") "
              f"(predicted {run['prediction']['predicted_chunks']:,} chunks for the burst, "
              f"measured {run['overall']['chunks']:,}); segments of {cal['segment_chunks']} "
              "chunks."]
    return lines


def _users(run: dict[str, Any]) -> list[str]:
    lines = ["| user | kind | KB | upload | queue wait | done (server) | searchable (client) | "
             "error |", "|---|---|---|---|---|---|---|---|"]
    for u in run["users"]:
        lines.append(f"| {u['user']} | {u['kind']} | {u['bytes'] / 1000:,.0f} | "
                     f"{_s(u['upload_s'])} | {_s(u.get('queue_wait_s'))} | {_s(u.get('done_s'))} | "
                     f"{_s(u['searchable_s'])} | {u['error'] or ''} |")
    return lines


def _run_section(run: dict[str, Any], plots: list[str]) -> list[str]:
    o = run["overall"]
    budget = o["pg_budget_needed"]
    return [
        f"## {run['label']}: {run['webui']} webui, {run['workers']} worker(s)"
        + (f", settings {run['overrides']}" if run["overrides"] else ""), "",
        *_prediction_table(run), "",
        f"- upload latency: p50 {_s(o['upload_p50_s'])}, p95 {_s(o['upload_p95_s'])}; "
        f"{o['upload_429s']} uploads answered 429 (retried)",
        f"- errors: {len(o['errors'])}; files never found by search: {o['not_searchable']}",
        f"- queue wait of the last file: {_s(o['last_file_queue_wait_s'])} "
        f"(longest: {_s(o['max_queue_wait_s'])})",
        f"- peak Postgres connections {o['pg_peak_connections']} (most per second at 5 Hz, all "
        f"applications) against max_connections {o['pg_max_connections']}; the pools allow "
        f"{'no bound (NullPool)' if budget is None else budget} ({'; '.join(o['pg_budget_terms'])}); "
        f"by application: {o['pg_peak_by_app']}",
        f"- queue depth: at most {o['max_files_queued']} files queued, {o['max_rq_queue']} jobs "
        "in RQ at once", *[f"- {e}" for e in o["errors"][:20]], "",
        *[f"![{p}]({p})" for p in plots], "", "### Calibration", "", *_calibration(run), "",
        "### Per user", "", *_users(run), "",
    ]


def _comparison(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| | " + " | ".join(r["label"] for r in runs) + " |", "|---|" + "---|" * len(runs)]
    rows = [(name, [r["overall"]["done"][key] for r in runs]) for key, name in FOUR]
    rows.append(("queue wait of the last file", [r["overall"]["last_file_queue_wait_s"]
                                                for r in runs]))
    rows.append(("peak Postgres connections", [r["overall"]["pg_peak_connections"] for r in runs]))
    for name, values in rows:
        cells = [str(v) if isinstance(v, int) else _s(v) for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _plot(out: Path, run: dict[str, Any]) -> list[str]:
    label = run["label"]
    names = []
    fig, ax = plt.subplots(figsize=(7, 4))
    t = [s["t"] for s in run["series"]]
    ax.stackplot(t, [s["queued"] for s in run["series"]], [s["processing"] for s in run["series"]],
                 [s["done"] for s in run["series"]], labels=["queued", "processing", "done"])
    ax.plot(t, [s["rq_queue"] for s in run["series"]], "k--", lw=1, label="jobs in RQ")
    ax.set_xlabel("seconds since the burst")
    ax.set_ylabel("files")
    ax.set_title(f"{label}: queue depth over time")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"queue-{label}.png", dpi=90)
    plt.close(fig)
    names.append(f"queue-{label}.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    n = len(run["users"])
    for values, name, style in (
        ([u.get("done_s") for u in run["users"]], "done (server)", "-"),
        ([u["searchable_s"] for u in run["users"]], "found by search (client)", "-."),
        (run["prediction"]["done_s"], "predicted (units, fair turns)", ":"),
    ):
        xs = sorted(v for v in values if v is not None)
        ax.step(xs, [(i + 1) / n for i in range(len(xs))], style, where="post", label=name)
    ax.set_xlabel("seconds since the burst")
    ax.set_ylabel("fraction of users")
    ax.set_title(f"{label}: time to searchable, measured and predicted")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"searchable-{label}.png", dpi=90)
    plt.close(fig)
    names.append(f"searchable-{label}.png")
    return names


def write(out: Path, meta: dict[str, Any]) -> Path:
    runs = meta["runs"]
    lines = [f"# The seed's burst: {meta['users']} users, one document each, at once", "",
             f"Kinds: {', '.join(meta['kinds'])}"
             + ("" if set(meta["kinds"]) >= set(meta["wanted_kinds"])
                else f" (no {'/'.join(sorted(set(meta['wanted_kinds']) - set(meta['kinds'])))} "
                     "documents left in the corpus within the size limit)")
             + (" — --quick: small documents only" if meta["quick"] else ""),
             f"Machine: {meta['cpus']} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(meta['started']))}.", "",
             "The prediction comes from a live calibration on the same stack just before the "
             "burst (see burst_calibrate.py) and `shared.ops.capacity.predict_burst`. Done "
             "(server) is files.finished_at; searchable (client) is when the user's search for "
             "a phrase from the file first returned it (polled, so up to the poll interval "
             "late). p95 is the 95th-percentile file (nearest rank), as the model counts it.", ""]
    if len(runs) > 1:
        lines += ["## Seed setup vs Sluice (time to done)", "", *_comparison(runs), ""]
    for run in runs:
        lines += _run_section(run, _plot(out, run))
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
