"""The seed's burst (loadtests/seed_burst.py) at a handful of users with tiny documents: every
user's file becomes searchable, and the report, its plots and its JSON carry what they should.

Runs the real script as `make burst` does, on its own embedded servers; with 2 webuis the
uploads, polls and searches go through `sluice front` to both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("burst-corpus")  # built small by the first run


@pytest.mark.parametrize(("users", "webui"), [(3, 1), (4, 2)])
def test_tiny_burst_every_file_searchable_and_report_complete(
    tmp_path: Path, corpus_dir: Path, users: int, webui: int
) -> None:
    out = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "seed_burst.py"), "--users", str(users),
         "--webui", str(webui), "--workers", "1", "--quick", "--max-kb", "30", "--poll", "0.5",
         "--timeout", "150", "--corpus-dir", str(corpus_dir), "--corpus-files", "40",
         "--out", str(out)],
        env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    [run] = results["runs"]
    assert (run["label"], run["webui"], run["workers"]) == ("sluice", webui, 1)
    assert len(run["users"]) == users
    for user in run["users"]:
        assert user["error"] is None, user
        assert user["server_status"] == "done"
        assert 0 < user["done_s"] <= user["searchable_s"] + 0.5  # searchable after done
        assert user["upload_s"] > 0 and user["chunks"] > 0
    overall = run["overall"]
    assert overall["not_searchable"] == 0 and overall["errors"] == []
    for table in ("done", "searchable"):
        four = overall[table]
        assert 0 < four["first"] <= four["p50"] <= four["p95"] <= four["all"]
    for model in ("fair", "whole_file"):
        assert set(run["prediction"][model]) == {"first", "p50", "p95", "all"}
        assert run["prediction"][model]["all"] > 0
    assert len(run["calibration"]["docs"]) == 3
    assert 0 < overall["pg_peak_connections"] <= overall["pg_max_connections"]
    assert any(s["done"] == users for s in run["series"])  # the queue drained while sampled

    report = (out / "report.md").read_text()
    for needed in ("predicted: Sluice's units, fair turns", "measured: file done (server)",
                   "queue wait of the last file", "peak Postgres connections", "### Per user"):
        assert needed in report
    for plot in ("queue-sluice.png", "searchable-sluice.png"):
        assert (out / plot).stat().st_size > 1000
        assert f"]({plot})" in report
