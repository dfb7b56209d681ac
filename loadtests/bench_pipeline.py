"""`make bench`: end-to-end ingest rate against the raw model's rate, per embedding backend.

The fixed corpus is real text: the ~70 stdlib-docstring documents of
loadtests/data/retrieval_eval.jsonl, dealt round-robin into 10 .txt files
(several hundred chunks at the default CHUNK_SIZE). For each backend (torch,
onnx, onnx-int8), in one run, on the same chunks:

- raw: the worker's Chunker splits the 10 files in this process; the backend's
  embedder (same EMBED_BATCH_SIZE, and the thread count a lone worker gets:
  `embed_threads(settings, 1)`) encodes all of those chunks; chunks/s, tokens/s
  and the padding ratio (tokens the model computed ÷ real tokens), with batches
  grouped by token length (what `encode` does) and, as a baseline in the same
  round, in input order (`raw-inorder`).
- end-to-end: embedded Postgres + Redis (loadtests/stack.py, started once) and,
  per backend, `sluice webui` + `--workers` workers (default 2, as `make run` starts
  them) with EMBEDDING_BACKEND set;
  the 10 files are uploaded through the API by a fresh user; chunks/s = chunks
  stored ÷ (last file's `finished_at` − the first upload's start). The stack is
  stopped before the next backend starts (the raw runs happen with no stack up).
  The files are uploaded while RQ is suspended, then released together: many
  files queued at once, so the worker fills its encode calls across files
  (EMBED_FILL_CHUNKS; `--fill-chunks 0` for one segment per job). The padding
  ratio and tokens/s (embedding time only) are summed from the workers'
  `segment.batch` log lines, with the segments per encode call; the stages
  (parse, chunk, embed, store) are worker-seconds, summed over the workers.

Printed: raw and e2e chunks/s per backend, e2e/raw for the same backend (the
pipeline's overhead; issue 19 asks ≥ 0.9), and each as a share
of the fastest raw backend. `--rounds N` repeats everything in turn (backends
interleaved, so they see the same background load) and reports medians; the
1-minute load average is printed with every measurement, because other work on
a 2-core machine changes these numbers by 2× or more.

    .venv/bin/python loadtests/bench_pipeline.py [--backends torch,onnx,onnx-int8]
        [--rounds 1] [--files 10] [--docs N] [--fill-chunks N] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from eval_retrieval import load_set
from meter import CpuMeter
from rq.suspension import resume, suspend
from stack import App, Servers, app_env, create_users, free_port, interrupt_on_sigterm

from shared.embedding import BACKENDS, embed_threads, model_path
from shared.encoders import load_embedder
from shared.settings import Settings

log = logging.getLogger("loadtest.bench")
_PARSED = re.compile(r"file\.parsed .* parse=([\d.]+)s chunk=([\d.]+)s")
_BATCH = re.compile(r"segment\.batch units=(\d+) files=\d+ chunks=\d+ calls=(\d+) tokens=(\d+) "
                    r"padded_tokens=(\d+) .* embed=([\d.]+)s store=([\d.]+)s")


def corpus(n_files: int, n_docs: int | None = None) -> list[tuple[str, str]]:
    """(filename, text): the eval set's (first n_docs) documents dealt round-robin into
    n_files files."""
    docs = load_set().docs[:n_docs]
    groups: list[list[str]] = [[] for _ in range(n_files)]
    for i, d in enumerate(docs):
        groups[i % n_files].append(f"# {d['id']}\n\n{d['text']}")
    return [(f"bench-{k:02d}.txt", "\n\n".join(g)) for k, g in enumerate(groups)]


def chunk_files(files: list[tuple[str, str]], settings: Settings) -> list[list[str]]:
    """What the worker will embed, per file: its text normalisation, Chunker and settings."""
    from worker.pipeline.chunk import Chunker
    from worker.pipeline.parse import normalize_text

    chunker = Chunker(model_path(settings) / "tokenizer.json", chunk_size=settings.chunk_size,
                      overlap=settings.chunk_overlap, model_max=256)
    return [[c.text for c in chunker.split(normalize_text(text), "text")] for _, text in files]


def token_lengths(texts: list[str], settings: Settings) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path(settings) / "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    tok.no_padding()
    return [len(e.ids) for e in tok.encode_batch(texts)]


def padded_tokens(lengths: list[int], batch: int, grouped: bool = True) -> int:
    """Tokens the model computes for one encode() call: each batch padded to its longest."""
    order = sorted(lengths, reverse=True) if grouped else lengths
    return sum(max(order[s : s + batch]) * len(order[s : s + batch])
               for s in range(0, len(order), batch))


def raw_rate(backend: str, settings: Settings, chunks: list[str], grouped: bool = True
             ) -> dict[str, float]:
    s = settings.model_copy(update={"embedding_backend": backend})
    threads = embed_threads(s, 1)
    embedder = load_embedder(s, threads)
    embedder.warm_up()
    before = dataclasses.replace(embedder.stats)
    with CpuMeter() as cpu:
        embedder.encode(chunks, batch_size=s.embed_batch_size, group_by_length=grouped)
    used = embedder.stats.minus(before)
    del embedder
    return {"chunks_per_s": len(chunks) / cpu.wall, "tokens_per_s": used.tokens / cpu.wall,
            "padding": used.padding_ratio, "seconds": cpu.wall, "threads": threads,
            "loadavg_1m": cpu.load0, "our_cores": cpu.ours, "other_cores": cpu.others}


def e2e_rate(backend: str, servers: Servers, root: Path, files: list[tuple[str, str]],
             expected_chunks: int, round_no: int, tokens: int, fill_chunks: int | None,
             workers: int) -> dict[str, Any]:
    label = f"{backend}-r{round_no}"
    overrides = {"EMBEDDING_BACKEND": backend}
    if fill_chunks is not None:
        overrides["EMBED_FILL_CHUNKS"] = str(fill_chunks)
    env = app_env(servers, root / label / "uploads", overrides)
    app = App(env, workers=workers, log_dir=root / label / "logs", port=free_port())
    rd = servers.redis_client()
    user_id, key = create_users(servers, 1, f"bench-{label}")[0]
    try:
        app.start(rd)
        facts = next(rd.hgetall(k) for k in rd.scan_iter("sluice:worker-facts:*")
                     if int(rd.hget(k, "pid") or 0) == app.pids["worker-0"])
        load = os.getloadavg()[0]
        with httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as client:
            roots = [os.getpid()] + [p for p in (servers.pg.pid, servers.redis.pid) if p]
            meter = CpuMeter(roots).__enter__()
            started = time.time()
            suspend(rd)  # all queued at once (a worker blocked in BLMOVE may take the first)
            try:
                for name, text in files:
                    r = client.post("/api/v1/files",
                                    files={"file": (name, io.BytesIO(text.encode()), "text/plain")})
                    r.raise_for_status()
            finally:
                resume(rd)
            uploaded = time.time() - started
            with servers.connect() as pg:
                deadline = time.monotonic() + 1800
                while True:
                    row = pg.execute(
                        "SELECT count(*) FILTER (WHERE status IN ('queued', 'processing')), "
                        "count(*) FILTER (WHERE status = 'failed'), sum(chunk_count), "
                        "extract(epoch FROM max(finished_at)) FROM files WHERE owner_id = %s",
                        (user_id,)).fetchone()
                    assert row is not None
                    pending, failed, chunks, last = row
                    if failed:
                        raise RuntimeError(f"{failed} file(s) failed:\n{app.children[1].tail()}")
                    if pending == 0:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{pending} file(s) still pending after 30 min")
                    time.sleep(0.25)
                meter.__exit__()
                backends = pg.execute(
                    "SELECT DISTINCT c.embedding_backend FROM chunks c WHERE c.owner_id = %s",
                    (user_id,)).fetchall()
        if chunks != expected_chunks:
            raise RuntimeError(f"the worker stored {chunks} chunks; this process chunked "
                               f"{expected_chunks}: the raw and e2e runs would differ")
        if [b for (b,) in backends] != [backend]:
            raise RuntimeError(f"chunks recorded as {backends}, expected {backend}")
        elapsed = float(last) - started
        stages = {"parse": 0.0, "chunk": 0.0, "embed": 0.0, "store": 0.0}
        log_text = "".join(  # stages are summed over the workers: worker-seconds
            (root / label / "logs" / f"worker-{i}.log").read_text(errors="replace")
            for i in range(workers))
        for m in _PARSED.finditer(log_text):
            stages["parse"] += float(m.group(1))
            stages["chunk"] += float(m.group(2))
        jobs = calls = units = real = padded = 0
        for m in _BATCH.finditer(log_text):
            jobs, units, calls = jobs + 1, units + int(m.group(1)), calls + int(m.group(2))
            real, padded = real + int(m.group(3)), padded + int(m.group(4))
            stages["embed"] += float(m.group(5))
            stages["store"] += float(m.group(6))
        return {"chunks_per_s": chunks / elapsed, "tokens_per_s": tokens / elapsed,
                "padding": padded / real if real else 1.0,
                "embed_tokens_per_s": real / stages["embed"] if stages["embed"] else 0.0,
                "units_per_call": units / calls if calls else 0.0,
                "units_per_job": units / jobs if jobs else 0.0,
                "seconds": elapsed, "upload_s": uploaded,
                "chunks": chunks, "worker_threads": int(facts.get(b"embed_threads", 0)),
                "worker_backend": facts.get(b"embedding_backend", b"").decode(),
                "stages_s": stages, "loadavg_1m": load, "our_cores": meter.ours,
                "other_cores": meter.others}
    finally:
        app.stop()
        rd.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--docs", type=int, help="only the eval set's first N documents (quick runs)")
    p.add_argument("--fill-chunks", type=int,
                   help="the worker's EMBED_FILL_CHUNKS (default: the setting's); 0 = no fill")
    p.add_argument("--workers", type=int, default=2,
                   help="end to end: workers (default 2, as `make run`); 1 shows one worker's "
                   "own overhead")
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    interrupt_on_sigterm()
    backends = args.backends.split(",")
    files = corpus(args.files, args.docs)
    modes = ("raw", "raw-inorder", "e2e")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        b: {m: [] for m in modes} for b in backends}
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # the embedded server may run as another user
        servers = Servers(root / "servers", max_connections=100)
        servers.start()
        try:
            settings = servers.settings()
            per_file = chunk_files(files, settings)
            chunks = [c for f in per_file for c in f]
            lengths = [token_lengths(f, settings) for f in per_file]
            tokens = sum(map(sum, lengths))
            batch = settings.embed_batch_size
            e2e_padding = sum(padded_tokens(n, batch) for n in lengths) / tokens
            print(f"corpus: {len(files)} files, {sum(len(t) for _, t in files) // 1000} KB of real "
                  f"text (stdlib docstrings) -> {len(chunks)} chunks, {tokens} tokens (CHUNK_SIZE="
                  f"{settings.chunk_size}, EMBED_BATCH_SIZE={batch}); padding per file, grouped "
                  f"{e2e_padding:.3f}, in input order "
                  f"{sum(padded_tokens(n, batch, False) for n in lengths) / tokens:.3f}, all "
                  f"files in one call {padded_tokens([n for f in lengths for n in f], batch) / tokens:.3f}")
            for r in range(args.rounds):
                for b in backends:
                    for mode, grouped in (("raw", True), ("raw-inorder", False)):
                        raw = raw_rate(b, settings, chunks, grouped)
                        results[b][mode].append(raw)
                        print(f"  round {r + 1} {b:9} {mode:11} {raw['chunks_per_s']:6.1f} chunks/s "
                              f"{raw['tokens_per_s']:6.0f} tokens/s padding {raw['padding']:.3f} "
                              f"({raw['threads']} threads; other work used "
                              f"{raw['other_cores']:.2f} cores, load avg {raw['loadavg_1m']:.1f})",
                              flush=True)
                    e2e = e2e_rate(b, servers, root, files, len(chunks), r, tokens,
                                   args.fill_chunks, args.workers)
                    results[b]["e2e"].append(e2e)
                    st = e2e["stages_s"]
                    print(f"  round {r + 1} {b:9} {'e2e':11} {e2e['chunks_per_s']:6.1f} chunks/s "
                          f"{e2e['tokens_per_s']:6.0f} tokens/s ({e2e['chunks']} chunks in "
                          f"{e2e['seconds']:.1f} s; worker: {e2e['worker_backend']}, "
                          f"{e2e['worker_threads']} threads; stages parse {st['parse']:.1f} chunk "
                          f"{st['chunk']:.1f} embed {st['embed']:.1f} store {st['store']:.1f} s; "
                          f"encode calls: padding {e2e['padding']:.3f}, "
                          f"{e2e['embed_tokens_per_s']:.0f} tokens/s, "
                          f"{e2e['units_per_job']:.1f} segments per job, "
                          f"{e2e['units_per_call']:.1f} per encode call; "
                          f"other work used {e2e['other_cores']:.2f} cores, load avg "
                          f"{e2e['loadavg_1m']:.1f})", flush=True)
        finally:
            servers.stop()
    print_table(results, args.workers)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_table(results: dict[str, dict[str, list[dict[str, Any]]]], workers: int,
                quiet: float = 0.25) -> None:
    """Medians over all rounds; then over the quiet measurements only (other work used
    less than `quiet` cores), where there are any for every backend and mode."""
    def table(title: str, keep: Any) -> None:
        med: dict[str, dict[str, dict[str, float]]] = {}
        for b, r in results.items():
            picked = {mode: [x for x in v if keep(x)] for mode, v in r.items()}
            if not all(picked.values()):
                return
            med[b] = {mode: {k: statistics.median(x[k] for x in v)
                             for k in ("chunks_per_s", "tokens_per_s", "padding")}
                      for mode, v in picked.items()}
            med[b]["n"] = {"n": min(len(v) for v in picked.values())}
        fastest = max(med, key=lambda b: med[b]["raw"]["chunks_per_s"])
        top = med[fastest]["raw"]["chunks_per_s"]
        print(f"\n{title}; fastest raw backend: {fastest}")
        e2e_title = f"end to end ({workers} worker{'s' if workers > 1 else ''})"
        print(f"  {'':9} {'raw (grouped by length)':>24} {'raw, input order':>24} "
              f"{e2e_title:>24}")
        print(f"  {'backend':9}" + f" {'chunks/s':>8} {'tok/s':>7} {'pad':>6}" * 3
              + f" {'e2e/raw':>8} {'raw/fastest':>12} {'n':>3}")
        for b, m in med.items():
            cells = "".join(f" {m[mode]['chunks_per_s']:8.1f} {m[mode]['tokens_per_s']:7.0f} "
                            f"{m[mode]['padding']:6.3f}" for mode in ("raw", "raw-inorder", "e2e"))
            print(f"  {b:9}{cells} {m['e2e']['chunks_per_s'] / m['raw']['chunks_per_s']:8.2f} "
                  f"{m['raw']['chunks_per_s'] / top:12.2f} {int(m['n']['n']):3}")

    table("median of every round", lambda x: True)
    table(f"median of the quiet measurements (other work < {quiet} cores)",
          lambda x: x["other_cores"] < quiet)


if __name__ == "__main__":
    main()
