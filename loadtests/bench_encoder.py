"""`make bench-encoder`: which backend and thread layout encodes fastest on this CPU.

The encoder alone (no stack), on the files `make compare` uploads (Markdown of
~30 KB, `--files` of them, default 10), each chunked by the worker's Chunker
and encoded with one `encode` call per file, as the worker does (batches
grouped by length within the file). Each configuration is backend × layout ×
batch size, where a layout is P processes × T threads each (1×1, 1×2, 2×1 by
default: one worker with one or two threads, or two one-thread workers taking
alternate files). For torch T is intra-op threads; the ONNX backends run each
text alone on T one-thread lanes, so the batch size does not apply to them.
Every measurement runs in fresh child processes that load and warm the model,
then start together on a signal; the wall time covers only the encoding.

Rounds interleave the configurations (in a rotated order each round) so they
see the same background load. For each measurement the 1-minute load average
and the cores other work used (/proc/stat minus our children) are recorded;
medians are printed over all rounds and over the quiet ones (other work
< --quiet cores), with min–max ranges side by side.

The decision rule it prints (the default is changed only on a quiet rerun):
- a configuration *beats* another when its median is at least 10 % higher and
  its slowest quiet round is faster than the other's fastest (ranges do not
  overlap); otherwise the two are a tie and the simpler one stays (fewer
  processes, then fewer threads, then the current default backend);
- onnx-int8 may be the default only if it beats the fp32 backends *and*
  `make eval` shows it within 1 pt recall@10 and 3 % MRR@10 of fp32 with the
  default (hybrid) search (int8 is another embedding space: switching means
  re-embedding). Measured 2026-12-01: 0.880 / 0.541 against 0.883 / 0.553.

    .venv/bin/python loadtests/bench_encoder.py [--backends torch,onnx,onnx-int8]
        [--layouts 1x1,1x2,2x1] [--batch-sizes 32,8] [--rounds 3] [--files 10]
        [--quiet 0.25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from meter import CpuMeter
from stack import interrupt_on_sigterm

from shared.embedding import BACKENDS

CHILD = """
import dataclasses, json, sys, time
sys.path.insert(0, sys.argv[1])
from compare_owui import burst_files
from shared.embedding import model_path
from shared.encoders import load_embedder
from shared.settings import load_settings
from worker.pipeline.chunk import Chunker
from worker.pipeline.parse import normalize_text
backend, threads, part, parts, n_files, batch = sys.argv[2], int(sys.argv[3]), \\
    int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
s = load_settings(embedding_backend=backend)
chunker = Chunker(model_path(s) / "tokenizer.json", chunk_size=s.chunk_size,
                  overlap=s.chunk_overlap, model_max=256)
files = [[c.text for c in chunker.split(normalize_text(data.decode()), "markdown")]
         for _, data in burst_files(n_files)][part::parts]
e = load_embedder(s, threads)
e.warm_up()
before = dataclasses.replace(e.stats)
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
for chunks in files:
    e.encode(chunks, batch_size=batch)
wall = time.perf_counter() - t
used = e.stats.minus(before)
print(json.dumps({"chunks": used.texts, "tokens": used.tokens, "wall": wall,
                  "padded": used.padded_tokens}), flush=True)
"""


def measure(backend: str, procs: int, threads: int, batch: int, *, files: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    here = str(Path(__file__).resolve().parent)
    children: list[subprocess.Popen[str]] = []
    try:  # started inside the try: an interrupt between two starts still stops the first
        for k in range(procs):
            children.append(subprocess.Popen(
                [sys.executable, "-c", CHILD, here, backend, str(threads), str(k), str(procs),
                 str(files), str(batch)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
        for c in children:
            assert c.stdout is not None
            line = c.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{backend} child did not start: {line!r}")
        with CpuMeter([c.pid for c in children]) as cpu:
            for c in children:
                assert c.stdin is not None
                c.stdin.write("go\n")
                c.stdin.flush()
            outs = [json.loads(c.stdout.readline()) for c in children if c.stdout is not None]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
            c.wait()
    chunks, tokens = sum(o["chunks"] for o in outs), sum(o["tokens"] for o in outs)
    return {"chunks_per_s": chunks / cpu.wall, "tokens_per_s": tokens / cpu.wall,
            "padding": sum(o["padded"] for o in outs) / max(tokens, 1), "wall": cpu.wall,
            "chunks": chunks, "loadavg_1m": cpu.load0, "our_cores": cpu.ours,
            "other_cores": cpu.others}


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    rates = [r["chunks_per_s"] for r in runs]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "others": statistics.median(r["other_cores"] for r in runs),
            "load": statistics.median(r["loadavg_1m"] for r in runs), "n": len(runs)}


def beats(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["median"] >= 1.1 * b["median"] and a["min"] > b["max"]


def report(results: dict[str, list[dict[str, Any]]], quiet: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for title, keep in (("all rounds", lambda r: True),
                        (f"quiet rounds (other work < {quiet} cores)",
                         lambda r: r["other_cores"] < quiet)):
        table = {k: summarise([r for r in v if keep(r)]) for k, v in results.items()
                 if any(keep(r) for r in v)}
        if not table:
            print(f"\n{title}: none")
            continue
        top = max(table.values(), key=lambda s: s["median"])["median"]
        print(f"\n{title}:")
        print(f"  {'config':24} {'chunks/s':>9} {'min-max':>13} {'tokens/s':>9} {'vs best':>8} "
              f"{'others':>7} {'load':>5} {'n':>3}")
        for k, s in sorted(table.items(), key=lambda kv: -kv[1]["median"]):
            print(f"  {k:24} {s['median']:9.1f} {s['min']:6.1f}-{s['max']:<6.1f} "
                  f"{s['tokens_per_s']:9.0f} {s['median'] / top:8.2f} {s['others']:7.2f} "
                  f"{s['load']:5.1f} {int(s['n']):3}")
        out[title] = table
    quiet_table = next((t for k, t in out.items() if k.startswith("quiet")), None)
    if quiet_table is None:
        print("\ndecision: no quiet rounds; rerun on a quiet machine before changing a default")
        return out
    best = max(quiet_table, key=lambda k: quiet_table[k]["median"])
    rivals = [k for k in quiet_table if k != best and not beats(quiet_table[best], quiet_table[k])]
    print(f"\ndecision: fastest quiet median {best}; "
          + (f"not clearly ahead of {', '.join(rivals)} (a tie: keep the simpler)" if rivals
             else "beats every other configuration (≥ 10 % and ranges apart)"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--layouts", default="1x1,1x2,2x1", help="processes x threads, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-sizes", default="32,8")
    p.add_argument("--files", type=int, default=10, help="at least the largest process count")
    p.add_argument("--quiet", type=float, default=0.25)
    p.add_argument("--json", help="also write every measurement here")
    args = p.parse_args()
    interrupt_on_sigterm()
    configs = []
    for b in args.backends.split(","):  # the ONNX backends run texts alone: no batch size
        sizes = args.batch_sizes.split(",") if b == "torch" else ["1"]
        configs += [(b, *map(int, lay.split("x")), int(bs))
                    for lay in args.layouts.split(",") for bs in sizes]

    def name(b: str, procs: int, threads: int, bs: int) -> str:
        return f"{b} {procs}x{threads} bs{bs}"

    results: dict[str, list[dict[str, Any]]] = {name(*c): [] for c in configs}
    print(f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()}")
    for r in range(args.rounds):
        shift = r % len(configs)
        for b, procs, threads, bs in configs[shift:] + configs[:shift]:
            key = name(b, procs, threads, bs)
            m = measure(b, procs, threads, bs, files=args.files)
            results[key].append(m)
            print(f"  round {r + 1} {key:24}: {m['chunks_per_s']:6.1f} chunks/s "
                  f"{m['tokens_per_s']:6.0f} tokens/s ({m['chunks']} chunks in {m['wall']:.1f} s, "
                  f"padding {m['padding']:.3f}; other work {m['other_cores']:.2f} cores, "
                  f"load avg {m['loadavg_1m']:.1f})", flush=True)
    summary = report(results, args.quiet)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
