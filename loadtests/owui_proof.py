"""Proof against the real thing (issue 15): Open WebUI from PyPI on top of a running Sluice.

One embedded Postgres + pgvector and Redis; Sluice (`sluice webui` + workers) and
Open WebUI (owui.py: its own venv, offline) wired with the settings
`sluice openwebui settings` prints. It shows, failing loudly otherwise:

1. external knowledge: a document uploaded through Sluice, in a collection its
   owner exported, is what Open WebUI's own retrieval (its retrieve-test API:
   query embedded through Sluice's /v1/embeddings, its SELECT on the
   `openwebui_chunks` view as the read-only role) returns first;
2. tool server: Open WebUI lists Sluice's tools, and its own tool-server code
   fetches the schema and calls `search`, which answers that document;
3. loader + embeddings: a file uploaded through Open WebUI is extracted by
   Sluice (PUT /process, parsed by a worker) and embedded by Sluice
   (/v1/embeddings, encoded by a worker): Sluice's request counters move, and the
   vector Open WebUI stored equals Sluice's embedding of that chunk;
4. the burst (burst.py, as `make compare`): N files uploaded at once through
   Open WebUI with Sluice underneath, side by side with Open WebUI alone.

    .venv/bin/python loadtests/owui_proof.py [--quick] [--files 100] [--workers 1]
        [--skip-burst]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import numpy as np
import owui
import owui_wiring as wiring
import psycopg
from burst import BurstResult, render, run_burst
from compare_owui import REPORTS, burst_files, run_owui
from stack import App, Servers, app_env, create_users, free_port, interrupt_on_sigterm

from shared.db import one_off_session
from shared.embedding import model_path
from shared.ops.openwebui import reader_dsn, setup_role
from shared.settings import load_settings


def _wait_done(c: httpx.Client, fid: str) -> None:
    for _ in range(600):
        status = c.get(f"/api/v1/files/{fid}").json()["status"]
        if status in ("done", "failed"):
            assert status == "done", f"Sluice could not process {fid}"
            return
        time.sleep(0.5)
    raise RuntimeError(f"{fid} not processed in 300 s")


def sluice_document(sluice: str, key: str) -> tuple[str, str]:
    """Upload a document through Sluice into an exported collection; (collection id, phrase)."""
    phrase = f"heron-{uuid.uuid4().hex[:8]}"
    text = (f"# Weir maintenance\n\nThe {phrase} inspection of the river weir happens every "
            "spring: clear the debris screen, grease the gate winch and log the water level.\n")
    with httpx.Client(base_url=sluice, headers={"Authorization": f"Bearer {key}"},
                      timeout=120) as c:
        fid = c.post("/api/v1/files", files={"file": ("weir.md", text.encode(), "text/markdown")}
                     ).json()["id"]
        _wait_done(c, fid)
        cid = c.post("/api/v1/collections", json={"name": "Weirs"}).json()["id"]
        c.post(f"/api/v1/collections/{cid}/files", json={"file_ids": [fid]}).raise_for_status()
        c.patch(f"/api/v1/collections/{cid}", json={"exported": True}).raise_for_status()
    return cid, phrase


def request_counts(metrics_url: str) -> dict[str, float]:
    """Sluice's own request counters (Prometheus, on the webui's metrics port: the API
    port has no /metrics) for the two Open WebUI endpoints."""
    text = httpx.get(metrics_url, timeout=30).text
    counts = {"/process": 0.0, "/v1/embeddings": 0.0}
    for line in text.splitlines():
        m = re.match(r'http_requests_total\{(.*)\} ([0-9.e+]+)$', line)
        if m and 'status="2xx"' in m.group(1):
            for handler in counts:
                if f'handler="{handler}"' in m.group(1):
                    counts[handler] += float(m.group(2))
    return counts


def upload_through_owui(server: owui.OpenWebUI, token: str, sluice: App, key: str,
                        db_url: str) -> dict[str, object]:
    before = request_counts(sluice.metrics_url)
    phrase = f"kingfisher-{uuid.uuid4().hex[:8]}"
    body = f"# Field log\n\nA {phrase} was seen diving near the sluice gate at dawn.\n"
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                      timeout=300) as c:
        fid = c.post(owui.UPLOAD_PATH, files={"file": ("log.md", body.encode(), "text/markdown")}
                     ).json()["id"]
        for _ in range(600):
            status = owui.api_status(c, fid)
            if status in (owui.DONE, owui.FAILED):
                break
            time.sleep(0.5)
    assert status == owui.DONE, f"Open WebUI did not process its upload: {status}"
    after = request_counts(sluice.metrics_url)
    with psycopg.connect(db_url) as conn:
        text, vector = conn.execute("SELECT text, vector::text FROM document_chunk "
                                    "WHERE collection_name = %s LIMIT 1", (f"file-{fid}",)
                                    ).fetchone() or ("", "[]")
    stored = np.array(json.loads(vector))[:384]  # Open WebUI pads to its column's width
    with httpx.Client(base_url=sluice.url, headers={"Authorization": f"Bearer {key}"}) as c:
        ours = np.array(c.post("/v1/embeddings", json={"input": [text]}, timeout=120)
                        .json()["data"][0]["embedding"])
    facts = {"process_calls": after["/process"] - before["/process"],
             "embedding_calls": after["/v1/embeddings"] - before["/v1/embeddings"],
             "phrase_in_chunk": phrase in text, "cosine_to_sluice": float(stored @ ours)}
    assert facts["process_calls"] >= 1 and facts["embedding_calls"] >= 1, facts
    assert facts["phrase_in_chunk"] and float(stored @ ours) > 0.9999, facts
    return facts


def _existing(db_url: str) -> tuple[list[str], list[str]]:
    """Open WebUI's files and chunk collections from before the burst (the wiring's
    upload, the knowledge base's own entry), so the burst counts only its own."""
    with psycopg.connect(db_url) as conn:
        files = [r[0] for r in conn.execute("SELECT id FROM file")]
        sets = [r[0] for r in conn.execute("SELECT DISTINCT collection_name FROM document_chunk")]
    return files, sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="a 10-file burst")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--skip-burst", action="store_true")
    args = p.parse_args()
    n = 10 if args.quick else args.files
    facts = owui.ensure_venv()
    interrupt_on_sigterm()
    report: dict[str, object] = {"open_webui": owui.VERSION}
    results: list[BurstResult] = []
    with tempfile.TemporaryDirectory(prefix="sluice-owui-proof-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # the embedded server may run as another user
        servers = Servers(root / "servers", max_connections=200)
        servers.start()
        try:
            # Open WebUI's uploads all arrive as one Sluice user: lift the per-user limits,
            # and let the webui hold every embedding and loader request Open WebUI sends
            # at once for the workers, however long the burst keeps them waiting.
            env = app_env(servers, root / "sluice" / "uploads", {
                "UPLOADS_IN_FLIGHT_PER_USER": str(max(n, 4)), "RATE_LIMIT_PER_MINUTE": "0",
                "OPENAI_EMBED_IN_FLIGHT": str(4 * n + 8), "OPENAI_EMBED_TIMEOUT": "600",
                "LOADER_CONCURRENCY": str(2 * n + 8)})
            app = App(env, workers=args.workers, log_dir=root / "sluice" / "logs",
                      port=free_port())
            rd = servers.redis_client()
            _, key = create_users(servers, 1, "owui")[0]
            try:
                app.start(rd)
                cid, phrase = sluice_document(app.url, key)
                with one_off_session(servers.settings()) as session:
                    password = setup_role(session, "sluice_openwebui")
                dsn = reader_dsn(servers.pg.url, "sluice_openwebui", password)
                db_url = owui.create_database(servers.pg.url, "owui_sluice")
                server = owui.OpenWebUI(owui.VENV, db_url, root / "owui-sluice",
                                        model_path(load_settings()))
                server.env.update(wiring.sluice_env(app.url, key))
                # Its start-up copies static files; keep them out of the (shared) venv.
                server.env["STATIC_DIR"] = str(root / "owui-static")
                try:
                    report["start_s"] = server.start()
                    token = server.signup()
                    conn_id, _ = wiring.add_knowledge(server.url, token, dsn, cid, "Weirs")
                    got = wiring.retrieve(server.url, token, conn_id, cid,
                                          "when is the weir inspected?")
                    assert phrase in got["documents"][0], got
                    report["knowledge"] = {"top": got["documents"][0][:120],
                                           "distance": got["distances"][0]}
                    tools = wiring.tool_names(server.url, token)
                    assert "server:sluice" in tools, tools
                    called = wiring.call_search_tool(owui.VENV, server.env, app.url, key,
                                                     "weir inspection")
                    assert phrase in called["result"]["hits"][0]["text"], called
                    report["tools"] = {"listed": tools, "built": called["tools"]}
                    report["loader_embeddings"] = upload_through_owui(server, token, app,
                                                                      key, db_url)
                    print(json.dumps(report, indent=1), flush=True)
                    if not args.skip_burst:
                        files_before, chunk_sets_before = _existing(db_url)
                        results.append(run_burst(
                            "Open WebUI + Sluice", server.url,
                            {"Authorization": f"Bearer {token}"}, burst_files(n),
                            upload_path=owui.UPLOAD_PATH, db_url=db_url,
                            status_sql=f"{owui.STATUS_SQL} WHERE id <> ALL(%s)",
                            status_params=(files_before,), done=owui.DONE, failed=owui.FAILED,
                            chunks_sql=f"{owui.CHUNKS_SQL} WHERE collection_name <> ALL(%s)",
                            chunks_params=(chunk_sets_before,),
                            app_pids=[server.pid, *app.pids.values()], servers=servers,
                            api_status=owui.api_status, done_api=owui.DONE,
                            facts={"version": owui.VERSION, "install": facts,
                                   "workers": args.workers}))
                finally:
                    server.stop()
            finally:
                app.stop()
                rd.close()
            if not args.skip_burst:  # first: burst.render puts the baseline first
                results.insert(0, run_owui(servers, root, burst_files(n)))
        finally:
            servers.stop()
    folder = REPORTS / time.strftime("owui-proof-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1)
    if results:
        text += "\n\n" + render(results, n)
        (folder / "results.json").write_text(json.dumps([r.as_dict() for r in results], indent=1))
    (folder / "report.md").write_text(text)
    print(f"\n{text}\nreport: {folder / 'report.md'}")


if __name__ == "__main__":
    main()
