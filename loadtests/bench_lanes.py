"""`make bench-lanes`: how the ONNX backends run texts, against how they ran them before.

Same graph, same chunks (the `make compare` Markdown, chunked by the worker's Chunker),
in one process, rounds interleaved so both see the same background load:

- batched (before): padded batches of `--batch` texts grouped by token length, one
  session with `--threads` intra-op threads (what `Embedder.encode` did until
  2026-12-01);
- lanes (now): each text alone (nothing padded), `--threads` one-thread runs at once
  from a thread pool on one session (`shared.onnx_runner.OnnxRunner.run_each`).

Prints chunks/s per way and backend with the ratio, the machine's load, and for each
backend how far a text's batched vector is from its vector alone (int8's dynamic
quantization scales a run's activations by the whole batch: batched vectors move with
their batch mates; alone they are the same in any call).

    .venv/bin/python loadtests/bench_lanes.py [--backends onnx,onnx-int8] [--files 10]
        [--threads 2] [--batch 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from compare_owui import burst_files

from shared.embedding import model_path
from shared.embedding_onnx import ensure_graph, onnx_cache_dir
from shared.onnx_runner import OnnxRunner
from shared.settings import load_settings
from worker.pipeline.chunk import Chunker
from worker.pipeline.parse import normalize_text


def batched_runner(model: Path, graph: Path, threads: int) -> OnnxRunner:
    """The runner as it was: one session whose runs use `threads` intra-op threads."""
    import onnxruntime as ort

    runner = OnnxRunner(model, graph)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    runner.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return runner


def run_batched(runner: OnnxRunner, texts: list[str], batch: int) -> np.ndarray:
    encodings = runner.tokenize(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
    out = np.empty((len(texts), runner.dim), dtype=np.float32)
    for start in range(0, len(order), batch):
        picked = order[start:start + batch]
        out[picked] = runner.run([encodings[i] for i in picked])
    return out


def run_way(name: str, runner: OnnxRunner, texts: list[str], batch: int) -> np.ndarray:
    if name == "batched":
        return run_batched(runner, texts, batch)
    return runner.run_each(runner.tokenize(texts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="onnx,onnx-int8")
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    settings = load_settings()
    model = model_path(settings)
    chunker = Chunker(model / "tokenizer.json", chunk_size=settings.chunk_size,
                      overlap=settings.chunk_overlap, model_max=256)
    texts = [c.text for _, data in burst_files(args.files)
             for c in chunker.split(normalize_text(data.decode()), "markdown")]
    print(f"{len(texts)} chunks from {args.files} files; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for backend in args.backends.split(","):
        graph, _ = ensure_graph(model, onnx_cache_dir(settings), quantized=backend == "onnx-int8")
        ways = {"batched": batched_runner(model, graph, args.threads),
                "lanes": OnnxRunner(model, graph, lanes=args.threads)}
        for name, runner in ways.items():
            run_way(name, runner, texts, args.batch)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in ways}
        vectors: dict[str, np.ndarray] = {}
        for r in range(args.rounds):
            for name in (list(ways) if r % 2 == 0 else list(reversed(ways))):
                started = time.perf_counter()
                vectors[name] = run_way(name, ways[name], texts, args.batch)
                rates[name].append(len(texts) / (time.perf_counter() - started))
        alone = np.stack([ways["lanes"].embed([t])[0] for t in texts[:100]])
        for name, got in rates.items():
            moved = float(np.abs(vectors[name][:100] - alone).max())
            print(f"  {backend:9} {name:8} {statistics.median(got):6.1f} chunks/s "
                  f"(rounds {', '.join(f'{x:.1f}' for x in got)}); max |Δ| to the text alone "
                  f"{moved:.2e}", flush=True)
        ratio = statistics.median(rates["lanes"]) / statistics.median(rates["batched"])
        print(f"  {backend:9} lanes ÷ batched {ratio:.2f}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
