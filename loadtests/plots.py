"""PNG plots of one or more runs, side by side (one column per run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported
import matplotlib.pyplot as plt
import numpy as np
import shapes
from summary import OURS, UPLOAD


def _grid(n: int, title: str) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4), sharey=True, squeeze=False)
    fig.suptitle(title)
    return fig, list(axes[0])


def _users_axis(ax: Any, facts: dict[str, Any], t_max: float) -> None:
    t = np.linspace(0, t_max, 400)
    twin = ax.twinx()
    twin.plot(t, [shapes.users_at(facts["stages"], x) for x in t], "k:", lw=1, label="users")
    twin.set_ylabel("users (dotted)")
    twin.set_ylim(0, max(u for u, _, _ in facts["stages"]) * 1.1)


def _marks(ax: Any, facts: dict[str, Any]) -> None:
    t0 = facts["t_locust_start"]
    ax.axvline(facts["t_locust_end"] - t0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("seconds since Locust start (dashed: shape ended)")
    ax.set_title(f"({facts['label']}) {facts['workers']} worker(s)")


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def write_all(out: Path, runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """runs: [(facts, data)]. Returns the PNG file names."""
    names = [queue(out, runs), upload_latency(out, runs), connections(out, runs), cpu(out, runs)]
    return names


def queue(out: Path, runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    fig, axes = _grid(len(runs), "Ingest queue: waiting in Redis, being processed, awaiting retry")
    for ax, (facts, data) in zip(axes, runs, strict=True):
        t0, smp = facts["t_locust_start"], data["samples"]
        t = [s["t"] - t0 for s in smp]
        ax.stackplot(t, [s["queue"] for s in smp], [s["wip"] for s in smp],
                     [s["scheduled"] for s in smp], labels=["queued", "processing", "retry wait"])
        ax.set_ylabel("jobs")
        ax.legend(loc="upper left")
        _marks(ax, facts)
        _users_axis(ax, facts, max(t, default=1))
    return _save(fig, out / "queue.png")


def upload_latency(out: Path, runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    fig, axes = _grid(len(runs), "Upload (POST /files) response time")
    for ax, (facts, data) in zip(axes, runs, strict=True):
        t0 = facts["t_locust_start"]
        ups = [r for r in data["requests"] if r["name"] == UPLOAD]
        ok = [(r["t"] - t0, r["ms"]) for r in ups if r["ok"]]
        bad = [(r["t"] - t0, r["ms"]) for r in ups if not r["ok"]]
        if ok:
            ax.scatter(*zip(*ok, strict=True), s=8, alpha=0.6, label="acknowledged")
            xs = np.array([x for x, _ in ok])
            ys = np.array([y for _, y in ok])
            grid = np.arange(0, xs.max() + 1, 10)
            p95 = [np.percentile(ys[(xs >= g - 30) & (xs < g)], 95)
                   if ((xs >= g - 30) & (xs < g)).any() else np.nan for g in grid]
            ax.plot(grid, p95, "r-", lw=1.2, label="p95, last 30 s")
        if bad:
            ax.scatter(*zip(*bad, strict=True), s=20, c="k", marker="x", label="error")
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.legend(loc="upper left")
        _marks(ax, facts)
    return _save(fig, out / "upload_latency.png")


def connections(out: Path, runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    fig, axes = _grid(len(runs), "Postgres client connections by application_name")
    for ax, (facts, data) in zip(axes, runs, strict=True):
        t0, smp = facts["t_locust_start"], data["samples"]
        t = [s["t"] - t0 for s in smp]
        apps = sorted({a for s in smp for a in s["pg"] if a not in OURS})
        for app in apps:
            ax.plot(t, [s.get("pg_peak", {}).get(app, 0) for s in smp],
                    label=f"{app} (most per second, 5 Hz)")
        ax.plot(t, [s["pg"].get("sluice-webui", {}).get("busy", 0) for s in smp], lw=0.8,
                label="sluice-webui not idle")
        if any(s.get("webui") for s in smp):
            ax.plot(t, [(s.get("webui") or {}).get("db_checked_out", np.nan) for s in smp],
                    lw=0.8, label="webui pool checked out (/metrics)")
        ax.axhline(facts["pg_max_connections"], color="r", ls="--", lw=1,
                   label=f"max_connections {facts['pg_max_connections']}")
        if facts["webui_pool"] is not None:
            budget = facts["webui_pool"] + facts["workers"] * facts["worker_pool"]
            ax.axhline(budget, color="g", ls="--", lw=1, label=f"pool budget {budget}")
        ax.set_ylabel("connections")
        ax.legend(loc="upper left", fontsize=8)
        _marks(ax, facts)
    return _save(fig, out / "connections.png")


def cpu(out: Path, runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    fig, axes = _grid(len(runs), "CPU (cores busy): the stack under test, Locust, and the rest")
    for ax, (facts, data) in zip(axes, runs, strict=True):
        t0, smp = facts["t_locust_start"], data["samples"][1:]
        t = [s["t"] - t0 for s in smp]
        groups = ["worker", "webui", "postgres", "locust", "redis", "others"]
        ax.stackplot(t, *[[s["cpu"].get(g, 0.0) for s in smp] for g in groups], labels=groups)
        ax.plot(t, [s["load1"] for s in smp], "k-", lw=0.8, label="load average (1 min)")
        ax.set_ylabel("cores")
        ax.legend(loc="upper left", fontsize=8)
        _marks(ax, facts)
    return _save(fig, out / "cpu.png")
